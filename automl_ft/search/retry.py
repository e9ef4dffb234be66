"""Retrying trials whose worker died or was interrupted, from their last per-epoch checkpoint.

Optuna's :class:`RetryHeartbeatStaleTrialCallback` re-queues a stale trial with the same parameters and records
the lineage in *system* attributes, which a running ``optuna.Trial`` cannot read. This subclass also records the
lineage in *user* attributes (``retry_history``, oldest first), which the objective reads to find the checkpoint
to resume from, and does not copy the failed attempt's user attributes (its failure reason would show on the
retry in the leaderboard).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback as _Base

MAX_RETRY = 3


class RetryFromCheckpoint(_Base):
    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self._max_retry is not None and self._max_retry < len(history):
            return
        system_attrs: dict[str, Any] = {**trial.system_attrs, "failed_trial": history[0],
                                        "retry_history": history}
        study.add_trial(optuna.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={"retry_history": history}, system_attrs=system_attrs,
            intermediate_values=trial.intermediate_values if self._inherit_intermediate_values else None,
        ))


def retry_callback() -> RetryFromCheckpoint:
    return RetryFromCheckpoint(max_retry=MAX_RETRY)
