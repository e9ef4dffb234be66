"""A sampler whose randomness depends on the seed and the trial number, not on which worker runs the trial.

Optuna seeds a sampler once, when it is built. Two workers started with the same ``--seed`` on one shared study
therefore draw the same random numbers, one draw per trial each: worker A's first trial and worker B's first trial
got the same configuration (trials 1 and 2 of a 6-trial PostgreSQL study, with TPE still in its random start-up
phase), and the study spent a third of its budget on a duplicate. Seeding by worker (host, pid) would fix that but
make a run depend on which worker took which trial. :class:`TrialSeededSampler` instead gives every trial its own
sampler, seeded from ``(seed, trial.number)``: trial numbers are unique within a study, so no two trials share a
random stream, and whichever worker runs trial N samples what a single worker would sample for trial N given the
same finished trials. A single-worker run with the same seed stays reproducible.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study run with ``seed``: NumPy's ``SeedSequence`` hashes the pair, so
    neighbouring seeds or trial numbers give unrelated streams (``seed + number`` would make seed 0's trial 1 the
    same as seed 1's trial 0)."""
    return int(np.random.SeedSequence([seed % 2**63, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler factory: trial N is sampled by ``factory(trial_seed(seed, N))``.

    The inner sampler lives from ``before_trial`` to ``after_trial`` of its trial, so a sampler that keeps state
    between ``infer_relative_search_space`` and ``sample_relative`` (TPE with ``group=True`` does) sees its own
    calls; concurrent trials in one process (``n_jobs > 1``) each have theirs. Everything a sampler learns from
    the history (TPE's Parzen estimators, constant-liar placeholders for running trials) is read from the study,
    so building one per trial loses nothing: what is built per trial is the random stream.

    Args:
        factory: builds the inner sampler from a seed, e.g. ``lambda s: optuna.samplers.TPESampler(seed=s)``.
        seed: the user's seed (``--seed``).
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = int(seed)
        self._lock = threading.Lock()
        self._active: dict[int, optuna.samplers.BaseSampler] = {}
        # Built once here so that bad arguments fail at once and Optuna's experimental-feature warnings (TPE's
        # multivariate, group, constant_liar) are shown once, not once per trial.
        self.template = factory(self._seed)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_active"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TrialSeededSampler({type(self.template).__name__}, seed={self._seed})"

    def _inner(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            sampler = self._active.get(trial._trial_id)
            if sampler is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    sampler = self._factory(trial_seed(self._seed, trial.number))
                self._active[trial._trial_id] = sampler
            return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        inner = self._inner(trial)
        try:
            inner.after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._active.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:
        """Nothing to do: Optuna calls this for ``n_jobs > 1`` so that threads do not share a stream, which
        per-trial seeds already guarantee (reseeding from OS entropy would break reproducibility)."""
