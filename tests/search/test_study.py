"""Study plumbing: the export claim, the trial budget across workers, recovery of dead local workers' trials, and
workers that share a study without repeating each other."""

from __future__ import annotations

import json
import os
import socket

import optuna
import pytest

from automl_ft.search.storage import make_storage
from automl_ft.search.study import StudyBudget, claim_abandoned, claim_export, recover_interrupted, worker_identity
from automl_ft.tasks import get_task


def classifier(k: int):
    """A fitted single-label task over k classes (what sizes the head a space samples for)."""
    return get_task("classification").fit([f"c{i}" for i in range(k)], list(range(k)))

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


# ------------------------------------------------------------------------ workers do not repeat each other ----

WORKER = r"""
import json, sys, time
from pathlib import Path

import optuna

from automl_ft.data import TEXT
from automl_ft.search.space import load_space
from automl_ft.search.storage import make_storage
from automl_ft.search.study import make_sampler, open_study
from automl_ft.tasks import get_task

optuna.logging.set_verbosity(optuna.logging.ERROR)
url, name, seed, n_trials, ready, me = sys.argv[1:]
space = load_space(None, TEXT)
storage = make_storage(url)
study = open_study(storage, name, make_sampler(space, 6, int(seed)), optuna.pruners.NopPruner(), url)
Path(ready, me).touch()
end = time.time() + 60
while len(list(Path(ready).iterdir())) < 2 and time.time() < end:  # start together, as two `tune` commands do
    time.sleep(0.05)


def objective(trial):
    space.suggest(trial, "text-classification", get_task("classification").fit(list("abcd"), [0, 1, 2, 3]),
                  seed=0)
    trial.set_user_attr("worker", me)
    time.sleep(0.3)  # long enough that the other worker starts trials meanwhile
    return float(sum(hash(json.dumps(v)) % 1000 for v in trial.params.values())) / 1e4


study.optimize(objective, n_trials=int(n_trials))
"""


def test_two_workers_with_the_same_seed_do_not_repeat_each_other(tmp_path):
    """Two processes on one SQLite study, both --seed 0 (a PostgreSQL study got trials 1 and 2 identical: each
    worker's sampler drew the same start-up configuration from the same seed)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=make_storage(url), study_name="w", direction="maximize")
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, "w", "0", "3", str(ready), f"w{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    trials = optuna.load_study(study_name="w", storage=url).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6, [t.state.name for t in trials]
    assert {t.user_attrs["worker"] for t in complete} == {"w0", "w1"}, "one worker took every trial"
    seen: dict[str, int] = {}
    for t in complete:
        key = json.dumps(t.params, sort_keys=True)
        assert key not in seen, f"trials {seen[key]} and {t.number} share parameters {t.params}"
        seen[key] = t.number


def _run(study: optuna.Study, space, n: int) -> None:
    def objective(trial):
        space.suggest(trial, "text-classification", classifier(4), seed=0)
        return float(trial.params.get("weight_decay", 0.0)) + trial.number * 1e-3

    study.optimize(objective, n_trials=n)


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_a_single_worker_is_reproducible_and_any_worker_samples_trial_n_alike(tmp_path, kind):
    """Same seed, same trials; another seed, other trials; and a study whose trials alternate between two workers'
    samplers (same seed) gets the trials a single worker would have sampled: trial N's draw depends on the seed and
    N, not on who runs it."""
    from automl_ft.data import TEXT
    from automl_ft.search.space import load_space
    from automl_ft.search.study import make_sampler

    space = load_space(None, TEXT)
    space.sampler = {**space.sampler, "type": kind}

    def single(seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(space, 6, seed))
        _run(study, space, 6)
        return [t.params for t in study.trials]

    first = single(7)
    assert single(7) == first
    assert single(8) != first
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 6

    storage = make_storage(f"sqlite:///{tmp_path / 'alt.db'}")
    workers = [optuna.create_study(storage=storage, study_name="alt", direction="maximize",
                                   sampler=make_sampler(space, 6, 7), load_if_exists=True) for _ in range(2)]
    for n in range(6):
        _run(workers[n % 2], space, 1)
    assert [t.params for t in workers[0].trials] == first


def test_first_trial_is_queued_once_when_workers_start_together(study):
    """Both workers saw an empty study before either enqueued (simulated by a stale view for the second)."""
    from automl_ft.search.study import enqueue_first_trial

    s, storage = study
    other = optuna.load_study(study_name="s", storage=storage)
    other.get_trials = lambda *a, **k: []  # what the second worker read before the first one's enqueue landed
    params = {"x": 0.5}
    assert enqueue_first_trial(storage, s, params) is True
    assert enqueue_first_trial(storage, other, params) is False
    assert enqueue_first_trial(storage, s, params) is False  # a resumed study: already there
    waiting = [t for t in s.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs == {"origin": "first_trial"}


def test_an_interrupted_trial_is_retried_once_when_workers_recover_together(study):
    s, storage = study
    trial = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); the next run resumes it")
    s.tell(trial, state=optuna.trial.TrialState.FAIL)
    other = optuna.load_study(study_name="s", storage=storage)
    before = other.get_trials(deepcopy=True)
    other.get_trials = lambda *a, **k: before  # the second worker read the trials before the first one's retry
    assert recover_interrupted(s, storage) == [trial.number]
    assert recover_interrupted(other, storage) == []
    assert [t.state.name for t in s.trials].count("WAITING") == 1
