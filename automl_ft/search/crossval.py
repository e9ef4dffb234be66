"""Honest validation on small data: trials scored by repeated stratified k-fold on train + val, the chosen
configuration refit on all of it.

With 16 labelled emails the default 80/10/10 split validated every trial on 2 examples (100 % for all: a blind
search) and tested on 2 more. Below :data:`SMALL_VAL` validation examples, or :data:`SMALL_PER_CLASS` examples of
the rarest class, a trial's score is instead the mean of its folds' best validation scores, reported fold by fold
as Optuna intermediate values (so the pruner can still stop a weak trial after its first folds), and the card
states that estimate with its spread. The folds stratify as the splits do (class ids, multi-label iterative
stratification, binned regression targets); each fold trains with the trial's own early stopping, and the refit
trains on every labelled example for the median of the folds' best epoch counts.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from automl_ft.data import LabeledData, Split

SMALL_VAL = 100  # a validation split below this many examples cannot rank trials (one example is 1 %+ of it)
SMALL_PER_CLASS = 50  # nor can one where the rarest class has fewer than this many labelled examples in all
REFIT_FILE = "refit.json"


@dataclass(frozen=True)
class CVPlan:
    """``repeats`` x ``folds`` fits per trial over the pooled train + val examples."""

    folds: int
    repeats: int
    seed: int
    examples: int
    reason: str

    @property
    def fits(self) -> int:
        return self.folds * self.repeats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        rep = f"{self.repeats} x " if self.repeats > 1 else ""
        return f"{rep}{self.folds}-fold cross-validation on {self.examples} labelled examples ({self.reason})"


def plan_for(data: LabeledData, seed: int = 0) -> CVPlan | None:
    """The cross-validation a data set needs, or None when its validation split can rank trials on its own.

    Fewer examples buy more folds and repeats: each fit is then cheap, and a 16-example estimate from one 5-fold
    split still moves by ~10 points with the seed, so it is repeated (3 x under 100 examples, 2 x under 300)."""
    task = data.fitted_task()
    if task.spatial_targets:  # a segmentation image holds thousands of labelled pixels: its val split ranks
        return None
    n = len(data.train) + len(data.val)
    counts = data.train.counts(data.num_classes)
    pooled = [a + b for a, b in zip(counts, data.val.counts(data.num_classes))]
    rarest = min(pooled) if data.problem == "classification" and pooled else None
    reasons = []
    if len(data.val) < SMALL_VAL:
        reasons.append(f"validation split of {len(data.val)} < {SMALL_VAL}")
    if rarest is not None and rarest < SMALL_PER_CLASS:
        reasons.append(f"rarest class has {rarest} < {SMALL_PER_CLASS} examples")
    if not reasons:
        return None
    folds = 5 if n >= 25 else 3 if n >= 9 else 2
    if rarest is not None:
        folds = max(2, min(folds, rarest))  # every fold's validation holds each class
    repeats = 3 if n < 100 else 2 if n < 300 else 1
    return CVPlan(folds, repeats, seed, n, "; ".join(reasons))


def fold_data(data: LabeledData, plan: CVPlan) -> list[LabeledData]:
    """The plan's folds: train / val pairs over the pooled train + val, stratified as the task stratifies splits;
    each shares the full data's fitted task (one primary metric and one label codec for every fold)."""
    task = data.fitted_task()
    inputs = data.train.inputs + data.val.inputs
    labels = data.train.labels + data.val.labels
    strata = np.asarray(task.strata(labels))
    out = []
    for r in range(plan.repeats):
        for train_idx, val_idx in _splits(strata, plan.folds, plan.seed + r):
            fold = LabeledData(data.task, data.classes, Split([inputs[i] for i in train_idx],
                                                              [labels[i] for i in train_idx]),
                               Split([inputs[i] for i in val_idx], [labels[i] for i in val_idx]), data.test,
                               data.source, data.summary, f"{data.fingerprint}-cv{r}.{len(out)}")
            fold.__dict__["_fitted_task"] = task
            out.append(fold)
    return out


def _splits(strata: np.ndarray, folds: int, seed: int):
    if strata.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        return list(MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(len(strata)), strata))
    from sklearn.model_selection import KFold, StratifiedKFold

    _, counts = np.unique(strata, return_counts=True)
    if counts.min() >= folds:
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(len(strata)), strata))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(strata))))


def pooled(data: LabeledData) -> LabeledData:
    """Every labelled example in train (the refit's data); val stays for calibration and examples, test as is."""
    out = replace(data, train=Split(data.train.inputs + data.val.inputs, data.train.labels + data.val.labels))
    out.__dict__["_fitted_task"] = data.fitted_task()
    return out


def summarize(scores: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            "scores": [float(s) for s in scores]}


def refit_epochs(best_epochs: list[int]) -> int:
    """The refit's epoch count: the median of the folds' best epochs (rounded up, at least 1)."""
    return max(1, int(np.ceil(statistics.median(best_epochs)))) if best_epochs else 1


def refit_schedule(config: Any, median_best: int, n_train: int) -> int:
    """The refit's epochs: the folds' median best epoch, raised to the :data:`~automl_ft.search.schedule.MIN_STEPS`
    optimizer steps every training run takes (at most the trial's own epochs); one for the closed-form probe and
    SetFit's single pass.

    On a handful of examples the folds' best epoch is picked on ~5 validation examples that all score 100 % after
    a few epochs: their median refit SMS at 8 per class for 4 epochs (16 steps), test 92.3 %, and Banking77's 10
    intents at 8 per class for 3 (15 steps), 94.4 %; the same configurations refit for 40 steps scored 95.2 % and
    97.4 % (mean of 2 seeds, bench_small.py's test sets, 2026-12-04)."""
    from automl_ft.search.schedule import MIN_STEPS

    if config.adaptation in ("probe", "setfit"):
        return 1
    per_epoch = max(1, math.ceil(n_train / (config.batch_size * config.grad_accumulation)))
    enough = min(config.epochs, math.ceil(MIN_STEPS / per_epoch))
    return max(median_best, enough)


def refit_best(trial: Any, data: LabeledData, trial_dir: Path, *, device: Any, caches: Any,
               backend: str = "auto", say=None) -> dict[str, Any]:
    """Retrain the chosen trial's configuration on every labelled example into ``trial_dir`` (its model is then
    what export picks up); ``refit.json`` records it, so a resumed export does not refit twice."""
    from automl_ft.config import TrialConfig
    from automl_ft.train import HISTORY_FILE, fit

    marker = trial_dir / REFIT_FILE
    if marker.is_file():
        return json.loads(marker.read_text())
    config = TrialConfig.from_dict(trial.user_attrs["config"])
    data_all = pooled(data)
    median = refit_epochs(trial.user_attrs.get("cv_best_epochs", []))
    epochs = refit_schedule(config, median, len(data_all.train))
    # a probe keeps the strength it picked: the folds' (cross-validated), else its validation split's
    strengths = trial.user_attrs.get("cv_probe_strengths") or (
        [trial.user_attrs["adaptation"]["probe_strength"]]
        if "probe_strength" in (trial.user_attrs.get("adaptation") or {}) else [])
    config = replace(config, epochs=epochs,
                     probe_strength=float(statistics.median(strengths)) if strengths else config.probe_strength)
    if say is not None:
        how = (f"the strength {config.probe_strength:g} picked on validation" if not trial.user_attrs.get("cv")
               else f"{config.epochs} epoch(s): " + ("the median of its folds' best" if epochs == median else
                                                      f"its folds' median best {median}, raised to 40 optimizer steps"))
        say(f"Refitting trial {trial.number} on all {len(data_all.train)} labelled examples ({how}) ...")
    # the trial's history.json is the search's record (its folds, or its validation score): the refit's, scored on
    # examples it trained on, goes into refit.json instead
    history = trial_dir / HISTORY_FILE
    kept = history.read_bytes() if history.is_file() else None
    outcome = fit(config, data_all, trial_dir, device=device, caches=caches, backend=backend, keep_last=True)
    if kept is not None:
        history.write_bytes(kept)
    record = {"trial": trial.number, "examples": len(data_all.train), "epochs": config.epochs,
              "folds_median_best_epoch": median,
              "probe_strength": config.probe_strength, "seconds": outcome.seconds, "history": outcome.history}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record
