"""Classification metrics from predictions (NumPy only, so predict and reports need no torch or scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = examples of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
                           classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1 (over classes present in truth or predictions) and the confusion matrix.

    A class with no predictions has precision 0 (as scikit-learn's ``zero_division=0``).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    actual = cm.sum(1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (actual > 0) | (predicted > 0)
    total = cm.sum()
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_examples": int(total),
        "confusion_matrix": cm.tolist(),
    }
    if classes is not None:
        out["per_class"] = {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                            for c, p, r, f, s in zip(classes, precision, recall, f1, actual)}
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# Metrics that are fractions of examples (or of overlap) and read best as percentages; everything else (rmse, mae,
# r2, spearman, loss) prints as a plain number.
_PERCENT_WORDS = ("accuracy", "f1", "precision", "recall", "iou", "dice")


def is_percent_metric(name: str) -> bool:
    return any(word in name for word in _PERCENT_WORDS)


def format_metric(name: str, value: float | None) -> str:
    """``accuracy`` 0.981 -> ``98.10%``; ``rmse`` 3.14159 -> ``3.142``; None -> empty."""
    if value is None:
        return ""
    return f"{100 * value:.2f}%" if is_percent_metric(name) else f"{value:.4g}"


def record_score(record: dict[str, Any]) -> float:
    """The primary validation metric of a history.json record (``val_accuracy`` in runs made before tasks)."""
    return record["val_score"] if "val_score" in record else record["val_accuracy"]
