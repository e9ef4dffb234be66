"""``automl-ft predict``: run an exported model on files, folders, tables or stdin with onnxruntime.

Never imports torch: the preprocessing is the torch-free code in ``preprocess.py`` that validation used, so the
command answers its first stdin line well under a second after it starts (onnxruntime's import and the session
dominate). Prints one JSON object per input, in input order.

The session is set up for latency on small CPUs: all graph optimisations, ``intra_op_num_threads`` = physical
cores (hyper-threads share the FMA units a GEMM saturates), one inter-op thread and sequential execution (a
transformer is one chain of ops; a second pool only adds wake-ups). ``bench/bench_onnx.py`` measures the result.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from automl_ft.errors import DataError, ModelDirError, UsageError
from automl_ft.preprocess import PREPROCESS_FILE, ImagePreprocess, load_preprocess

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
# The fitted task (codec, thresholds, primary metric); an export without it is a single-label classifier (the
# only kind there was before tasks existed).
TASK_FILE = "task.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Text items are sorted by length inside a window of this many batches, so a batch pads to similar lengths;
# the output order is restored afterwards.
SORT_WINDOW_BATCHES = 8


def physical_cores() -> int:
    """Physical cores this process may run on (``/proc/cpuinfo`` core ids; the affinity count elsewhere)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    try:
        cores, current = {}, {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" not in line:
                continue
            key, value = (s.strip() for s in line.split(":", 1))
            if key in ("processor", "physical id", "core id"):
                current[key] = value
            if key == "core id" and "processor" in current:
                cores[int(current["processor"])] = (current.get("physical id"), value)
        physical = {cores[cpu] for cpu in allowed if cpu in cores}
        if physical:
            return len(physical)
    except (OSError, ValueError):
        pass
    return max(1, len(allowed))


def session_options(threads: int | None = None) -> Any:
    """The onnxruntime session options predict, quantize and the benchmark use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads) if threads else physical_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-node fallback warnings on stderr
    return options


def resolve_providers(provider: str = "auto") -> list[str]:
    """``auto`` -> CUDA then CPU where available; ``cpu``/``cuda``/a full provider name -> that one (+ CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    wanted = PROVIDERS.get(provider.lower(), provider)
    if wanted not in available:
        raise UsageError(f"--provider {provider}: onnxruntime here offers {', '.join(available)}; pick one of them "
                         "(the onnxruntime-gpu package provides CUDA)")
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


def make_session(path: str | Path, provider: str = "auto", threads: int | None = None) -> Any:
    """An onnxruntime session with :func:`session_options`; unreadable files are a :class:`ModelDirError`."""
    import onnxruntime as ort

    providers = resolve_providers(provider)
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"{path}: onnxruntime cannot load it ({msg}); re-export with automl-ft export") from None


# Inputs of dense models are resized so both sides are multiples of their output stride.
DENSE_MULTIPLE = 32
# Mask PNGs: class 0 black, then distinct colours (the pixel values stay the class indices); 255 white.
MASK_PALETTE = ([0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180,
                 70, 240, 240, 240, 50, 230, 210, 245, 60] + [128, 128, 128] * 245 + [255, 255, 255])


@dataclass
class Item:
    """One thing to classify: its id in the output (path or row number), the payload, and a known label if any."""

    input: Any
    payload: Any
    source: str | None = None
    true_label: str | None = None
    error: str | None = None
    now: bool = False  # answer before reading the next item (stdin lines)
    size: tuple[int, int] | None = None  # an image's original (width, height), for dense outputs


class Predictor:
    """An exported model directory loaded for inference.

    Args:
        int8: use ``model.int8.onnx``; refused (:class:`UsageError`) when ``metrics.json`` marks it not usable.
        model_file: a file name inside the directory to load instead, with no usability check (quantize uses it
            to evaluate a candidate before deciding).
    """

    def __init__(self, model_dir: str | Path, provider: str = "auto", threads: int | None = None, *,
                 int8: bool = False, model_file: str | None = None):
        self.dir = Path(model_dir).expanduser()
        if not self.dir.is_dir():
            raise ModelDirError(f"{self.dir}: no such model folder; pass an exported model folder such as "
                                "RUN_DIR/best")
        for name in (ONNX_FILE, LABELS_FILE, PREPROCESS_FILE):
            if not (self.dir / name).is_file():
                raise ModelDirError(f"{self.dir}: no {name}; pass an exported model folder such as RUN_DIR/best")
        try:
            self.labels: list[str] = json.loads((self.dir / LABELS_FILE).read_text())
            self.pre, self.record = load_preprocess(self.dir)
            self.task = load_model_task(self.dir, self.labels)
        except Exception as e:  # JSON, KeyError, the tokenizers library's own exceptions
            raise ModelDirError(f"{self.dir}: unreadable model files ({str(e).splitlines()[0] if str(e) else e!r}); "
                                "re-export with automl-ft export") from None
        self.model_file = model_file or (INT8_FILE if int8 else ONNX_FILE)
        if int8 and model_file is None:
            self._check_int8()
        if not (self.dir / self.model_file).is_file():
            raise ModelDirError(f"{self.dir}: no {self.model_file}")
        self.session = make_session(self.dir / self.model_file, provider, threads)
        self.is_image = isinstance(self.pre, ImagePreprocess)
        # per-pixel outputs (segmentation): whole images in, one mask per image out, at the image's own size
        self.spatial = bool(getattr(self.task, "spatial_targets", False))

    def _check_int8(self) -> None:
        try:
            info = json.loads((self.dir / METRICS_FILE).read_text()).get("int8")
        except (OSError, ValueError):
            info = None
        if not (self.dir / INT8_FILE).is_file() or not info:
            raise UsageError(f"--int8: {self.dir} has no quantized model; make one with 'automl-ft export RUN_DIR "
                             "--int8' or predict without --int8")
        if not info.get("usable"):
            reason = " ".join(str(info.get("reason") or "marked not usable").split())
            raise UsageError(f"--int8: the INT8 model in {self.dir} is not usable: {reason}; predict without --int8")

    @property
    def task_name(self) -> str:
        """The full task name the model was trained for (``text-classification``, ``image-regression``, ...)."""
        return str(self.record.get("task", "image-classification" if self.is_image else "text-classification"))

    def logits(self, payloads: list[Any]) -> np.ndarray:
        """Logits for a batch of preprocessed payloads (image arrays, or token id lists)."""
        feeds = self.pre.batch(payloads) if self.is_image else self.pre.pad(payloads)
        return self.session.run(["logits"], feeds)[0]

    def predict_logits(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Logits ``[len(inputs), classes]`` for raw inputs (texts, or image paths), batched.

        Texts are run in length order (less padding) and put back in input order. Unreadable images raise.
        """
        if self.is_image:
            chunks = [list(range(i, min(i + batch_size, len(inputs)))) for i in range(0, len(inputs), batch_size)]
            payloads: list[Any] = []
        else:
            payloads = self.pre.encode([str(t) for t in inputs])
            order = sorted(range(len(inputs)), key=lambda i: len(payloads[i]))
            chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        out: np.ndarray | None = None
        for idx in chunks:
            batch = [self.pre.load(inputs[i]) for i in idx] if self.is_image else [payloads[i] for i in idx]
            logits = self.logits(batch)
            if out is None:  # [n, head], or [n, C, H, W] for a dense model
                out = np.zeros((len(inputs), *logits.shape[1:]), dtype=np.float32)
            out[idx] = logits
        return out if out is not None else np.zeros((0, self.task.head_size), dtype=np.float32)


def load_model_task(model_dir: Path, labels: list[str]) -> Any:
    """The fitted task of an exported model (``task.json``), or a classifier over ``labels`` for older exports."""
    from automl_ft.tasks import get_task, load_task

    path = model_dir / TASK_FILE
    if path.is_file():
        return load_task(json.loads(path.read_text())["state"])
    return get_task("classification").fit(labels, list(range(len(labels))))


def _check_inputs(predictor: Predictor, inputs: list[str]) -> None:
    """Reject missing inputs and inputs of the wrong kind before anything is printed."""
    for arg in inputs:
        if arg == "-":
            if predictor.is_image:
                raise UsageError("'-' reads text lines from stdin, but this is an image model; pass image paths")
            continue
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        suffix = path.suffix.lower()
        if path.is_dir():
            if not predictor.is_image:
                raise UsageError(f"{path}: a folder, but this is a text model; pass a table or '-' for stdin")
            if not _folder_images(path):
                raise DataError(f"{path}: no images (.png/.jpg/...) in this folder")
        elif suffix in TABLE_SUFFIXES:
            continue  # texts, or image paths relative to the table (read by the column tune used)
        elif suffix in IMAGE_SUFFIXES:
            if not predictor.is_image:
                raise UsageError(f"{path}: an image, but this is a text model; pass a table or '-' for stdin")
        else:
            raise DataError(f"{path}: unknown input type {path.suffix or '(none)'!r}; pass images, image folders, "
                            ".csv/.tsv/.jsonl/.parquet tables or '-'")


def _folder_images(folder: Path) -> list[Path]:
    """Images under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def iter_items(predictor: Predictor, inputs: list[str], stdin: TextIO) -> Iterator[Item]:
    """Expand INPUT arguments into items, in order (call :func:`_check_inputs` first)."""
    for arg in inputs:
        if arg == "-":
            # readline, not iteration: each line is answered as soon as it arrives, not when a buffer fills.
            for i, line in enumerate(iter(stdin.readline, "")):
                text = line.rstrip("\r\n")
                yield Item(i, text, "-", now=True) if text.strip() else Item(i, text, "-", error="empty line",
                                                                             now=True)
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            for p in _folder_images(path):
                yield Item(str(p), p)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            yield from _table_items(path, predictor.record)
        else:
            yield Item(str(path), path)


def _table_items(path: Path, record: dict[str, Any]) -> Iterator[Item]:
    from automl_ft.data.tables import read_table

    original: dict[str, Any] = {}
    df = read_table(path, original)  # cells as strings; JSONL/Parquet cells as read (a list of labels stays one)
    yield from frame_items(df, original.get("frame"), record, name=str(path), base=path.parent)


def frame_items(df: Any, frame: Any, record: dict[str, Any], *, name: str, base: Path) -> Iterator[Item]:
    """Items from a table read as strings (``df``), with ``frame`` the same rows as read (list and number cells
    kept; None for CSV/TSV): the input column and the label column (if any) chosen by the rule tune used.

    Args:
        name: what messages and the ``source`` field call the table.
        base: the folder relative image paths resolve against (the table's folder, as in tune).
    """
    from automl_ft.data.tables import check_plain, match_column

    path = Path(name)
    cols = list(df.columns)

    def find(trained: str | None, default: str) -> str | None:  # the rule tune used to pick the columns
        return (match_column(cols, trained) if trained else None) or match_column(cols, default)

    image = record.get("kind") == "image"
    role = "image" if image else "text"
    input_col = find(record.get(f"{role}_column"), role)
    if input_col is None:
        if len(cols) == 1 and not image:  # a bare list of texts; a path column must be named, as in tune
            input_col = cols[0]
        else:
            raise DataError(f"{path}: no {role} column {record.get(f'{role}_column') or role!r} (columns: "
                            f"{', '.join(cols[:10])}); name the column like the training data")
    check_plain(df, path, input_col)
    label_col = find(record.get("label_column"), "label")
    labels = ((frame[label_col] if frame is not None and label_col in frame else df[label_col]).tolist()
              if label_col else [None] * len(df))
    for i, (value, label) in enumerate(zip(df[input_col].tolist(), labels)):
        value = str(value).strip()
        if hasattr(label, "tolist"):  # a Parquet list cell is a NumPy array
            label = label.tolist()
        true = None if label is None else (label if isinstance(label, (list, tuple, int, float)) else
                                           str(label).strip())
        if image:  # image paths in a table are relative to the table's folder, as in tune
            item = Item(i, base / value, source=name, true_label=true)
            if not value or not item.payload.is_file():
                item.error = f"no image file {value!r}"
        else:
            item = Item(i, value, source=name, true_label=true)
            if not item.payload:
                item.error = "empty text"
        yield item


def _prepare(predictor: Predictor, items: list[Item]) -> None:
    """Load images / tokenize texts in place; a corrupt image becomes an error item, the others go on."""
    todo = [it for it in items if not it.error]
    if predictor.is_image:
        for it in todo:
            try:
                if predictor.spatial:
                    it.payload, it.size = predictor.pre.load_whole(it.payload, DENSE_MULTIPLE)
                else:
                    it.payload = predictor.pre.load(it.payload)
            except Exception as e:  # a corrupt file among many must not stop the others
                msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
                it.error = f"unreadable image ({msg})"
    elif todo:
        for it, ids in zip(todo, predictor.pre.encode([it.payload for it in todo])):
            it.payload = ids


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-index mask resized (nearest) to ``(width, height)``."""
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize(size, resample=Image.Resampling.NEAREST))


def _write_mask(mask: np.ndarray, item: Item, out_dir: Path, taken: set[str]) -> str:
    """Save ``mask`` as a palette PNG (pixel values = class indices) named after the input, never overwriting a
    mask written by this run (``a.png``, ``a-1.png``, ...); returns its path."""
    from PIL import Image

    stem = Path(str(item.input)).stem if not isinstance(item.input, int) else f"row{item.input + 1}"
    name, k = f"{stem}.png", 0
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    im.putpalette(MASK_PALETTE)
    im.save(out_dir / name)
    return str(out_dir / name)


def _result(item: Item, decoded: dict[str, Any] | None) -> dict[str, Any]:
    """One output line: the input, then the task's fields (``label``/``score``, ``labels``/``scores``, ``value``)."""
    out: dict[str, Any] = {"input": item.input}
    if item.source and not isinstance(item.input, str):
        out["source"] = item.source
    if item.error:
        out["error"] = item.error
    else:
        assert decoded is not None
        out.update(decoded)
    if item.true_label is not None:
        out["true_label"] = item.true_label
    return out


def predict_items(predictor: Predictor, items: Iterator[Item], *, batch_size: int = 32, top_k: int = 1
                  ) -> Iterator[dict[str, Any]]:
    """Yield one result per item, in input order (see :func:`predict_with_logits`)."""
    for result, _ in predict_with_logits(predictor, items, batch_size=batch_size, top_k=top_k):
        yield result


def predict_with_logits(predictor: Predictor, items: Iterator[Item], *, batch_size: int = 32, top_k: int = 1
                        ) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Yield ``(result, logits)`` per item, in input order (logits None for an item that failed).

    Items are gathered into a window (``batch_size`` images, or ``SORT_WINDOW_BATCHES`` batches of texts run in
    length order); an item marked ``now`` (a stdin line) closes the window at once.
    """
    window_size = batch_size if predictor.is_image else batch_size * SORT_WINDOW_BATCHES
    window: list[Item] = []

    def flush() -> Iterator[dict[str, Any]]:
        _prepare(predictor, window)
        ok = [i for i, it in enumerate(window) if not it.error]
        if not predictor.is_image:
            ok.sort(key=lambda i: len(window[i].payload))
        decoded: dict[int, dict[str, Any]] = {}
        # whole images of different shapes cannot share a batch: a dense model runs them one by one
        step = 1 if predictor.spatial else batch_size
        for start in range(0, len(ok), step):
            idx = ok[start: start + step]
            logits = predictor.logits([window[i].payload for i in idx])
            fields = predictor.task.decode(logits, top_k=top_k if top_k > 1 else None)
            for i, f in zip(idx, fields):
                if predictor.spatial and window[i].size is not None:
                    f["mask"] = _resize_mask(f["mask"], window[i].size)
            decoded.update(zip(idx, zip(fields, logits)))
        for i, it in enumerate(window):
            fields, logits_row = decoded.get(i, (None, None))
            yield _result(it, fields), logits_row

    for item in items:
        window.append(item)
        if item.now or len(window) >= window_size:
            yield from flush()
            window = []
    if window:
        yield from flush()


class Scorer:
    """The task's metrics over the inputs that came with a true label (tables with the training label column),
    computed from the same logits that produced the printed predictions."""

    def __init__(self, predictor: Predictor):
        self.task = predictor.task
        self.label_sep = str(predictor.record.get("label_sep") or "|")
        self.logits: list[np.ndarray] = []
        self.labels: list[Any] = []
        self.unknown: Counter[str] = Counter()  # true labels that are none of the model's classes: not scored

    def add(self, true_label: Any, logits: np.ndarray) -> None:
        label, unknown = self.task.encode_true(true_label, self.label_sep)
        self.unknown.update(unknown)
        if label is not None and not unknown:
            self.logits.append(logits)
            self.labels.append(label)

    def metrics(self) -> dict[str, Any] | None:
        """The task's metrics over the scored inputs (None when no input had a usable true label)."""
        if not self.labels:
            return None
        return self.task.metrics(np.stack(self.logits), self.labels)

    def summary(self) -> str:
        metrics = self.metrics()
        if metrics is None:
            return ""
        return f"{self.task.describe(metrics)} on {len(self.labels)} labelled inputs"


def run_predict(model_dir: str, inputs: list[str], *, top_k: int = 1, batch_size: int = 32, provider: str = "auto",
                threads: int | None = None, stdout: TextIO | None = None, stdin: TextIO | None = None,
                stderr: TextIO | None = None, int8: bool = False, out_dir: str | None = None) -> int:
    """Print predictions as JSON lines; returns the exit code (2 if some inputs could not be classified).

    A segmentation model writes one mask PNG per input image into ``out_dir`` (required for it, refused for the
    others) at the image's own size, and prints its path with the per-class pixel fractions.

    Raises:
        ModelDirError, UsageError, DataError: a bad model folder, flag or input (checked before any output).
    """
    stdout, stdin, stderr = stdout or sys.stdout, stdin or sys.stdin, stderr or sys.stderr
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if inputs.count("-") > 1:
        raise UsageError("'-' (stdin) is given more than once; pass it once")
    predictor = Predictor(model_dir, provider=provider, threads=threads, int8=int8)
    _check_inputs(predictor, inputs)
    masks_dir = _masks_dir(predictor, out_dir)
    taken: set[str] = set()
    top_k = min(top_k, max(1, len(predictor.labels)))
    failed = total = 0
    scored = Scorer(predictor)
    for result, logits in predict_with_logits(predictor, iter_items(predictor, inputs, stdin),
                                              batch_size=batch_size, top_k=top_k):
        if masks_dir is not None and "mask" in result:
            result["mask"] = _write_mask(result["mask"], Item(result["input"], None), masks_dir, taken)
        stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        if result.get("source") == "-":
            stdout.flush()
        total += 1
        if "error" in result:
            failed += 1
        elif "true_label" in result:
            scored.add(result["true_label"], logits)
    stdout.flush()
    summary = scored.summary()
    if summary:
        stderr.write(summary + "\n")
    unknown = scored.unknown
    if unknown:
        shown = ", ".join(repr(k) for k, _ in unknown.most_common(5))
        stderr.write(f"note: {sum(unknown.values())} inputs have labels that are none of the model's classes "
                     f"({shown}); they are not scored\n")
    if failed:
        stderr.write(f"error: {failed} of {total} inputs could not be classified (see their \"error\" fields); "
                     "fix or remove them\n")
        return 2
    return 0


def _masks_dir(predictor: Predictor, out_dir: str | None) -> Path | None:
    """The folder for a segmentation model's masks (created), checked before anything is printed."""
    if not predictor.spatial:
        if out_dir is not None:
            raise UsageError("--out-dir is for segmentation models (one mask PNG per image); this model predicts "
                             f"{predictor.task_name}: drop --out-dir")
        return None
    if out_dir is None:
        raise UsageError("a segmentation model writes one mask PNG per image: pass --out-dir DIR")
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {path} is a file; pass a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path
