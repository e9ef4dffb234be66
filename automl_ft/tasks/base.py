"""The :class:`Task` base class: what a problem type (single-label, multi-label, regression...) owns.

A task turns raw label cells into labels (class-level, no state), and, once fitted on the training labels, owns
the label codec, the head size, the loss, the metrics with the primary one and its direction, prediction decoding,
calibration and the trivial baseline. Training, search, export, predict, report and the card ask the task and
never test ``if task == ...``, so a new problem type is one new file in this package.

Torch-free on import: predict and serve import this package; only :meth:`Task.loss` imports torch (and
:meth:`Task.class_weights` scikit-learn), inside the method.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

# Cells that mean "no value": a missing float printed by pandas or NumPy ("nan", "NaN", "<NA>"). Words such as
# "None", "NA" or "null" stay labels: they are plausible class names ("no entity", "not applicable").
# (Moved here from data/cleaning.py, which re-exports it: the data layer imports the tasks, not the reverse.)
MISSING_LABELS = {"", "nan", "-nan", "<na>"}
# More distinct numeric labels than this looks like a measured quantity, not class ids (ratings 1-10, digit
# classes 0-9 and most coded categories stay below it).
NUMERIC_TARGET_DISTINCT = 20
# Row numbers shown in a one-line error: enough to find the pattern, short enough for one line.
SHOWN_ROWS = 5


def is_missing_label(label: str) -> bool:
    """True for an empty or NaN label: a row without a label, never a class of its own."""
    return label.strip().lower() in MISSING_LABELS


def is_missing_cell(cell: Any) -> bool:
    """True for a cell with no value at all: None, a float NaN (pandas' missing value in JSONL/Parquet columns)
    or ``pd.NA`` / ``pd.NaT``. Strings are not judged here (see :func:`is_missing_label`)."""
    if cell is None:
        return True
    if isinstance(cell, float):  # np.float64 is a float too
        return math.isnan(cell)
    if isinstance(cell, np.floating):
        return bool(np.isnan(cell))
    return type(cell).__name__ in ("NAType", "NaTType")  # pandas' missing scalars, without importing pandas


def is_list_cell(cell: Any) -> bool:
    """True for a cell holding several values: a list or tuple (JSONL) or a 1-D array (a Parquet list column)."""
    return isinstance(cell, (list, tuple)) or (isinstance(cell, np.ndarray) and cell.ndim == 1)


def as_number(cell: Any) -> float | None:
    """A cell's value as a float when it is a number or a string that parses as one (``" 3.5 "``), else None.
    Booleans are not numbers here (``True`` is a class name, not 1.0); the result may be inf (callers check)."""
    if isinstance(cell, (bool, np.bool_)):
        return None
    if isinstance(cell, (int, float, np.integer, np.floating)):
        return float(cell)
    if isinstance(cell, str):
        try:
            return float(cell.strip())
        except ValueError:
            return None
    return None


def format_rows(positions: Sequence[int]) -> str:
    """``"rows 3, 17, 20"`` for 0-based positions (shown 1-based, as data rows under the header), at most
    :data:`SHOWN_ROWS` of them, then ``...``."""
    shown = ", ".join(str(p + 1) for p in positions[:SHOWN_ROWS])
    return f"row{'s' if len(positions) > 1 else ''} {shown}{' ...' if len(positions) > SHOWN_ROWS else ''}"


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals (``0.981`` -> ``98.10%``); ``n/a`` for None."""
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def num(x: float | None) -> str:
    """A number with four significant digits (units are the data's own); ``n/a`` for None."""
    return "n/a" if x is None else f"{float(x):.4g}"


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``log(sigmoid(x))`` without overflow: ``-log1p(exp(-|x|)) + min(x, 0)`` (exp never sees a positive
    argument, so x = -1000 gives -1000, not -inf)."""
    x = np.asarray(x, dtype=np.float64)
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function in float64, stable for large |x| (no overflow warning at x = -1000)."""
    return np.exp(log_sigmoid(x))


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis`` in float64, shifted by the maximum so exp never overflows."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


@dataclass
class ParsedLabels:
    """Raw label cells turned into labels.

    Attributes:
        classes: sorted class names (classification, multilabel); ``[]`` for regression.
        labels: one label per kept row, in row order: a class index (classification), a sorted list of class
            indices, possibly empty (multilabel), or a float in the original units (regression).
        missing: 0-based positions of the rows dropped because their label is missing (empty / NaN / None);
            ``labels`` has ``len(cells) - len(missing)`` entries.
        warnings: one-line notes for the data summary (e.g. how many rows had no label).
    """

    classes: list[str]
    labels: list
    missing: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sorted_classes(names: Sequence[str] | set[str]) -> list[str]:
    """Class names in the order the head's outputs use: sorted strings, as the data layer has always done, so a
    classification model keeps the same label indices as runs made before tasks existed."""
    return sorted(set(names))


class Task(abc.ABC):
    """A problem type: label parsing (class methods) and, once fitted on train labels, everything that depends on
    what the labels mean. Subclasses register with :func:`automl_ft.tasks.register_task`."""

    name: ClassVar[str]  # registry key, e.g. "multilabel"
    description: ClassVar[str]
    detect_priority: ClassVar[int]  # detect_problem asks tasks in increasing priority; classification is the fallback
    #: what the exported model's ``logits`` output means (the model card's "Use" section)
    output_doc: ClassVar[str]
    #: transformers' ``config.problem_type`` for this task (the Hugging Face export writes it)
    hf_problem_type: ClassVar[str]
    #: whether label smoothing means anything for this task's targets (the search fixes it at 0 where not)
    uses_label_smoothing: ClassVar[bool] = True
    #: whether a target is a map over the input's pixels (segmentation): the modality then transforms input and
    #: target together, and the model family is a dense one (logits ``[B, C, H, W]``)
    spatial_targets: ClassVar[bool] = False
    #: whether each example's label is one class, so that two examples form a same-class or an other-class pair
    #: (SetFit's contrastive pairs, setfit.py)
    one_class_per_example: ClassVar[bool] = False
    #: the input modalities the task makes sense on (segmentation: images only)
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)

    # ---- class-level: raw data -> labels (no fitted state needed) ---------------------------------------------
    @classmethod
    @abc.abstractmethod
    def looks_like(cls, cells: list, label_sep: str) -> str | None:
        """A one-line reason when the raw label cells look like this problem, else None."""

    @classmethod
    @abc.abstractmethod
    def parse_labels(cls, cells: list, label_sep: str) -> ParsedLabels:
        """Raw label cells (strings, numbers, lists, None/NaN) to :class:`ParsedLabels`.

        Raises:
            DataError: a cell that cannot be a label of this problem; one line naming the rows (1-based).
        """

    @classmethod
    @abc.abstractmethod
    def strata(cls, labels: list) -> np.ndarray:
        """What a stratified split balances: 1-D group ids, or a 2-D multi-hot matrix for iterative
        stratification."""

    @classmethod
    @abc.abstractmethod
    def fit(cls, classes: list[str], train_labels: list, **options: Any) -> Task:
        """A fitted task from the class names and the training labels (what the codec and the primary metric
        are decided on)."""

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Task:
        """The fitted task of :meth:`state_dict` (``load_task`` dispatches here by ``state["problem"]``)."""
        task = cls.__new__(cls)
        task._load_state(state)
        return task

    # ---- fitted ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this fitted task, JSON-able; ``load_task(state)`` rebuilds it exactly."""
        return {"problem": self.name, "classes": list(self.classes)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.classes = [str(c) for c in state["classes"]]

    @property
    def head_size(self) -> int:
        """Outputs of the model's head."""
        return len(self.classes)

    @property
    @abc.abstractmethod
    def primary_metric(self) -> str:
        """The key of :meth:`metrics` that Optuna optimises, the pruner watches and the card leads with."""

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"`` (the primary metric's)."""
        return "maximize"

    @property
    def imbalanced(self) -> bool:
        """True when the training classes are imbalanced enough to search the imbalance handling."""
        return False

    @abc.abstractmethod
    def targets(self, labels: list) -> np.ndarray:
        """Training targets as the loss expects them."""

    @abc.abstractmethod
    def loss(self, *, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None,
             kind: str | None = None) -> Callable[..., Any]:
        """``fn(logits [B, head_size], targets tensor) -> scalar tensor`` (torch is imported here)."""

    def loss_choices(self) -> list[str]:
        """Loss kinds the search space may pick from (``kind`` of :meth:`loss`)."""
        return ["default"]

    def _check_kind(self, kind: str | None) -> str:
        choices = self.loss_choices()
        if kind is None:
            return choices[0]
        if kind not in choices:
            raise ValueError(f"unknown loss {kind!r} for a {self.name} task; known: {', '.join(choices)}")
        return kind

    def class_weights(self, labels: list) -> np.ndarray | None:
        """Per-class loss weights for an imbalanced problem; None where the task has none."""
        return None

    def sample_weights(self, labels: list) -> np.ndarray | None:
        """Per-example sampling weights for a balanced sampler; None where the task has none."""
        return None

    # The frozen-feature probe (automl_ft/probe.py) asks the task for a linear head fitted on pooled features: a
    # task that returns no grid has no probe (segmentation: its head is a decoder, not a linear map).
    def probe_grid(self) -> tuple[float, ...]:
        """Regularisation strengths tried by the probe, strongest regularisation first (ties keep the earlier),
        picked on validation by the primary metric."""
        return ()

    def fit_linear(self, x: np.ndarray, labels: list, strength: float, *, balanced: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """A linear head ``(weight [head_size, d], bias [head_size])`` on standardised features ``x`` [n, d] whose
        outputs are this task's logits; ``balanced`` reweights classes (the imbalance remedy)."""
        raise NotImplementedError(f"{type(self).__name__} has no linear probe")

    @abc.abstractmethod
    def metrics(self, logits: np.ndarray, labels: list) -> dict[str, Any]:
        """NumPy-only metrics of ``logits`` [n, head_size] against ``labels``; always ``loss``, the primary metric
        and ``num_examples``."""

    def primary(self, metrics: dict[str, Any]) -> float:
        """The primary metric's value out of :meth:`metrics`."""
        return float(metrics[self.primary_metric])

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` under :attr:`direction`."""
        return a > b if self.direction == "maximize" else a < b

    @abc.abstractmethod
    def baseline(self, train_labels: list, val_labels: list) -> float:
        """The primary metric on ``val_labels`` of the trivial predictor fitted on ``train_labels``: what a trial
        must beat to be learning anything (the baseline pruner's bar)."""

    def calibrate(self, val_logits: np.ndarray, val_labels: list) -> None:
        """Tune decision parameters on validation (multilabel thresholds); a no-op for most tasks."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Per-class probabilities ``[n, len(classes)]`` of ``logits`` (the Python API's ``predict_proba``).

        Raises:
            UsageError: the task predicts values, not classes (regression).
        """
        from automl_ft.errors import UsageError

        raise UsageError(f"a {self.name} model predicts values, not class probabilities; use predict()")

    @abc.abstractmethod
    def decode(self, logits: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """predict's fields per input row of ``logits``."""

    @abc.abstractmethod
    def agreement(self, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
        """Fraction of inputs whose decoded predictions match (ONNX / INT8 against PyTorch)."""

    @abc.abstractmethod
    def describe(self, metrics: dict[str, Any]) -> str:
        """One console phrase, primary metric first."""

    @abc.abstractmethod
    def card_rows(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        """The model card's metric table: (name, formatted value) rows."""

    @abc.abstractmethod
    def summary(self, splits: dict[str, list]) -> dict[str, Any]:
        """Label statistics per split (``{"train": labels, "val": ..., "test": ...}``) for data_summary.json."""

    def encode_true(self, cell: Any, label_sep: str) -> tuple[Any, list[str]]:
        """A known label as given with an input to ``predict`` (a table cell) -> ``(label, unknown class names)``.

        ``label`` is what :meth:`metrics` takes (None for a missing cell); names the model does not know are
        returned instead, so the caller can say how many inputs were not scored and why.
        """
        parsed = type(self).parse_labels([cell], label_sep)
        if parsed.missing or not parsed.labels:
            return None, []
        label = parsed.labels[0]
        if not parsed.classes:  # a number (regression): nothing to map
            return label, []
        names = [parsed.classes[i] for i in (label if isinstance(label, list) else [label])]
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            return None, unknown
        indices = [self.classes.index(n) for n in names]
        return (sorted(indices) if isinstance(label, list) else indices[0]), []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(classes={len(self.classes)}, primary_metric={self.primary_metric!r})"
