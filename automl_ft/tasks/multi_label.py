"""Multi-label classification (problem ``multilabel``): any subset of the classes per example, one sigmoid per
class, binary cross-entropy with logits.

A label cell is a list (JSONL/Parquet) or a string joined by ``label_sep`` (default ``|``); an empty cell or list
is an example with no label, a NaN/None cell a missing row. Each class gets its own decision threshold, 0.5 until
:meth:`MultiLabel.calibrate` tunes it for F1 on validation; the thresholds are saved with the model.

The primary metric is micro-F1: it pools every (example, label) decision, so a rare label that val holds twice
moves it a little, where macro-F1 would swing by 1/K on one example of that label and make trials incomparable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from automl_ft.errors import DataError, UsageError

from . import register_task
from .base import (
    ParsedLabels,
    Task,
    is_list_cell,
    is_missing_cell,
    is_missing_label,
    log_sigmoid,
    num,
    pct,
    sigmoid,
    sorted_classes,
)

# Multilabel when at least this fraction of the non-missing string labels contain the separator: 1 % is well
# above chance for a separator that is not in a single-label set's class names (usually none), and well below the
# share of multi-label rows in real sets (e.g. 20-40 % in GoEmotions-style data).
SEP_FRACTION = 0.01
DEFAULT_THRESHOLD = 0.5
# The card's per-label table stops here; metrics.json holds every label.
CARD_LABELS = 50


def _check_sep(label_sep: str) -> None:
    if not isinstance(label_sep, str) or not label_sep:
        raise UsageError(f"--label-sep {label_sep!r}: the label separator must be a non-empty string, e.g. '|'")


def _label_set(cell: Any, label_sep: str) -> list[str] | None:
    """The labels of one cell, stripped, de-duplicated in order; None for a missing cell (None/NaN, or a string
    that is a printed NaN); ``[]`` for an empty string or list (an example with no label)."""
    if is_missing_cell(cell):
        return None
    if is_list_cell(cell):
        items = [str(x).strip() for x in cell if not is_missing_cell(x)]
    elif isinstance(cell, str):
        if cell.strip() and is_missing_label(cell):  # "nan", "<NA>": a missing float printed as text
            return None
        items = [piece.strip() for piece in cell.split(label_sep)]
    else:
        items = [str(cell).strip()]
    return list(dict.fromkeys(x for x in items if x))


def _multi_hot(labels: list, k: int, dtype: Any) -> np.ndarray:
    out = np.zeros((len(labels), k), dtype=dtype)
    for i, ys in enumerate(labels):
        out[i, list(ys)] = 1
    return out


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 with 0 where undefined (scikit-learn's ``zero_division=0``)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return p, r, f


@register_task
class MultiLabel(Task):
    """Any subset of ``classes`` per example, with a decision threshold per class."""

    name = "multilabel"
    hf_problem_type = "multi_label_classification"
    description = "multi-label classification: any set of classes per example (sigmoids, binary cross-entropy)"
    detect_priority = 10
    output_doc = ("one score per label, in `labels.json` order; a label applies when the sigmoid of its score "
                  "reaches its threshold in `task.json` (tuned on the validation split)")

    def __init__(self, classes: list[str], thresholds: list[float] | None = None, calibrated: bool = False,
                 train_positives: list[int] | None = None, train_count: int = 0):
        super().__init__(classes)
        self.thresholds = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * len(classes),
                                     dtype=np.float64)
        if self.thresholds.shape != (len(self.classes),):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.classes)} classes")
        self.calibrated = bool(calibrated)
        self.train_positives = list(train_positives) if train_positives is not None else None
        self.train_count = int(train_count)

    # ---- raw labels ---------------------------------------------------------------------------------------------
    @classmethod
    def looks_like(cls, cells: list, label_sep: str) -> str | None:
        _check_sep(label_sep)
        lists = sum(1 for c in cells if is_list_cell(c))
        if lists:
            return f"{lists} label cell(s) hold lists of labels: multilabel"
        strings = [c.strip() for c in cells if isinstance(c, str) and not is_missing_label(c)]
        joined = sum(1 for s in strings if label_sep in s)
        if joined and joined >= SEP_FRACTION * len(strings):
            return (f"{joined} of {len(strings)} labels ({100 * joined / len(strings):.1f}%, at least "
                    f"{100 * SEP_FRACTION:g}%) contain the label separator {label_sep!r}: multilabel (--label-sep "
                    "sets another separator)")
        return None

    @classmethod
    def parse_labels(cls, cells: list, label_sep: str) -> ParsedLabels:
        _check_sep(label_sep)
        sets: list[list[str]] = []
        missing: list[int] = []
        for i, cell in enumerate(cells):
            labels = _label_set(cell, label_sep)
            if labels is None:
                missing.append(i)
            else:
                sets.append(labels)
        classes = sorted_classes({y for s in sets for y in s})
        index = {c: i for i, c in enumerate(classes)}
        warnings = []
        if missing:
            warnings.append(f"{len(missing)} row(s) with a NaN/None label dropped as missing (an empty label is "
                            "kept as an example with no label)")
        empty = sum(1 for s in sets if not s)
        if empty:
            warnings.append(f"{empty} example(s) have no label (an empty label set)")
        if sets and not classes:
            raise DataError(f"label column: all {len(sets)} labeled rows have an empty label set; a multilabel task "
                            "needs labels (check --label-column)")
        return ParsedLabels(classes, [sorted(index[y] for y in s) for s in sets], missing, warnings)

    @classmethod
    def strata(cls, labels: list) -> np.ndarray:
        """Multi-hot [n, K] (K = highest class index + 1), for iterative stratification."""
        k = 1 + max((max(ys) for ys in labels if len(ys)), default=-1)
        return _multi_hot(labels, k, np.uint8)

    @classmethod
    def fit(cls, classes: list[str], train_labels: list, **options: Any) -> MultiLabel:
        """Thresholds start at 0.5 (``calibrate`` tunes them); counts positives per label in train."""
        if options:
            raise TypeError(f"multilabel fit takes no options, got {', '.join(sorted(options))}")
        if not classes:
            raise ValueError("multilabel needs at least one class")
        positives = _multi_hot(train_labels, len(classes), np.int64).sum(0)
        return cls(classes, None, False, positives.tolist(), len(train_labels))

    # ---- fitted ---------------------------------------------------------------------------------------------
    def encode_true(self, cell: Any, label_sep: str) -> tuple[Any, list[str]]:
        """One input's known label set (an empty set is a valid answer: the example has no label)."""
        names = _label_set(cell, label_sep)
        if names is None:
            return None, []
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            return None, unknown
        return sorted(self.classes.index(n) for n in names), []

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "thresholds": self.thresholds.tolist(), "calibrated": self.calibrated,
                "train_positives": self.train_positives, "train_count": self.train_count,
                "primary_metric": self.primary_metric}

    def _load_state(self, state: dict[str, Any]) -> None:
        positives = state.get("train_positives")
        self.__init__([str(c) for c in state["classes"]], [float(t) for t in state["thresholds"]],
                      bool(state.get("calibrated", False)),
                      [int(p) for p in positives] if positives is not None else None,
                      int(state.get("train_count", 0)))

    @property
    def primary_metric(self) -> str:
        return "micro_f1"

    def targets(self, labels: list) -> np.ndarray:
        """Multi-hot float32 [n, K]."""
        return _multi_hot(labels, self.head_size, np.float32)

    def loss(self, *, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None,
             kind: str | None = None) -> Callable[..., Any]:
        """Mean binary cross-entropy with logits over every (example, label); label smoothing eps moves the
        targets to eps/2 and 1 - eps/2."""
        import torch.nn.functional as F

        self._check_kind(kind)
        if class_weights is not None:
            raise ValueError("multilabel has no class weights (each label is its own binary problem); pass None")
        eps = float(label_smoothing)

        def bce(logits, targets):
            t = targets.to(logits.dtype)
            if eps:
                t = t * (1.0 - eps) + 0.5 * eps
            return F.binary_cross_entropy_with_logits(logits, t)

        return bce

    def predictions(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float64 [n, K], decisions bool [n, K] at the thresholds: p >= threshold)."""
        p = sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1, self.head_size))
        return p, p >= self.thresholds

    def metrics(self, logits: np.ndarray, labels: list) -> dict[str, Any]:
        """Micro and macro P/R/F1, subset accuracy and per-label P/R/F1/support at the thresholds, and ``loss``
        (mean BCE over every example and label).

        Macro averages run over the labels present in the truth or the predictions, as automl_ft.metrics does for
        single-label classification (a label val never holds and the model never predicts says nothing)."""
        y = _multi_hot(labels, self.head_size, bool)
        n = len(y)
        if n == 0:
            return {"num_examples": 0, "loss": 0.0, "micro_precision": 0.0, "micro_recall": 0.0, "micro_f1": 0.0,
                    "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0, "subset_accuracy": 0.0,
                    "hamming_loss": 0.0, "per_label": {}}
        x = np.asarray(logits, dtype=np.float64).reshape(n, self.head_size)
        _, pred = self.predictions(x)
        tp = (pred & y).sum(0)
        fp = (pred & ~y).sum(0)
        fn = (~pred & y).sum(0)
        p, r, f = _prf(tp, fp, fn)
        mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
        present = (tp + fp + fn) > 0
        bce = -(y * log_sigmoid(x) + (~y) * log_sigmoid(-x))
        return {
            "num_examples": n,
            "loss": float(bce.mean()),
            "micro_precision": float(mp), "micro_recall": float(mr), "micro_f1": float(mf),
            "macro_precision": float(p[present].mean()) if present.any() else 0.0,
            "macro_recall": float(r[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f[present].mean()) if present.any() else 0.0,
            "subset_accuracy": float((pred == y).all(1).mean()),
            "hamming_loss": float((pred != y).mean()),
            "per_label": {c: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                              "support": int(tp[j] + fn[j]), "threshold": float(self.thresholds[j])}
                          for j, c in enumerate(self.classes)},
        }

    def baseline(self, train_labels: list, val_labels: list) -> float:
        """Micro-F1 on val of predicting, for every example, the labels positive in more than half of train
        (usually none, so 0.0: any trial that predicts some labels right beats it)."""
        train = _multi_hot(train_labels, self.head_size, bool)
        majority = train.sum(0) > len(train) / 2
        y = _multi_hot(val_labels, self.head_size, bool)
        pred = np.broadcast_to(majority, y.shape)
        _, _, f = _prf((pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum())
        return float(f)

    def probe_grid(self) -> tuple[float, ...]:
        """One-vs-rest logistic regression's C (0.01 won on Banking77 facets and on the digit-pair sets)."""
        return (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0)

    def fit_linear(self, x: np.ndarray, labels: list, strength: float, *, balanced: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """One logistic regression per label (its log-odds are that label's logit); a label that is always or
        never on in ``labels`` gets bias +-6 (probability 0.998 / 0.002) and no weights."""
        from sklearn.linear_model import LogisticRegression

        y = _multi_hot(labels, self.head_size, np.int64)
        weight = np.zeros((self.head_size, x.shape[1]))
        bias = np.zeros(self.head_size)
        for j in range(self.head_size):
            if y[:, j].min() == y[:, j].max():
                bias[j] = 6.0 if y[0, j] else -6.0
                continue
            clf = LogisticRegression(C=strength, max_iter=2000, class_weight="balanced" if balanced else None)
            clf.fit(x, y[:, j])
            weight[j], bias[j] = clf.coef_[0], clf.intercept_[0]
        return weight, bias

    def calibrate(self, val_logits: np.ndarray, val_labels: list) -> None:
        """Per label, the threshold among the label's distinct validation probabilities that maximises its F1
        (predict p >= threshold); ties go to the threshold closest to 0.5. A label without a positive on val
        keeps its threshold (F1 is 0 at every threshold there)."""
        y = _multi_hot(val_labels, self.head_size, bool)
        n = len(y)
        if n == 0:
            return
        p = sigmoid(np.asarray(val_logits, dtype=np.float64).reshape(n, self.head_size))
        thresholds = self.thresholds.copy()
        for j in range(self.head_size):
            positives = int(y[:, j].sum())
            if positives == 0:
                continue
            order = np.argsort(-p[:, j], kind="stable")
            ps, ys = p[order, j], y[order, j]
            # the last row of each run of equal probabilities: predicting p >= ps[i] marks rows 0..i positive
            ends = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), n - 1]
            tp = np.cumsum(ys)[ends]
            f1 = 2.0 * tp / (ends + 1 + positives)
            best = np.flatnonzero(f1 >= f1.max() - 1e-12)
            thresholds[j] = ps[ends[best[np.argmin(np.abs(ps[ends[best]] - 0.5))]]]
        self.thresholds = thresholds
        self.calibrated = True

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Each label's own sigmoid probability (a label is predicted where it reaches its threshold)."""
        return self.predictions(logits)[0]

    def decode(self, logits: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """``{"labels": [predicted labels, most probable first], "scores": {label: probability}}`` per row
        (probabilities rounded to 6 decimals, as predict prints); ``top_k`` keeps the k most probable in
        ``scores``, best first, instead of every label in class order."""
        probs, pred = self.predictions(logits)
        out = []
        for p, d in zip(probs, pred):
            order = np.argsort(-p, kind="stable")
            shown = order[:top_k] if top_k is not None else range(self.head_size)
            out.append({"labels": [self.classes[int(j)] for j in order if d[j]],
                        "scores": {self.classes[int(j)]: round(float(p[j]), 6) for j in shown}})
        return out

    def agreement(self, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
        """Fraction of rows with the same predicted label set."""
        _, a = self.predictions(a_logits)
        _, b = self.predictions(b_logits)
        return float((a == b).all(1).mean()) if len(a) else 1.0

    def describe(self, metrics: dict[str, Any]) -> str:
        return (f"micro F1 {pct(metrics.get('micro_f1'))} (macro F1 {pct(metrics.get('macro_f1'))}, subset accuracy "
                f"{pct(metrics.get('subset_accuracy'))})")

    def card_rows(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        rows = [("Primary metric", "micro F1 (pooled over every example and label)"),
                ("Micro precision / recall / F1", " / ".join(pct(metrics.get(f"micro_{k}"))
                                                              for k in ("precision", "recall", "f1"))),
                ("Macro precision / recall / F1", " / ".join(pct(metrics.get(f"macro_{k}"))
                                                              for k in ("precision", "recall", "f1"))),
                ("Subset accuracy (exact label set)", pct(metrics.get("subset_accuracy"))),
                ("Loss (binary cross-entropy)", num(metrics.get("loss"))),
                ("Thresholds", "tuned per label for F1 on validation" if self.calibrated else "0.5 (not tuned)"),
                ("Examples", str(metrics.get("num_examples")))]
        per_label = list((metrics.get("per_label") or {}).items())
        for c, m in per_label[:CARD_LABELS]:
            rows.append((f"{c}: P / R / F1 (support, threshold)",
                         f"{pct(m['precision'])} / {pct(m['recall'])} / {pct(m['f1'])} ({m['support']}, "
                         + f"{m['threshold']:.3f})"))
        if len(per_label) > CARD_LABELS:
            rows.append((f"... {len(per_label) - CARD_LABELS} more labels", "in metrics.json"))
        return rows

    def summary(self, splits: dict[str, list]) -> dict[str, Any]:
        """``label_counts`` ``{label: {split: positives}}``, ``label_set_sizes`` ``{split: {size: examples}}`` and
        ``no_label`` ``{split: examples with an empty set}``."""
        counts = {s: Counter(j for ys in labels for j in ys) for s, labels in splits.items()}
        sizes = {s: Counter(len(ys) for ys in labels) for s, labels in splits.items()}
        return {"label_counts": {c: {s: counts[s].get(j, 0) for s in splits} for j, c in enumerate(self.classes)},
                "label_set_sizes": {s: {str(k): v for k, v in sorted(sizes[s].items())} for s in splits},
                "no_label": {s: sizes[s].get(0, 0) for s in splits}}
