"""Export a trained trial: merge LoRA, evaluate on the held-out test split, write ONNX, verify it with onnxruntime.

The exported directory is self-contained for ``automl-ft predict`` (which needs no torch)::

    model.onnx          dynamic batch axis (and sequence axis for text)
    labels.json         class names in output order (empty for regression)
    task.json           the fitted task: codec (standardization), thresholds (multi-label), primary metric
    preprocess.json     the eval-time preprocessing (plus tokenizer.json for text)
    config.json         the trial's TrialConfig
    metrics.json        test metrics, and the ONNX-vs-PyTorch check
    model_card.md       how the model was made (written by card.py)

It is written into a temporary sibling and swapped in at the end, so an export that fails never leaves a
half-written model, and the previous one stays until the new one is complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from automl_ft.adapt import merge_lora
from automl_ft.config import TrialConfig
from automl_ft.data import LabeledData, Split
from automl_ft.modalities import TEXT, get_modality
from automl_ft.predict import TASK_FILE
from automl_ft.preprocess import save_preprocess
from automl_ft.rundir import LABELS_FILE, METRICS_FILE, ONNX_FILE, TORCH_FILE, make_dir
from automl_ft.train import PEFT_DIR, Caches, load_trained_model, make_batches, make_preprocess, save_adapter

# The file names come from rundir.py, which names every file of a run and of an export; TORCH_FILE is the merged
# model's full state dict, for PyTorch users and the benchmarks.
# Agreement with PyTorch is checked on up to this many test examples (all of them for the bundled data sets).
VERIFY_LIMIT = 2000
OPSET = 18


# Encoders whose attention onnxruntime's BERT optimizer can fuse (its "bert" model type).
FUSABLE_TEXT_MODELS = ("bert", "roberta", "xlm-roberta")


def export_text_torchscript(model: torch.nn.Module, path: Path, *, opset: int = 17) -> None:
    """Text models through the TorchScript exporter with eager attention: the graph onnxruntime's BERT optimizer
    can fuse (:func:`export_text_fused`) and the one dynamic INT8 quantizes best (quantize.py: 3.7-4.0 ms against
    5.3 ms when the fused graph is quantized, MiniLM batch 1 x 64 tokens, 2 threads)."""
    encoder_config = model.encoder.config
    saved = getattr(encoder_config, "_attn_implementation", None)
    encoder_config._attn_implementation = "eager"
    try:
        names = ["input_ids", "attention_mask"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["logits"] = {0: "batch"}
        args = (torch.randint(1000, 2000, (2, 16)), torch.ones(2, 16, dtype=torch.long))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                              dynamo=False, opset_version=opset)
    finally:
        encoder_config._attn_implementation = saved


def export_text_fused(model: torch.nn.Module, path: Path, *, opset: int = 17) -> dict[str, int]:
    """Text models: :func:`export_text_torchscript`, then onnxruntime's BERT optimizer, which fuses each layer's
    attention into one ``Attention`` op (and LayerNorm / GELU / embeddings into theirs); returns the fused-operator
    counts.

    Why not the dynamo exporter: its attention (SDPA with NaN guards) matches none of the optimizer's patterns, so
    only LayerNorm/GELU fuse. MiniLM, batch 1 x 64 tokens, 2 threads: 12.8 ms that way, 9.8 ms fused, against
    18.7 ms in torch eager (bench/results/onnx-*.json).
    """
    from onnxruntime.transformers import optimizer

    raw = path.with_name(path.stem + ".raw.onnx")
    try:
        export_text_torchscript(model, raw, opset=opset)
        encoder_config = model.encoder.config
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(str(raw), model_type="bert", opt_level=0,
                                           num_heads=int(encoder_config.num_attention_heads),
                                           hidden_size=int(encoder_config.hidden_size))
        opt.save_model_to_file(str(path))
        return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    finally:
        raw.unlink(missing_ok=True)


def is_fusable_text_model(model: torch.nn.Module) -> bool:
    encoder = getattr(model, "encoder", None)
    return getattr(getattr(encoder, "config", None), "model_type", None) in FUSABLE_TEXT_MODELS


def export_onnx(model: torch.nn.Module, config: TrialConfig, path: Path) -> str:
    """Write ``model`` (merged, eval mode, CPU) to ONNX; returns which exporter succeeded.

    BERT-family text encoders go through :func:`export_text_fused` (fastest on onnxruntime); everything else, and
    any model the fused path fails on, through the dynamo exporter (torch's default), then the TorchScript exporter.
    The caller checks the result against PyTorch either way. Example inputs have batch 2 so the batch axis stays
    symbolic.
    """
    model = model.cpu().eval()
    errors = []
    if config.modality == TEXT and is_fusable_text_model(model):
        try:
            ops = export_text_fused(model, path)
            if ops.get("Attention"):
                return "torchscript+ort-fusion"
            errors.append("fused: no attention fused")
        except Exception as e:  # fall through to the generic exporters
            errors.append(f"fused: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
    modality = get_modality(config.modality)
    args, shapes, axes = modality.onnx_example(config)
    names = list(modality.input_names)
    # the logits keep the input's symbolic axes: batch, and height/width for dense models
    spatial = {k: v for k, v in axes.get(names[0], {}).items() if v in ("height", "width")}
    axes = {**axes, "logits": {0: "batch", **spatial}}

    def dynamo() -> None:
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"],
                          dynamic_shapes=shapes, dynamo=True, external_data=False, opset_version=OPSET, verbose=False)

    def torchscript() -> None:
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, dynamo=False, opset_version=17)

    # Symbolic height/width: the TorchScript exporter first. Dynamo guards every spatial shape symbolically and took
    # 374 s for the Lite0 U-Net (2-core CPU under load) against 3.2 s for TorchScript, whose graph onnxruntime ran
    # at another size within 5e-5 of PyTorch.
    order = [("torchscript", torchscript), ("dynamo", dynamo)] if spatial else [("dynamo", dynamo),
                                                                                 ("torchscript", torchscript)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name, export in order:
            try:
                export()
                return name
            except Exception as e:  # fall back to the other exporter
                errors.append(f"{name}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


def onnx_logits(session: Any, batches) -> np.ndarray:
    """Run onnxruntime over batches (the same batches PyTorch saw); logits in example order."""
    out: np.ndarray | None = None
    for inputs, _, idx in batches:
        feeds = {k: v.numpy() for k, v in inputs.items()}
        logits = session.run(["logits"], feeds)[0]
        if out is None:
            out = np.zeros((len(batches.targets), *logits.shape[1:]), dtype=np.float32)
        out[idx] = logits
    assert out is not None
    return out


def _subset(split: Split, limit: int) -> Split:
    if len(split) <= limit:
        return split
    step = len(split) / limit
    idx = [int(i * step) for i in range(limit)]
    return Split([split.inputs[i] for i in idx], [split.labels[i] for i in idx])


def export_trial(trial_dir: Path, out_dir: Path, data: LabeledData, *, caches: Caches | None = None,
                 extra_metrics: dict[str, Any] | None = None,
                 card_writer: Callable[[Path, dict[str, Any]], None] | None = None,
                 hf: bool | None = None) -> dict[str, Any]:
    """Evaluate a trial on the test split and export it to ``out_dir`` (replaced atomically).

    The task is first calibrated on the validation split (multi-label decision thresholds), so the test metrics,
    the ONNX check and ``predict`` all use the thresholds saved in ``task.json``.

    Args:
        card_writer: writes the model card into the new directory, given the metrics, before it is swapped in.
        hf: also write the Hugging Face formats into ``hf/`` (hf_format.py); None: for Hugging Face (text)
            backbones only.

    Returns:
        The metrics written to ``metrics.json``.
    """
    import onnxruntime as ort

    from automl_ft.tasks import load_task
    from automl_ft.train import predict_logits

    caches = caches or Caches()
    started = time.time()
    backbone, config = load_trained_model(trial_dir, backend="torch")
    model = backbone.model
    out_dir = Path(out_dir)
    make_dir(out_dir.parent, "--out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
    try:
        if config.adaptation == "lora":  # the adapter is the unmerged form: write it before merging
            save_adapter(model, config, tmp / PEFT_DIR)
        merged = merge_lora(model)
        model.eval()
        pre = make_preprocess(backbone, config)
        task = load_task(data.fitted_task().state_dict())  # a copy: calibration must not leak into the study's
        cpu = torch.device("cpu")
        task.calibrate(predict_logits(model, make_batches(config, data.val, pre, caches, task, train=False,
                                                          batch_size=64), cpu), data.val.labels)
        # Small data may hold no test split (search/crossval.py): then there is no test score, and the ONNX
        # check runs on the validation examples.
        held = data.test if len(data.test) else data.val
        test_batches = make_batches(config, held, pre, caches, task, train=False, batch_size=64)
        torch_logits = predict_logits(model, test_batches, cpu)
        test = task.metrics(torch_logits, data.test.labels) if len(data.test) else None
        exporter = export_onnx(model, config, tmp / ONNX_FILE)
        session = ort.InferenceSession(str(tmp / ONNX_FILE), providers=["CPUExecutionProvider"])
        verify_split = _subset(held, VERIFY_LIMIT)
        verify_batches = make_batches(config, verify_split, pre, caches, task, train=False, batch_size=64)
        ref = torch_logits if verify_split is held else predict_logits(model, verify_batches, cpu)
        got = onnx_logits(session, verify_batches)
        onnx_check = {
            "exporter": exporter,
            "num_samples": len(verify_split),
            "split": "test" if held is data.test else "val",
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "prediction_agreement": task.agreement(got, ref),
            "onnx_test_metric": task.primary_metric,
            "onnx_test_score": task.primary(task.metrics(got, verify_split.labels)),
        }
        metrics: dict[str, Any] = {"test": test, "onnx": onnx_check, "lora_layers_merged": merged,
                                   "export_seconds": time.time() - started, **(extra_metrics or {})}
        columns = {f"{k}_column": v for k, v in data.summary.get("columns", {}).items()}  # predict reads tables
        save_preprocess(tmp, pre, {"input_names": list(type(model).input_names), "task": config.task,
                                   "label_sep": data.summary.get("label_sep", "|"), **columns})
        (tmp / LABELS_FILE).write_text(json.dumps(data.classes, indent=2) + "\n")
        (tmp / TASK_FILE).write_text(json.dumps({"task": config.task, "state": task.state_dict()}, indent=2) + "\n")
        config.save(tmp / "config.json")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / TORCH_FILE))
        if hf or (hf is None and config.modality == TEXT):
            from automl_ft.hf_format import export_hf

            try:
                export_hf(tmp)
                metrics["hf"] = {"written": True}
            except Exception as e:  # asked for: fail; automatic: the ONNX export stands, metrics.json says why
                if hf:
                    raise
                metrics["hf"] = {"written": False, "reason": str(e).splitlines()[0][:300] if str(e) else repr(e)}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        if card_writer is not None:
            card_writer(tmp, metrics)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def load_exported_model(model_dir: Path) -> tuple[torch.nn.Module, TrialConfig]:
    """The exported (merged) model in PyTorch, from ``config.json`` and ``model.safetensors``; no pretrained
    weights are fetched: the architecture is built empty and every tensor comes from the export."""
    from safetensors.torch import load_file

    from automl_ft.backbones import load_backbone

    config = TrialConfig.load(model_dir / "config.json")
    options = {**config.backbone_options, "pretrained": False}
    backbone = load_backbone(config.backbone, config.num_classes, task=config.modality, options=options)
    backbone.model.load_state_dict(load_file(str(model_dir / TORCH_FILE)))
    return backbone.model.eval(), config


def _swap_in(tmp: Path, out_dir: Path) -> None:
    # The callers refuse a non-empty folder that is not an earlier export before any work (rundir.check_output_dir);
    # this last check keeps a folder without metrics.json (a user's, a run folder) from ever being replaced.
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METRICS_FILE).is_file():
        from automl_ft.errors import UsageError

        raise UsageError(f"--out {out_dir} is not empty and not an earlier export; pass a new or empty folder")
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.replace(old)
    tmp.replace(out_dir)
    shutil.rmtree(old, ignore_errors=True)
