"""Regression (problem ``regression``): one number per example, a one-output head, MSE or Huber loss.

Targets are standardised with the training mean and standard deviation (the codec, saved with the model), so one
learning-rate range and Huber's delta of 1.0 fit every unit; predictions are de-standardised, so metrics and
``predict`` speak the data's own units. RMSE is the primary metric (minimised).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from automl_ft.errors import DataError

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
    num,
)

# A standard deviation below this is a constant target: the codec divides by 1.0 instead (no blow-up to 1e12).
MIN_STD = 1e-12
# Huber's delta on standardised targets: quadratic within one training standard deviation, linear beyond.
HUBER_DELTA = 1.0
# Regression strata: up to 10 equal-count bins of the target, at least 10 examples each, so each bin reaches
# every split (a 10 % val split gets about one example per bin) and extreme targets are spread over all splits.
STRATA_BINS = 10
STRATA_MIN_PER_BIN = 10
# Bad cells quoted in the one-line error.
SHOWN_CELLS = 3


def _missing(cell: Any) -> bool:
    """None/NaN, or a string that is empty or a printed NaN (the classification rule for a missing label)."""
    return is_missing_cell(cell) or (isinstance(cell, str) and is_missing_label(cell))


def _value(cell: Any) -> float | None:
    """A finite number, or None (not a number, a list, a boolean, or inf)."""
    if is_list_cell(cell):
        return None
    v = as_number(cell)
    return v if v is not None and math.isfinite(v) else None


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata's ``average``), in NumPy."""
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # mean of ranks starts+1 .. ends
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); 0.0 when undefined (a constant side, n < 2), where
    scipy returns NaN, which JSON cannot hold."""
    if len(a) < 2:
        return 0.0
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


@register_task
class Regression(Task):
    """One number per example, in the units of the training targets."""

    name = "regression"
    hf_problem_type = "regression"
    description = "regression: one number per example (standardised targets, MSE or Huber loss)"
    detect_priority = 20
    output_doc = ("one standardized value; times `std` plus `mean` from `task.json` it is the prediction in the "
                  "target's own units")
    uses_label_smoothing = False  # a number has no neighbouring classes to spread probability over

    def __init__(self, mean: float, std: float, train_count: int = 0):
        super().__init__([])
        self.mean = float(mean)
        self.std = float(std)
        self.train_count = int(train_count)

    # ---- raw labels ---------------------------------------------------------------------------------------------
    @classmethod
    def looks_like(cls, cells: list, label_sep: str) -> str | None:
        distinct: set[float] = set()
        for cell in cells:
            if _missing(cell):
                continue
            v = _value(cell)
            if v is None:
                return None
            distinct.add(v)
        if len(distinct) > NUMERIC_TARGET_DISTINCT:
            return (f"every label is a number, with {len(distinct)} distinct values (more than "
                    f"{NUMERIC_TARGET_DISTINCT}): regression")
        return None

    @classmethod
    def parse_labels(cls, cells: list, label_sep: str) -> ParsedLabels:
        """Numbers (or strings that parse as finite numbers) in original units; empty/NaN cells are missing.

        Raises:
            DataError: any other cell (text, a list, a boolean, inf), naming the first rows (1-based).
        """
        values: list[float] = []
        missing: list[int] = []
        bad: list[int] = []
        for i, cell in enumerate(cells):
            if _missing(cell):
                missing.append(i)
                continue
            v = _value(cell)
            if v is None:
                bad.append(i)
            else:
                values.append(v)
        if bad:
            shown = ", ".join(repr(cells[i])[:30] for i in bad[:SHOWN_CELLS])
            raise DataError(f"label column: {format_rows(bad)} are not finite numbers ({shown}); a regression needs "
                            "a number in every labeled row: fix or empty those cells, or use a classification task")
        warnings = []
        if missing:
            warnings.append(f"{len(missing)} row(s) with an empty or NaN target dropped as missing")
        distinct = len(set(values))
        if 0 < distinct <= NUMERIC_TARGET_DISTINCT:
            warnings.append(f"the target has only {distinct} distinct values; if they are categories, a "
                            "classification task may suit better")
        return ParsedLabels([], values, missing, warnings)

    @classmethod
    def strata(cls, labels: list) -> np.ndarray:
        """Equal-count bins of the target's rank (ties broken by row order): up to 10 bins of at least 10
        examples, so every split sees the whole range of the target."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        n = len(y)
        bins = max(1, min(STRATA_BINS, n // STRATA_MIN_PER_BIN))
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(y, kind="stable")] = np.arange(n)
        return rank * bins // max(n, 1)

    @classmethod
    def fit(cls, classes: list[str], train_labels: list, **options: Any) -> Regression:
        """The codec: mean and (population) standard deviation of the training targets; a constant target gets
        std 1.0."""
        if options:
            raise TypeError(f"regression fit takes no options, got {', '.join(sorted(options))}")
        if classes:
            raise ValueError(f"a regression has no classes, got {len(classes)}")
        y = np.asarray(train_labels, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("regression fit needs at least one training target")
        std = float(y.std())
        return cls(float(y.mean()), std if std >= MIN_STD else 1.0, len(y))

    # ---- fitted ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mean": self.mean, "std": self.std, "train_count": self.train_count,
                "primary_metric": self.primary_metric}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.mean, self.std = float(state["mean"]), float(state["std"])
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"mean {self.mean} / std {self.std} are not a valid codec")
        self.train_count = int(state.get("train_count", 0))

    @property
    def head_size(self) -> int:
        return 1

    @property
    def primary_metric(self) -> str:
        return "rmse"

    @property
    def direction(self) -> str:
        return "minimize"

    def targets(self, labels: list) -> np.ndarray:
        """``(y - mean) / std`` as float32 [n]."""
        return ((np.asarray(labels, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def values(self, logits: np.ndarray) -> np.ndarray:
        """The model's outputs [n, 1] (or [n]) in original units, float64."""
        z = np.asarray(logits, dtype=np.float64)
        return z.reshape(len(z), -1)[:, 0] * self.std + self.mean

    def probe_grid(self) -> tuple[float, ...]:
        """Ridge's alpha on standardised features (1000 won on the digit pairs, 100 on the diabetes sentences)."""
        return (10000.0, 1000.0, 100.0, 10.0, 1.0, 0.1)

    def fit_linear(self, x: np.ndarray, labels: list, strength: float, *, balanced: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Ridge regression on the standardised targets the fine-tune trains on: its output is the head's one
        logit (de-standardised by :meth:`values`)."""
        from sklearn.linear_model import Ridge

        reg = Ridge(alpha=strength).fit(x, self.targets(labels))
        return reg.coef_.reshape(1, -1), np.asarray(reg.intercept_, dtype=np.float64).reshape(1)

    def loss_choices(self) -> list[str]:
        return ["mse", "huber"]

    def loss(self, *, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None,
             kind: str | None = None) -> Callable[..., Any]:
        """MSE (default) or Huber (delta 1.0, i.e. one training std) between the single output and the standardised
        target, in float32 whatever the autocast dtype."""
        import torch.nn.functional as F

        kind = self._check_kind(kind)
        if label_smoothing:
            raise ValueError(f"label smoothing ({label_smoothing}) has no meaning for regression; pass 0")
        if class_weights is not None:
            raise ValueError("class weights have no meaning for regression; pass None")

        def regression_loss(logits, targets):
            pred = logits.reshape(logits.shape[0], -1)[:, 0].float()
            target = targets.reshape(-1).float()
            if kind == "huber":
                return F.huber_loss(pred, target, delta=HUBER_DELTA)
            return F.mse_loss(pred, target)

        return regression_loss

    def metrics(self, logits: np.ndarray, labels: list) -> dict[str, Any]:
        """RMSE, MAE, R^2 and Spearman in original units, the residual (y - prediction) summary, and ``loss`` (MSE
        on standardised targets, what the default loss trains) with ``huber`` beside it."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        yhat = self.values(logits) if len(y) else np.zeros(0)
        err = y - yhat
        n = len(y)
        out: dict[str, Any] = {"num_examples": n}
        if n == 0:
            return {**out, "loss": 0.0, "huber": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 0.0, "spearman": 0.0,
                    "residuals": {k: 0.0 for k in ("mean", "std", "p5", "p50", "p95")}}
        z_err = err / self.std  # the error on the standardised scale the model is trained on
        abs_z = np.abs(z_err)
        huber = np.where(abs_z <= HUBER_DELTA, 0.5 * z_err ** 2, HUBER_DELTA * (abs_z - 0.5 * HUBER_DELTA))
        ss_res = float((err ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum())
        # scikit-learn's convention for a constant truth: 1.0 when predicted exactly, else 0.0 (never -inf/NaN)
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
        p5, p50, p95 = np.percentile(err, [5, 50, 95])
        out.update({
            "loss": float((z_err ** 2).mean()),
            "huber": float(huber.mean()),
            "rmse": math.sqrt(ss_res / n),
            "mae": float(np.abs(err).mean()),
            "r2": float(r2),
            "spearman": spearman(y, yhat),
            "residuals": {"mean": float(err.mean()), "std": float(err.std()), "p5": float(p5), "p50": float(p50),
                          "p95": float(p95)},
        })
        return out

    def baseline(self, train_labels: list, val_labels: list) -> float:
        """RMSE on val of predicting the training mean for everything."""
        y = np.asarray(val_labels, dtype=np.float64)
        mean = float(np.mean(np.asarray(train_labels, dtype=np.float64)))
        return math.sqrt(float(((y - mean) ** 2).mean())) if len(y) else 0.0

    def decode(self, logits: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """``{"value": number}`` per row, in original units (``top_k`` has no meaning here and is ignored)."""
        return [{"value": float(v)} for v in self.values(logits)]

    def agreement(self, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
        """Fraction of rows whose values differ by at most 1e-3 training std + 1e-6 (original units)."""
        a, b = self.values(a_logits), self.values(b_logits)
        return float((np.abs(a - b) <= 1e-3 * self.std + 1e-6).mean()) if len(a) else 1.0

    def describe(self, metrics: dict[str, Any]) -> str:
        return (f"RMSE {num(metrics.get('rmse'))} (MAE {num(metrics.get('mae'))}, R^2 {num(metrics.get('r2'))}, "
                f"Spearman {num(metrics.get('spearman'))})")

    def card_rows(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        res = metrics.get("residuals") or {}
        return [("Primary metric", "RMSE (lower is better)"),
                ("RMSE", num(metrics.get("rmse"))),
                ("MAE", num(metrics.get("mae"))),
                ("R^2", num(metrics.get("r2"))),
                ("Spearman", num(metrics.get("spearman"))),
                ("Residual (y - prediction) mean / std", f"{num(res.get('mean'))} / {num(res.get('std'))}"),
                ("Residual p5 / p50 / p95", " / ".join(num(res.get(k)) for k in ("p5", "p50", "p95"))),
                ("Training target mean / std", f"{num(self.mean)} / {num(self.std)}"),
                ("Examples", str(metrics.get("num_examples")))]

    def summary(self, splits: dict[str, list]) -> dict[str, Any]:
        """``target``: ``{split: {n, mean, std, min, max}}`` in original units."""
        out: dict[str, Any] = {}
        for s, labels in splits.items():
            y = np.asarray(labels, dtype=np.float64)
            out[s] = {"n": len(y)}
            if len(y):
                out[s].update(mean=float(y.mean()), std=float(y.std()), min=float(y.min()), max=float(y.max()))
        return {"target": out}
