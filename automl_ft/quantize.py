"""INT8 versions of exported models, kept only when they keep the task's primary metric.

Two onnxruntime recipes, one per architecture family:

- **Transformers (text): dynamic quantization.** Weights of every MatMul/Gather become int8 offline; activations
  are quantized per batch at run time, so no calibration data is needed and the activation range always fits the
  input. The MatMuls dominate MiniLM's time (about 70 % on this CPU) and run as int8 GEMMs (VNNI where the CPU has
  it): about 2x faster than fp32 at batch 1 x 64 tokens here (bench_onnx), file 4x smaller.
- **CNNs (images): static QDQ.** Convolutions need quantized activations to gain anything, and per-batch dynamic
  ranges would cost a reduction per layer, so activation ranges are calibrated once (MinMax) on up to
  ``CALIBRATION_LIMIT`` validation images through the same :class:`ImagePreprocess` predict uses. Weights are
  per-channel int8 (depthwise convolutions have per-channel ranges that differ by orders of magnitude; one
  tensor-wide scale would zero the small channels), activations uint8.

Either way the INT8 model's primary test metric (accuracy, macro F1, micro F1, RMSE: the task's) is measured against
the fp32 ONNX model's on the same inputs with the same preprocessing and batch size (32) as ``automl-ft predict``.
(Dynamic INT8 scales each activation tensor per batch, padding included, so its outputs depend slightly on which
texts share a batch; fp32's do not.) A model that loses more than ``max_loss_points`` (percentage points of a
fraction metric; percent of the fp32 value for an error metric such as RMSE) is kept on disk for inspection but
marked not usable, and ``predict --int8`` refuses it with the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from automl_ft.data import LabeledData, Split
from automl_ft.metrics import format_metric, is_percent_metric
from automl_ft.modalities import IMAGE
from automl_ft.predict import INT8_FILE, METRICS_FILE, ONNX_FILE, Predictor

CARD_FILE = "model_card.md"
DYNAMIC = "dynamic"
STATIC_QDQ = "static-qdq"
# MinMax ranges settle after a few hundred images; more only lengthens calibration (~10 ms per 160 px image here).
CALIBRATION_LIMIT = 256
CALIBRATION_BATCH = 16
# Accuracy is compared on at most this many test examples (evenly spaced); all of them for the bundled data sets.
EVAL_LIMIT = 5000


def quantize_dynamic_onnx(src: str | Path, dst: str | Path) -> None:
    """Dynamic INT8 (int8 weights, per-batch uint8 activations) of a transformer's MatMul/Gather weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        # DefaultTensorType: outputs of fused com.microsoft ops (Attention, SkipLayerNormalization from
        # onnxruntime's transformer optimizer) have no inferred type; they are fp32.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_static_onnx(src: str | Path, dst: str | Path, batches: Iterable[dict[str, np.ndarray]]) -> int:
    """Static QDQ INT8 calibrated (MinMax) on ``batches`` of model inputs; returns how many examples it saw.

    The graph is pre-processed first (shape inference, BatchNorm folding into the convolutions), so each
    Conv+BN+activation becomes one quantized convolution.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[dict[str, np.ndarray]] = iter(batches)
            self.seen = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            feeds = next(self.it, None)
            if feeds is not None:
                self.seen += len(next(iter(feeds.values())))
            return feeds

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="automl-ft-quant-") as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some exporter outputs; ONNX shape inference suffices
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        # U8U8, not U8S8: on x86 CPUs with AVX2 but no VNNI, onnxruntime's U8S8 kernels saturate their int16
        # sums (its docs' "saturation issue"). On a 2-core AMD EPYC (AVX2 only) the CIFAR probe's INT8 classes
        # agreed with fp32 on 70.8 % of test images with U8S8, 87.5 % with U8S8 and reduce_range, and passed the
        # test's 90 % with U8U8; the same U8S8 model passed on the VNNI Xeon before (tests/test_quantize.py).
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8, per_channel=True, reduce_range=False,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": False})
    if reader.seen == 0:
        raise ValueError("no calibration examples")
    return reader.seen


def calibration_batches(predictor: Predictor, split: Split, limit: int = CALIBRATION_LIMIT,
                        batch_size: int = CALIBRATION_BATCH) -> Iterator[dict[str, np.ndarray]]:
    """Model inputs for up to ``limit`` evenly spaced, readable examples of ``split``, preprocessed like predict."""
    images: list[np.ndarray] = []
    for path in _spaced(split, limit).inputs:
        try:
            images.append(predictor.pre.load(path))
        except Exception:  # an unreadable image does not stop calibration
            continue
        if len(images) == batch_size:
            yield predictor.pre.batch(images)
            images = []
    if images:
        yield predictor.pre.batch(images)


def _spaced(split: Split, limit: int) -> Split:
    if len(split) <= limit:
        return split
    idx = [int(i * len(split) / limit) for i in range(limit)]
    return Split([split.inputs[i] for i in idx], [split.labels[i] for i in idx])


def _score(predictor: Predictor, split: Split) -> float:
    """The task's primary metric of an ONNX model on ``split`` (predict's preprocessing and batch size)."""
    task = predictor.task
    return task.primary(task.metrics(predictor.predict_logits(split.inputs, batch_size=32), split.labels))


def loss_points(task: Any, fp32: float, int8: float) -> float:
    """How much worse INT8 is: percentage points of a fraction metric (accuracy 0.95 -> 0.94: 1.0), percent of the
    fp32 value for an error metric (RMSE 2.00 -> 2.02: 1.0), so one rule of "at most 1" fits every task."""
    worse = (fp32 - int8) if task.direction == "maximize" else (int8 - fp32)
    if is_percent_metric(task.primary_metric):
        return round(100.0 * worse, 4)
    return round(100.0 * worse / max(abs(fp32), 1e-12), 4)


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def quantize_model(model_dir: Path, data: LabeledData, *, max_loss_points: float = 1.0,
                   calibration_limit: int = CALIBRATION_LIMIT) -> dict[str, Any]:
    """Write ``model_dir/model.int8.onnx``, compare its primary test metric with the fp32 model's, record the verdict.

    Dynamic INT8 for text models, static QDQ calibrated on ``data.val`` (up to ``calibration_limit`` examples) for
    image models. Both models are evaluated on ``data.test`` with the preprocessing ``automl-ft predict`` applies.
    The result is merged into ``metrics.json`` under ``"int8"``, and the ``## INT8`` section of ``model_card.md``
    (when the card exists) is replaced or added; nothing else in the card changes.

    Returns:
        ``{"method", "file", "metric", "test_score", "fp32_test_score", "loss_points", "usable", "reason",
        "size_mb", "fp32_size_mb", ...}`` (JSON-able). A quantization that fails is recorded as not usable with
        the error as the reason, not raised: the fp32 model stays the product.

    Raises:
        ModelDirError: ``model_dir`` is not an exported model folder.
    """
    model_dir = Path(model_dir)
    started = time.time()
    fp32 = Predictor(model_dir, provider="cpu")
    is_image = fp32.is_image
    if is_image != (data.modality == IMAGE):
        from automl_ft.errors import UsageError

        raise UsageError(f"{model_dir}: a {'image' if is_image else 'text'} model, but the data is {data.task}")
    if list(fp32.labels) != list(data.classes):
        from automl_ft.errors import UsageError

        raise UsageError(f"{model_dir}: its labels differ from the data's classes; quantize with the data it was "
                         "trained on")
    method = STATIC_QDQ if is_image else DYNAMIC
    dst = model_dir / INT8_FILE
    test = _spaced(data.test, EVAL_LIMIT)
    metric = fp32.task.primary_metric
    result: dict[str, Any] = {
        "method": method, "file": INT8_FILE, "metric": metric, "test_score": None, "fp32_test_score": None,
        "loss_points": None, "usable": False, "reason": None, "size_mb": None,
        "fp32_size_mb": _size_mb(model_dir / ONNX_FILE), "max_loss_points": float(max_loss_points),
        "test_examples": len(test),
    }
    try:
        partial = model_dir / f".{INT8_FILE}.partial"
        if is_image:
            if len(data.val) == 0:
                raise ValueError("no validation examples to calibrate on")
            seen = quantize_static_onnx(model_dir / ONNX_FILE, partial,
                                        calibration_batches(fp32, data.val, calibration_limit))
            result.update(calibration_examples=seen, calibration_split="val", calibration_method="minmax",
                          weights="int8 per-channel", activations="uint8")
        else:
            source = _unfused_text_graph(model_dir)
            try:
                quantize_dynamic_onnx(source or model_dir / ONNX_FILE, partial)
            finally:
                if source is not None:
                    source.unlink(missing_ok=True)
            result.update(weights="int8 per-tensor", activations="uint8, dynamic per batch",
                          quantized_graph="unfused TorchScript export" if source else "model.onnx")
        partial.replace(dst)
        fp32_score = _score(fp32, test)
        int8_score = _score(Predictor(model_dir, provider="cpu", model_file=INT8_FILE), test)
    except Exception as e:
        (model_dir / f".{INT8_FILE}.partial").unlink(missing_ok=True)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        result["reason"] = f"quantization failed: {msg}"
    else:
        loss = loss_points(fp32.task, fp32_score, int8_score)
        result.update(test_score=int8_score, fp32_test_score=fp32_score, loss_points=loss,
                      size_mb=_size_mb(dst), usable=loss <= max_loss_points + 1e-9)
        if not result["usable"]:
            result["reason"] = (f"INT8 loses {loss:.2f} {metric} points on {len(test)} test examples "
                                f"({format_metric(metric, int8_score)} vs fp32 {format_metric(metric, fp32_score)}), "
                                f"more than the {max_loss_points:g} allowed")
    result["seconds"] = round(time.time() - started, 1)
    _merge_metrics(model_dir, result)
    if (model_dir / CARD_FILE).is_file():
        write_card_section(model_dir / CARD_FILE, result)
    return result


def add_int8(model_dir: Path, data: LabeledData, say) -> dict[str, Any]:
    """Quantize an exported model and ``say`` whether the INT8 model is usable (and why not); returns the result
    :func:`quantize_model` merged into metrics.json (tune --int8 and export --int8 share it)."""
    say("Quantizing to INT8 and checking its test metric ...")
    q = quantize_model(model_dir, data)
    verdict = "usable" if q.get("usable") else f"NOT usable: {q.get('reason')}"
    metric = q.get("metric", "accuracy")
    say(f"INT8 ({q.get('method')}): test {metric} {format_metric(metric, q['test_score'])} against "
        f"{format_metric(metric, q['fp32_test_score'])} in fp32; {verdict}." if q.get("test_score") is not None
        else f"INT8: {verdict}.")
    return q


def _unfused_text_graph(model_dir: Path) -> Path | None:
    """For BERT-family exports with PyTorch weights: the unfused graph, which dynamic INT8 runs faster than the
    fused one (its Attention op quantizes to a slower QAttention); None when the model cannot be re-exported."""
    from automl_ft.export import TORCH_FILE, export_text_torchscript, is_fusable_text_model, load_exported_model

    if not (model_dir / TORCH_FILE).is_file():
        return None
    model, _ = load_exported_model(model_dir)
    if not is_fusable_text_model(model):
        return None
    path = model_dir / ".int8-source.onnx"
    export_text_torchscript(model, path)
    return path


def _merge_metrics(model_dir: Path, result: dict[str, Any]) -> None:
    path = model_dir / METRICS_FILE
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics["int8"] = result
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(path)


def card_section(result: dict[str, Any]) -> str:
    """The ``## INT8`` section of the model card, in Markdown."""
    metric = result.get("metric", "accuracy")

    def shown(v: Any) -> str:
        return "n/a" if v is None else format_metric(metric, float(v))

    lines = ["## INT8", ""]
    if result.get("usable"):
        lines.append(f"`{result['file']}` is usable: `automl-ft predict MODEL_DIR --int8 INPUT...`")
    else:
        lines.append(f"`{result.get('file')}` is **not usable**: {result.get('reason')}. "
                     "`automl-ft predict --int8` refuses it.")
    lines += ["", f"- Method: onnxruntime {result.get('method')} quantization"
              + (f", calibrated on {result['calibration_examples']} validation examples"
                 if result.get("calibration_examples") else ""),
              f"- Test {metric}: INT8 {shown(result.get('test_score'))}, fp32 {shown(result.get('fp32_test_score'))}"
              + (f"; loss {result['loss_points']:.2f} points (at most {result.get('max_loss_points'):g} "
                 "allowed)" if result.get("loss_points") is not None else ""),
              f"- Size: {result.get('size_mb')} MB (fp32 {result.get('fp32_size_mb')} MB)", ""]
    return "\n".join(lines)


def write_card_section(card: Path, result: dict[str, Any]) -> None:
    """Replace the card's ``## INT8`` section (up to the next ``## `` heading), or add it before ``## Made with``."""
    text = card.read_text()
    section = card_section(result).rstrip("\n") + "\n\n"
    pattern = re.compile(r"^## INT8\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    elif "\n## Made with" in text:
        head, tail = text.split("\n## Made with", 1)
        text = head.rstrip("\n") + "\n\n" + section + "## Made with" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    card.write_text(text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer prints and logs per-node notes; keep the command's output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


__all__ = [
    "CALIBRATION_LIMIT",
    "INT8_FILE",
    "add_int8",
    "calibration_batches",
    "card_section",
    "quantize_dynamic_onnx",
    "quantize_model",
    "quantize_static_onnx",
    "write_card_section",
]
