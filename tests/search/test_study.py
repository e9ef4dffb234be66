"""Study plumbing: the export claim, the trial budget across workers, recovery of dead local workers' trials."""

from __future__ import annotations

import os
import socket

import optuna
import pytest

from automl_ft.search.storage import make_storage
from automl_ft.search.study import StudyBudget, claim_abandoned, claim_export, recover_interrupted, worker_identity

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def study(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    return optuna.create_study(storage=storage, study_name="s", direction="maximize"), storage


def test_export_claim_is_exclusive_and_dead_claims_are_taken_over(study):
    s, storage = study
    me = worker_identity()
    assert claim_export(storage, s, 3, me) is True
    assert claim_export(storage, s, 3, {**me, "pid": 1}) is False  # the second claimant loses
    assert claim_export(storage, s, 4, me) is True  # a new best trial gets its own claim
    assert not claim_abandoned(s, 3)  # this process is alive: nobody takes over
    assert claim_export(storage, s, 5, {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 0.0})
    assert claim_abandoned(s, 5)  # its process is gone: the export may be redone here
    assert claim_export(storage, s, 6, {"host": "another-machine", "pid": 2**22 + 12345, "started": 0.0})
    assert not claim_abandoned(s, 6)  # never taken over across machines


def test_budget_counts_running_trials_of_other_workers(study):
    s, _ = study
    stops = []
    s.stop = lambda: stops.append(True)  # Study.stop only works inside optimize; record the call instead
    budget = StudyBudget(3)
    s.tell(s.ask(), 0.5)
    mine = s.ask()
    s.tell(mine, 0.6)
    budget(s, s.trials[-1])
    assert stops == []  # 2 of 3 taken: go on
    s.ask()  # another worker starts the 3rd
    budget(s, s.trials[-1])
    assert stops == [True]  # 2 finished + 1 running = the total: do not start a 4th


def test_dead_local_worker_trials_are_failed_and_retried(study):
    s, storage = study
    trial = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 4321, "started": 0.0})
    alive = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("worker", worker_identity())
    interrupted = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    interrupted.set_user_attr("fail_reason", "interrupted (Ctrl-C); the next run resumes it")
    s.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    assert sorted(recover_interrupted(s, storage)) == [trial.number, interrupted.number]
    states = {t.number: t.state.name for t in s.trials}
    assert states[trial.number] == "FAIL" and states[alive.number] == "RUNNING"
    retries = [t for t in s.trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_history"][-1] for t in retries) == [trial.number, interrupted.number]
    assert all(t.params == s.trials[t.user_attrs["retry_history"][-1]].params for t in retries)
    assert recover_interrupted(s, storage) == []  # retried once, not again
    assert os.getpid() == alive.user_attrs["worker"]["pid"]
