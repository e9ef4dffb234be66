"""Deployment latency of a trained candidate: merged, exported to ONNX, timed with onnxruntime.

The timings decide which model ships, so they are taken the same way for every candidate: the same thread count
(intra-op = the physical cores unless told otherwise, inter-op 1, sequential execution), the same kind of input
(batch 1 by default: for text, the validation example of median token length; for images, a validation image at the
trial's input size), warm-up runs discarded (the first runs pay for allocation and kernel selection), then the
median of at least 30 runs and at least one second of timing (a median is robust to the scheduler's hiccups on a
shared machine; the 90th percentile is kept beside it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from automl_ft.config import TrialConfig
from automl_ft.data import LabeledData
from automl_ft.modalities import get_modality

WARMUP_RUNS = 10
MIN_REPEATS = 30
MIN_SECONDS = 1.0


def physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:
        return int(os.cpu_count() or 1)


def onnx_session(model_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_session(session: Any, feeds: dict[str, np.ndarray], *, warmup: int = WARMUP_RUNS,
                 min_repeats: int = MIN_REPEATS, min_seconds: float = MIN_SECONDS) -> dict[str, float]:
    """Median and 90th percentile of ``session.run`` in milliseconds, after ``warmup`` discarded runs."""
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": float(statistics.median(times)), "p90_ms": float(times[int(0.9 * (len(times) - 1))]),
            "repeats": len(times)}


def example_feeds(config: TrialConfig, pre: Any, data: LabeledData, batch_size: int = 1) -> dict[str, np.ndarray]:
    """A representative batch from the validation split (see the module docstring)."""
    return get_modality(config.modality).example_feeds(pre, data.val.inputs, batch_size)


def trial_latency(trial_dir: Path, data: LabeledData, *, threads: int | None = None,
                  batch_size: int = 1) -> dict[str, Any]:
    """Export a trial's merged model to a temporary ONNX file and time it (see the module docstring)."""
    import torch

    from automl_ft.adapt import merge_lora
    from automl_ft.export import export_onnx
    from automl_ft.train import load_trained_model, make_preprocess

    threads = threads or physical_cores()
    backbone, config = load_trained_model(trial_dir, backend="torch")
    merge_lora(backbone.model)
    pre = make_preprocess(backbone, config)
    tmp = Path(tempfile.mkdtemp(prefix="automl-ft-latency-"))
    try:
        with torch.no_grad():
            export_onnx(backbone.model, config, tmp / "model.onnx")
        feeds = example_feeds(config, pre, data, batch_size)
        result = time_session(onnx_session(tmp / "model.onnx", threads), feeds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shape = {k: list(v.shape) for k, v in feeds.items()}
    return {**result, "threads": threads, "batch_size": batch_size, "input_shape": shape,
            "provider": "CPUExecutionProvider"}
