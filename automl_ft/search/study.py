"""Creating, resuming and reading an Optuna study, through Optuna's own samplers, pruners and callbacks."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from automl_ft.errors import StorageError

from .retry import retry_callback
from .space import SearchSpace
from .storage import redact_text

if TYPE_CHECKING:
    import optuna

DONE_STATES_NAMES = ("COMPLETE", "PRUNED")


def make_sampler(space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped for the conditional LoRA/full branches, constant liar for parallel workers), or
    random search, re-seeded for every trial from ``(seed, trial number)`` (see samplers.py): workers sharing a
    study with the same ``--seed`` do not repeat each other, and a single worker's run is reproducible.

    ``n_startup_trials: auto`` uses a third of the budget (2..10) for random exploration: TPE's default of 10
    would make every study of 6 trials a random search. Under ``--max-latency-ms`` the objective sets a trial
    constraint (``trial.set_constraint``), from which TPE learns which regions meet the limit.
    """
    import optuna

    from .samplers import TrialSeededSampler

    cfg = space.sampler
    seed = seed + int(cfg.get("seed_offset", 0))
    kind = cfg.get("type", "tpe")
    if kind == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    startup = cfg.get("n_startup_trials", "auto")
    if startup == "auto":
        startup = min(10, max(2, n_trials // 3))
    multivariate, constant_liar = bool(cfg.get("multivariate", True)), bool(cfg.get("constant_liar", True))
    return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(
        seed=s, n_startup_trials=int(startup), multivariate=multivariate, group=True, constant_liar=constant_liar,
    ), seed)


def make_pruner(space: SearchSpace, multi_objective: bool = False, baseline: float | None = None,
                direction: str = "maximize", cv: Any = None) -> optuna.pruners.BasePruner:
    """Hyperband (default), successive halving or median pruning on the per-epoch primary validation metric, plus
    pruning of trials no better than the task's trivial ``baseline`` (see pruners.py).

    A cross-validated study (``cv``, a crossval.CVPlan) reports folds instead of epochs: its pruner acts only once
    a trial has been through one whole k-fold pass (every example validated once). On its first fold alone, 5 of
    16 SMS messages, a SetFit trial at 83 % was pruned against first_trial's 100 % there, though their 9-fold means
    were to be compared (bench_small.py, 2026-12-04).

    Multi-objective studies get none: Optuna cannot prune them (``trial.report`` is single-objective).
    """
    from .pruners import BaselinePruner

    inner = _rank_pruner(space, multi_objective, cv)
    if baseline is None or multi_objective or space.pruner.get("type") == "none":  # "none" means no pruning at all
        return inner
    return BaselinePruner(inner, baseline, direction=direction, **({"min_epochs": cv.folds} if cv else {}))


def _rank_pruner(space: SearchSpace, multi_objective: bool, cv: Any = None) -> optuna.pruners.BasePruner:
    import optuna

    cfg = space.pruner
    kind = "none" if multi_objective else cfg.get("type", "hyperband")
    min_resource = int(cfg.get("min_resource", 1))
    max_resource = max(space.max_epochs, 2)
    warmup = int(cfg.get("n_warmup_steps", 1))
    if cv is not None:  # steps are folds
        min_resource, warmup = max(min_resource, cv.folds), max(warmup, cv.folds)
        max_resource = max(cv.fits, min_resource + 1)
    factor = int(cfg.get("reduction_factor", 3))
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                              reduction_factor=factor)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=factor)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(cfg.get("n_startup_trials", 2)),
                                           n_warmup_steps=warmup)
    return optuna.pruners.NopPruner()


def open_study(storage: Any, name: str, sampler: Any, pruner: Any, url: str,
               directions: tuple[str, ...] = ("maximize",)) -> optuna.Study:
    """Create the study or load it (``load_if_exists``): re-running a command resumes it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                   directions=list(directions), load_if_exists=True)
    except (SQLAlchemyError, OSError) as e:
        raise StorageError(f"cannot open study {name!r}: {redact_text(str(e).splitlines()[0][:200], url)}") from None
    except ValueError as e:  # e.g. an existing multi-objective study under that name
        raise StorageError(f"study {name!r} exists with another setup ({e}); pass another --study") from None


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host, pid and the process start time (pids are reused, start times are not)."""
    started = None
    try:
        import psutil

        started = psutil.Process(os.getpid()).create_time()
    except Exception:
        pass
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def _process_alive(pid: int, started: float | None) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def recover_interrupted(study: optuna.Study, storage: Any) -> list[int]:
    """Fail and retry the trials this machine left behind, without waiting for the heartbeat grace period.

    - RUNNING trials whose worker was on this host and is dead (kill -9, power loss): marked FAIL, then retried.
    - FAIL trials that were interrupted (Ctrl-C, or the above) and have no retry yet: retried.

    A retry is a new WAITING trial with the same parameters (Optuna's retry callback), which resumes from the
    failed trial's last per-epoch checkpoint. Returns the numbers of the trials retried.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried_already = {n for t in trials for n in t.user_attrs.get("retry_history", [])[-1:]}
    retry = retry_callback()
    out: list[int] = []
    for t in trials:
        worker = t.user_attrs.get("worker") or {}
        if t.state == TrialState.RUNNING and worker.get("host") == host and \
                not _process_alive(int(worker.get("pid", -1)), worker.get("started")):
            try:
                storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker died (process gone)")
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except Exception:  # another worker got there first
                continue
            t = storage.get_trial(t._trial_id)
        elif not (t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith(
                ("interrupted", "worker died"))):
            continue
        # Two workers on this host starting together both see the FAIL trial without a retry: the claim makes
        # one of them queue it (two retries would train the same configuration twice).
        if t.number in retried_already or not claim(storage, study, f"retry:{t.number}", worker_identity()):
            continue
        retry(study, t)
        retried_already.add(t.number)
        out.append(t.number)
    return out


def count_done(study: optuna.Study) -> int:
    """Trials that count toward ``--trials``: complete or pruned (failed ones are retried or reported)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def score_of(t: optuna.trial.FrozenTrial) -> float | None:
    """The primary validation metric: the value, or the first of the values (metric, latency) of a
    multi-objective trial."""
    return t.values[0] if t.values else None


def best_trial(study: optuna.Study, max_latency_ms: float | None = None) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the best primary metric (under ``max_latency_ms`` if given); ties: lower validation
    loss, earlier."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if max_latency_ms is not None:
        done = [t for t in done if t.user_attrs.get("latency_ms", float("inf")) <= max_latency_ms]
    if not done:
        return None
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: (sign * score_of(t), t.user_attrs.get("val_loss", float("inf")), t.number))


def wait_for_running(study: optuna.Study, timeout: float) -> None:
    """Wait (bounded) for trials other workers are still running, so the exporter sees the final leaderboard."""
    from optuna.trial import TrialState

    end = time.time() + timeout
    while time.time() < end and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(2.0)


class StudyBudget:
    """Optuna callback: stop this worker once the study's total (``--trials``) is reached or taken.

    Counts complete and pruned trials plus trials other workers are running, so parallel workers do not start
    trials beyond the total (``MaxTrialsCallback`` counts only finished ones: with W workers it overshoots by up to
    W - 1).
    """

    def __init__(self, n_trials: int):
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        taken = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                             TrialState.RUNNING)))
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if taken >= self.n_trials and not waiting:  # queued retries still run: they replace failed trials
            study.stop()


def claim_export(storage: Any, study: optuna.Study, trial_number: int, worker: dict[str, Any]) -> bool:
    """Atomically claim the export of ``trial_number``: exactly one worker gets True (see :func:`claim`)."""
    return claim(storage, study, f"export:{trial_number}", worker)


def claim(storage: Any, study: optuna.Study, key: str, worker: dict[str, Any]) -> bool:
    """Atomically claim ``key`` (an export, a retry, the first trial) for ``worker``: exactly one caller gets True.

    A study user attribute ``key`` is inserted in a transaction that holds the study's row lock
    (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so concurrent workers cannot both
    insert it; Optuna's unique (study, key) constraint backs this up.
    """
    import json

    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    backend = getattr(storage, "_backend", storage)  # _CachedStorage wraps the RDB storage
    session = backend.scoped_session()
    try:
        study_id = study._study_id
        session.query(models.StudyModel).filter(models.StudyModel.study_id == study_id).with_for_update().one()
        existing = session.query(models.StudyUserAttributeModel).filter(
            models.StudyUserAttributeModel.study_id == study_id, models.StudyUserAttributeModel.key == key
        ).one_or_none()
        if existing is not None:
            session.commit()
            return False
        session.add(models.StudyUserAttributeModel(study_id=study_id, key=key, value_json=json.dumps(worker)))
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def enqueue_first_trial(storage: Any, study: optuna.Study, params: dict[str, Any] | None, *,
                        probe: bool = False, then: list[dict[str, Any]] | None = None) -> bool:
    """Queue the space's known-good ``first_trial`` in a new study, once however many workers start together;
    with ``probe``, the frozen-feature probe before it (user attribute ``origin: probe``, no parameters); the
    ``then`` configurations after it (``origin: queued``).

    Checking that the study is empty and then enqueueing (even with ``skip_if_exists``) is a race: two workers
    started together both see no trials and both enqueue, so the study trains the same configuration twice.
    The claim ``first_trial`` makes the enqueue exclusive. Returns whether this call queued it.
    """
    if not (params or probe) or study.get_trials(deepcopy=False):
        return False
    if not claim(storage, study, "first_trial", worker_identity()):
        return False
    if probe:
        study.enqueue_trial({}, user_attrs={"origin": "probe"})
    if params:
        study.enqueue_trial(params, user_attrs={"origin": "first_trial"})
    for more in then or []:
        study.enqueue_trial(more, user_attrs={"origin": "queued"})
    return True


def claim_abandoned(study: optuna.Study, trial_number: int) -> bool:
    """Whether the export claim of ``trial_number`` belongs to a dead process on this host (an export that was
    interrupted or crashed): then this worker may export instead. Claims of other hosts are never taken over."""
    claim = study.user_attrs.get(f"export:{trial_number}") or {}
    return claim.get("host") == socket.gethostname() and claim.get("pid") != os.getpid() and \
        not _process_alive(int(claim.get("pid", -1)), claim.get("started"))
