"""Pruning beyond Optuna's rank-based pruners.

Hyperband compares a trial with others in its bracket; in a small study a bracket may hold only one or two trials,
so a trial that collapsed to predicting the majority class can run all its epochs (SMS spam: a LoRA trial at
lr 5e-3 sat at the 87.6 % majority baseline for 5 epochs, 4.5 of the study's 15 minutes).
:class:`BaselinePruner` wraps any pruner and also stops such trials.
"""

from __future__ import annotations

import optuna


class BaselinePruner(optuna.pruners.BasePruner):
    """Prune when the wrapped pruner does, or when the primary validation metric is still no better than
    ``baseline`` after ``min_epochs`` epochs: the task's trivial predictor (majority class, per-label majority,
    the training mean) scored on the validation split, in the study's ``direction``.

    Note: wrapping a HyperbandPruner hides it from TPE's bracket-wise sampling, so TPE models all trials together,
    which is what a study of a few trials needs anyway.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, baseline: float, min_epochs: int = 2,
                 direction: str = "maximize"):
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be maximize or minimize, got {direction!r}")
        self.inner = inner
        self.baseline = float(baseline)
        self.min_epochs = int(min_epochs)
        self.direction = direction

    def no_better(self, values: list[float]) -> bool:
        """Whether the best of ``values`` is no better than the baseline."""
        if self.direction == "maximize":
            return max(values) <= self.baseline + 1e-9
        return min(values) >= self.baseline - 1e-9

    def at_baseline(self, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.min_epochs:
            return False
        return self.no_better(list(trial.intermediate_values.values()))

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.at_baseline(trial) or self.inner.prune(study, trial)
