"""``automl-ft predict``: run an exported model on files, folders, tables or stdin with onnxruntime.

Never imports torch (start-up is dominated by onnxruntime's import, ~0.2 s): the preprocessing is the torch-free
code in ``preprocess.py`` that validation used. Prints one JSON object per input, in input order.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

from automl_ft.errors import DataError, ModelDirError, UsageError
from automl_ft.metrics import softmax
from automl_ft.preprocess import PREPROCESS_FILE, ImagePreprocess, load_preprocess

ONNX_FILE = "model.onnx"
LABELS_FILE = "labels.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq"}


@dataclass
class Item:
    """One thing to classify: its id in the output (path or row number), the payload, and a known label if any."""

    input: Any
    payload: Any
    source: str | None = None
    true_label: str | None = None
    error: str | None = None


class Predictor:
    """An exported model directory loaded for inference."""

    def __init__(self, model_dir: str | Path, provider: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        self.dir = Path(model_dir).expanduser()
        for name in (ONNX_FILE, LABELS_FILE, PREPROCESS_FILE):
            if not (self.dir / name).is_file():
                raise ModelDirError(f"{self.dir}: no {name}; pass an exported model folder such as RUN_DIR/best")
        try:
            self.labels: list[str] = json.loads((self.dir / LABELS_FILE).read_text())
            self.pre, self.record = load_preprocess(self.dir)
        except (OSError, ValueError, KeyError) as e:
            raise ModelDirError(f"{self.dir}: unreadable model files ({e}); re-export with automl-ft export") from None
        available = ort.get_available_providers()
        if provider == "auto":
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        else:
            wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(provider.lower(), provider)
            if wanted not in available:
                raise UsageError(f"--provider {provider}: onnxruntime here offers {', '.join(available)}; pick one "
                                 "of them (onnxruntime-gpu provides CUDA)")
            providers = [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.dir / ONNX_FILE), sess_options=options, providers=providers)
        self.is_image = isinstance(self.pre, ImagePreprocess)

    def logits(self, payloads: list[Any]) -> np.ndarray:
        """Logits for a batch of preprocessed payloads (image arrays, or token id lists)."""
        feeds = self.pre.batch(payloads) if self.is_image else self.pre.pad(payloads)
        return self.session.run(["logits"], feeds)[0]


def iter_items(predictor: Predictor, inputs: list[str], stdin: TextIO) -> Iterator[Item]:
    """Expand INPUT arguments into items, in order; unreadable single items become error items."""
    record = predictor.record
    for arg in inputs:
        if arg == "-":
            if predictor.is_image:
                raise UsageError("'-' reads text lines from stdin, but this is an image model; pass image paths")
            for i, line in enumerate(stdin):
                text = line.rstrip("\n")
                yield Item(i, text, source="-") if text.strip() else Item(i, text, "-", error="empty line")
            continue
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            if not predictor.is_image:
                raise UsageError(f"{path}: a folder, but this is a text model; pass a table or '-' for stdin")
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not images:
                raise DataError(f"{path}: no images (.png/.jpg/...) in this folder")
            for p in images:
                yield Item(str(p), p)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            if predictor.is_image:
                raise UsageError(f"{path}: a table, but this is an image model; pass image files or folders")
            yield from _table_items(path, record)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if not predictor.is_image:
                raise UsageError(f"{path}: an image, but this is a text model; pass a table or '-' for stdin")
            yield Item(str(path), path)
        else:
            raise DataError(f"{path}: unknown input type {path.suffix or '(none)'!r}; pass images, image folders, "
                            ".csv/.tsv/.jsonl/.parquet tables or '-'")


def _table_items(path: Path, record: dict[str, Any]) -> Iterator[Item]:
    from automl_ft.data.tables import read_table

    df = read_table(path)
    cols = list(df.columns)
    text_col = record.get("text_column") if record.get("text_column") in cols else ("text" if "text" in cols else None)
    if text_col is None:
        if len(cols) == 1:
            text_col = cols[0]
        else:
            raise DataError(f"{path}: no text column {record.get('text_column') or 'text'!r} (columns: "
                            f"{', '.join(cols[:10])}); name the column like the training data")
    label_col = record.get("label_column") if record.get("label_column") in cols else (
        "label" if "label" in cols else None)
    labels = df[label_col].tolist() if label_col else [None] * len(df)
    for i, (text, label) in enumerate(zip(df[text_col].tolist(), labels)):
        text = str(text)
        item = Item(i, text.strip(), source=str(path), true_label=None if label is None else str(label).strip())
        if not item.payload:
            item.error = "empty text"
        yield item


def _prepare(predictor: Predictor, item: Item) -> None:
    if item.error:
        return
    if predictor.is_image:
        try:
            item.payload = predictor.pre.load(item.payload)
        except Exception as e:  # a corrupt file among many must not stop the others
            item.error = f"unreadable image ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})"
    else:
        item.payload = predictor.pre.encode([item.payload])[0]


def predict_items(predictor: Predictor, items: Iterator[Item], *, batch_size: int = 32, top_k: int = 1
                  ) -> Iterator[dict[str, Any]]:
    """Yield one result per item, in order; each batch is preprocessed and run together."""
    batch: list[Item] = []

    def flush() -> Iterator[dict[str, Any]]:
        ok = [it for it in batch if not it.error]
        probs = softmax(predictor.logits([it.payload for it in ok])) if ok else None
        row = 0
        for it in batch:
            out: dict[str, Any] = {"input": it.input}
            if it.source and not isinstance(it.input, str):
                out["source"] = it.source
            if it.error:
                out["error"] = it.error
            else:
                p = probs[row]
                row += 1
                order = np.argsort(-p)[: max(1, top_k)]
                out["label"] = predictor.labels[int(order[0])]
                out["score"] = round(float(p[order[0]]), 6)
                if top_k > 1:
                    out["top_k"] = [{"label": predictor.labels[int(j)], "score": round(float(p[j]), 6)} for j in order]
            if it.true_label is not None:
                out["true_label"] = it.true_label
            yield out

    for item in items:
        _prepare(predictor, item)
        batch.append(item)
        if len(batch) >= batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def run_predict(model_dir: str, inputs: list[str], *, top_k: int = 1, batch_size: int = 32, provider: str = "auto",
                threads: int | None = None, stdout: TextIO | None = None, stdin: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """Print predictions as JSON lines; returns the exit code (2 if some inputs could not be read)."""
    stdout, stdin, stderr = stdout or sys.stdout, stdin or sys.stdin, stderr or sys.stderr
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = Predictor(model_dir, provider=provider, threads=threads)
    if top_k > len(predictor.labels):
        top_k = len(predictor.labels)
    failed = total = correct = labelled = 0
    batch = 1 if (inputs == ["-"]) else batch_size  # stdin: answer each line as it arrives
    for result in predict_items(predictor, iter_items(predictor, inputs, stdin), batch_size=batch, top_k=top_k):
        stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        if batch == 1:
            stdout.flush()
        total += 1
        if "error" in result:
            failed += 1
        elif "true_label" in result:
            labelled += 1
            correct += int(result["label"] == result["true_label"])
    stdout.flush()
    if labelled:
        stderr.write(f"accuracy {100 * correct / labelled:.2f}% on {labelled} labelled inputs\n")
    if failed:
        stderr.write(f"error: {failed} of {total} inputs could not be classified (see their \"error\" fields); "
                     "fix or remove them\n")
        return 2
    return 0
