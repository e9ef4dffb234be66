"""Single-label classification (problem ``classification``): one class per example, softmax head, cross-entropy.

Labels are strings (a numeric cell is its ``str()``), stripped; empty or NaN cells are missing rows. Classes are
the sorted label strings, so label indices are those of runs made before tasks existed. When the smallest training
class has fewer than a third of the largest's examples the task is *imbalanced*: the search then tries
class-weighted loss and a balanced sampler, and macro-F1 replaces accuracy as the primary metric (accuracy rewards
ignoring a 10 % minority class with 90 %).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from automl_ft.errors import DataError
from automl_ft.metrics import classification_metrics, softmax

from . import register_task
from .base import (
    NUMERIC_TARGET_DISTINCT,
    ParsedLabels,
    Task,
    as_number,
    format_rows,
    is_list_cell,
    is_missing_cell,
    is_missing_label,
    logsumexp,
    num,
    pct,
    sorted_classes,
)

# Imbalanced when the smallest training class has fewer than 1/3 of the largest's examples (the rule).
IMBALANCE_RATIO = 3.0
# logistic regression's C, strongest regularisation first: CIFAR features at 16 per class test best at 0.003
PROBE_C = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0)


def _label_string(cell: Any) -> str | None:
    """Today's label rule: ``str(cell).strip()``, None for a missing cell (None/NaN, empty, ``nan``, ``<NA>``)."""
    if is_missing_cell(cell):
        return None
    label = str(cell).strip()
    return None if is_missing_label(label) else label


@register_task
class SingleLabel(Task):
    """One class per example out of ``classes``."""

    name = "classification"
    hf_problem_type = "single_label_classification"
    description = "single-label classification: one class per example (softmax, cross-entropy)"
    output_doc = ("one score per class, in `labels.json` order; their softmax is the class probabilities and the "
                  "highest is the label")
    detect_priority = 100  # the fallback: any labels can be classes
    one_class_per_example = True

    def __init__(self, classes: list[str], train_counts: list[int] | None = None,
                 primary_metric: str = "accuracy", imbalanced: bool = False):
        super().__init__(classes)
        self.train_counts = list(train_counts) if train_counts is not None else None
        self._primary = primary_metric
        self._imbalanced = bool(imbalanced)

    # ---- raw labels ---------------------------------------------------------------------------------------------
    @classmethod
    def looks_like(cls, cells: list, label_sep: str) -> str | None:
        names = {_label_string(c) for c in cells if not is_list_cell(c)} - {None}
        return f"{len(names)} distinct label values, one per row: single-label classification"

    @classmethod
    def parse_labels(cls, cells: list, label_sep: str) -> ParsedLabels:
        strings: list[str] = []
        missing: list[int] = []
        lists: list[int] = []
        for i, cell in enumerate(cells):
            if is_list_cell(cell):
                lists.append(i)
                continue
            label = _label_string(cell)
            if label is None:
                missing.append(i)
            else:
                strings.append(label)
        if lists:
            raise DataError(f"label column: {format_rows(lists)} hold lists of labels, not one label; use a "
                            "multilabel task (--task text-multilabel or image-multilabel)")
        classes = sorted_classes(strings)
        index = {c: i for i, c in enumerate(classes)}
        warnings = []
        if missing:
            warnings.append(f"{len(missing)} row(s) with an empty or NaN label dropped as missing")
        distinct = len(classes)
        if distinct > NUMERIC_TARGET_DISTINCT and all(
                (v := as_number(c)) is not None and math.isfinite(v) for c in classes):
            warnings.append(f"the labels look like a numeric target ({distinct} distinct numbers) and are "
                            f"classified as {distinct} classes; use a regression task (--task text-regression or "
                            "image-regression) to predict the number")
        return ParsedLabels(classes, [index[y] for y in strings], missing, warnings)

    @classmethod
    def strata(cls, labels: list) -> np.ndarray:
        """The class index: stratified splits keep every class's share in every split."""
        return np.asarray(labels, dtype=np.int64).reshape(-1)

    @classmethod
    def fit(cls, classes: list[str], train_labels: list, **options: Any) -> SingleLabel:
        """Count the training classes; imbalanced (macro-F1 primary) when the smallest count < largest / 3."""
        if options:
            raise TypeError(f"classification fit takes no options, got {', '.join(sorted(options))}")
        if len(classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, got {len(classes)}")
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(classes))
        imbalanced = bool(IMBALANCE_RATIO * counts.min() < counts.max())
        return cls(classes, counts.tolist(), "macro_f1" if imbalanced else "accuracy", imbalanced)

    # ---- fitted ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "primary_metric": self._primary, "imbalanced": self._imbalanced,
                "train_counts": self.train_counts}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        # A state without these keys is a classification model saved before imbalance handling: accuracy.
        self._primary = str(state.get("primary_metric", "accuracy"))
        if self._primary not in ("accuracy", "macro_f1"):
            raise ValueError(f"primary_metric {self._primary!r} is not accuracy or macro_f1")
        self._imbalanced = bool(state.get("imbalanced", False))
        counts = state.get("train_counts")
        self.train_counts = [int(c) for c in counts] if counts is not None else None

    @property
    def primary_metric(self) -> str:
        return self._primary

    @property
    def imbalanced(self) -> bool:
        return self._imbalanced

    def targets(self, labels: list) -> np.ndarray:
        return np.asarray(labels, dtype=np.int64).reshape(-1)

    def loss(self, *, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None,
             kind: str | None = None) -> Callable[..., Any]:
        """Cross-entropy with optional label smoothing and per-class weights (moved to the logits' device and
        dtype on each call, so the same function serves CPU and GPU)."""
        import torch.nn.functional as F

        self._check_kind(kind)
        weight = None if class_weights is None else np.asarray(class_weights, dtype=np.float32)
        if weight is not None and weight.shape != (self.head_size,):
            raise ValueError(f"class_weights has shape {weight.shape}, expected ({self.head_size},)")
        smoothing = float(label_smoothing)

        def cross_entropy(logits, targets):
            import torch

            w = None if weight is None else torch.from_numpy(weight).to(logits.device, logits.dtype)
            return F.cross_entropy(logits, targets, weight=w, label_smoothing=smoothing)

        return cross_entropy

    def class_weights(self, labels: list) -> np.ndarray:
        """scikit-learn's ``balanced`` weights, ``n / (k * count[c])``; a class absent from ``labels`` gets 1.0
        (it contributes no loss terms anyway)."""
        from sklearn.utils.class_weight import compute_class_weight

        y = np.asarray(labels, dtype=np.int64)
        present = np.unique(y)
        out = np.ones(self.head_size, dtype=np.float64)
        out[present] = compute_class_weight("balanced", classes=present, y=y)
        return out

    def sample_weights(self, labels: list) -> np.ndarray:
        """``1 / count[class]`` per example: every class carries the same total weight, so a weighted sampler draws
        the classes equally often."""
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=self.head_size)
        return 1.0 / counts[y].astype(np.float64)

    def probe_grid(self) -> tuple[float, ...]:
        """Logistic regression's inverse strength C (0.01 won on Banking77 facets, 1.0 on SMS spam)."""
        return PROBE_C

    def fit_linear(self, x: np.ndarray, labels: list, strength: float, *, balanced: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Multinomial logistic regression; its log-odds are the head's logits. A class absent from ``labels``
        gets bias -30 (never predicted); a two-class fit's single row becomes logits ``[0, z]``."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels, dtype=np.int64)
        clf = LogisticRegression(C=strength, max_iter=2000, class_weight="balanced" if balanced else None).fit(x, y)
        weight = np.zeros((self.head_size, x.shape[1]))
        bias = np.full(self.head_size, -30.0)
        if len(clf.classes_) == 2:
            weight[clf.classes_[1]], bias[clf.classes_] = clf.coef_[0], (0.0, clf.intercept_[0])
        else:
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
        return weight, bias

    def metrics(self, logits: np.ndarray, labels: list) -> dict[str, Any]:
        """Accuracy, macro P/R/F1, confusion matrix and per-class scores (automl_ft.metrics) plus ``loss``: the mean
        cross-entropy, unweighted and unsmoothed so trials stay comparable."""
        logits = np.asarray(logits)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = classification_metrics(y, logits.argmax(1) if len(y) else y, self.head_size, self.classes)
        if len(y):
            nll = logsumexp(logits, axis=1) - logits.astype(np.float64)[np.arange(len(y)), y]
            out["loss"] = float(nll.mean())
        else:
            out["loss"] = 0.0
        return out

    def baseline(self, train_labels: list, val_labels: list) -> float:
        """The primary metric of always predicting the majority training class (ties: the first class)."""
        majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=self.head_size).argmax())
        y = np.asarray(val_labels, dtype=np.int64)
        return float(classification_metrics(y, np.full_like(y, majority), self.head_size)[self.primary_metric])

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The softmax over the classes (what ``score`` reports for the top one)."""
        return softmax(np.asarray(logits))

    def decode(self, logits: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """``{"label", "score"}`` per row (probability rounded to 6 decimals, as predict prints), plus ``top_k``
        (the k most probable, best first) when ``top_k > 1``."""
        probs = softmax(np.asarray(logits))
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[: max(1, top_k or 1)]
            row: dict[str, Any] = {"label": self.classes[int(order[0])], "score": round(float(p[order[0]]), 6)}
            if top_k is not None and top_k > 1:
                row["top_k"] = [{"label": self.classes[int(j)], "score": round(float(p[j]), 6)} for j in order]
            out.append(row)
        return out

    def agreement(self, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
        a, b = np.asarray(a_logits).argmax(1), np.asarray(b_logits).argmax(1)
        return float((a == b).mean()) if len(a) else 1.0

    def describe(self, metrics: dict[str, Any]) -> str:
        acc, f1 = pct(metrics.get("accuracy")), pct(metrics.get("macro_f1"))
        return f"macro F1 {f1} (accuracy {acc})" if self._primary == "macro_f1" else f"accuracy {acc} (macro F1 {f1})"

    def card_rows(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        rows = [("Accuracy", pct(metrics.get("accuracy"))),
                ("Macro precision / recall / F1", " / ".join(pct(metrics.get(f"macro_{k}"))
                                                              for k in ("precision", "recall", "f1"))),
                ("Loss (cross-entropy)", num(metrics.get("loss"))),
                ("Examples", str(metrics.get("num_examples")))]
        primary = "macro F1" if self._primary == "macro_f1" else "accuracy"
        why = (f"; imbalanced training classes (smallest < 1/{IMBALANCE_RATIO:g} of the largest)"
               if self._imbalanced else "")
        return [("Primary metric", primary + why), *rows]

    def summary(self, splits: dict[str, list]) -> dict[str, Any]:
        """``class_counts``: ``{class: {split: count}}`` (the data summary's format since the first version)."""
        counts = {s: Counter(int(y) for y in labels) for s, labels in splits.items()}
        return {"class_counts": {c: {s: counts[s].get(i, 0) for s in splits} for i, c in enumerate(self.classes)}}
