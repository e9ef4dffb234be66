"""``automl-ft tune`` and ``automl_ft.tune()``: labeled data in, a searched, tested and exported model out.

Steps: validate everything the user gave (run folder, data, search space, storage) before writing anything;
record the study identity in RUN_DIR; open or resume the Optuna study; retry trials a dead or interrupted worker
left behind; run the remaining trials with live progress; evaluate the best trial once on the test split and
export it to ONNX with its model card.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl_ft.console import Say, printer, quiet_libraries
from automl_ft.data.split import TEST_FRACTION
from automl_ft.errors import SearchFailedError, UsageError
from automl_ft.rundir import RunDir, format_command, make_dir, write_json


@dataclass
class TuneOptions:
    data: str | None
    out: str
    task: str = "auto"
    text_column: str | None = None
    label_column: str | None = None
    image_column: str | None = None
    label_sep: str = "|"
    space: str | None = None
    trials: int = 8
    timeout: float | None = None
    storage: str | None = None
    study: str | None = None
    device: str = "auto"
    seed: int = 0
    backbones: list[str] | None = None
    trust_remote_code: bool = False
    artifacts: str | None = None
    objective: str = "accuracy"
    max_latency_ms: float | None = None
    latency_threads: int | None = None
    int8: bool = False
    cv: str = "auto"  # auto: cross-validate trials on small data (search/crossval.py); off: the val split
    # of the labelled examples held out as the test split when the data gives none; 0: none (a benchmark or a user
    # with a test set of their own: every example trains the model, the card reports the CV or val estimate)
    test_fraction: float = TEST_FRACTION
    prefix_cache: bool = True  # text: frozen layers computed once per text (prefix_cache.py)
    live: bool | None = None
    argv: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout:g}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.study):
            raise UsageError(f"--study {self.study!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        if self.cv not in ("auto", "off"):
            raise UsageError(f"--cv {self.cv!r}: use auto or off")
        if self.test_fraction is None:  # the API's test_fraction=None: the default
            self.test_fraction = TEST_FRACTION
        if not 0.0 <= self.test_fraction <= 0.5:
            raise UsageError(f"--test-fraction must be between 0 and 0.5, got {self.test_fraction:g}; 0 holds no "
                             "test split out")
        objectives = tuple(o.strip() for o in self.objective.split(",") if o.strip())
        if objectives not in (("accuracy",), ("accuracy", "latency")):
            raise UsageError(f"--objective {self.objective!r}: use accuracy or accuracy,latency")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise UsageError(f"--max-latency-ms must be positive, got {self.max_latency_ms:g}")
        if self.latency_threads is not None and self.latency_threads < 1:
            raise UsageError(f"--latency-threads must be at least 1, got {self.latency_threads}")

    @property
    def multi_objective(self) -> bool:
        return "latency" in self.objective


def resolve_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def default_study_name(data_source: str, fingerprint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data_source).stem or "data").strip("-")[:40] or "data"
    return f"{stem}-{fingerprint[:8]}"


def check_demo_options(opts: TuneOptions, run: RunDir, existing: dict[str, Any] | None) -> None:
    """The demo (no DATA) is an image folder written into RUN_DIR/demo-data: refuse what cannot apply to it."""
    from automl_ft.data import IMAGE
    from automl_ft.data.demo import is_demo_folder

    if opts.text_column or opts.label_column or opts.image_column:
        raise UsageError("--text-column/--label-column/--image-column apply to tables only; the demo (no DATA) is an "
                         "image folder")
    if opts.task not in ("auto", IMAGE):
        raise UsageError(f"--task {opts.task}: the demo (no DATA) is {IMAGE}; pass DATA for another task")
    if existing is not None and run.resolve_path(str(existing.get("data_source"))) != str(run.demo_data):
        raise UsageError(f"--out {run.path} holds another study (data {existing.get('data_source')!r}); pass a "
                         "new --out for the demo")
    if run.demo_data.exists() and not is_demo_folder(run.demo_data):
        raise UsageError(f"{run.demo_data} exists but is not a complete demo data set; move it away and run again")


def check_data_placement(run: RunDir, data: Path) -> None:
    """A run folder inside its own DATA folder turns its outputs into data (report PNGs became a new image class);
    DATA inside the run folder is data that tune, export or a later cleanup may overwrite. Both are refused."""
    from automl_ft.rundir import is_inside

    data = data.expanduser()
    if not data.exists():
        return  # load_dataset says so, with the fix
    data = data.resolve()
    if data.is_dir() and is_inside(run.path, data):
        raise UsageError(f"--out {run.path} is inside the data folder {data}; the run's files would become data; "
                         "pass an --out outside it")
    if is_inside(data, run.path):
        raise UsageError(f"DATA {data} is inside the run folder --out {run.path}; move the data out of it or pass "
                         "another --out")


@dataclass
class SearchOutcome:
    """What :func:`run_search` left: the run folder, its study, the best trial and, when this process exported it (or
    found it exported), metrics.json's content; ``metrics`` is None when another worker exports it."""

    run: RunDir
    study: Any
    best: Any
    metrics: dict[str, Any] | None
    int8: dict[str, Any] | None = None


def run_tune(opts: TuneOptions) -> int:
    """``automl-ft tune``: :func:`run_search` with its messages printed to stderr; the exit code (errors raise)."""
    run_search(opts, printer())
    return 0


def run_search(opts: TuneOptions, say: Say, *, quiet: bool = False) -> SearchOutcome:
    """Validate, search, test and export (see the module docstring); every message goes to ``say``.

    Args:
        quiet: no live progress view or leaderboard either (the Python API without ``progress=True``).

    Raises:
        AutomlError: a bad option, data, space or storage (nothing written); :class:`SearchFailedError` when no
            trial gives a model to export. KeyboardInterrupt after saying how to resume.
    """
    import optuna

    from automl_ft.data import IMAGE, load_dataset
    from automl_ft.data.demo import DEMO_NAME, write_digits
    from automl_ft.metrics import format_metric
    from automl_ft.runs import export_best, exported_metrics
    from automl_ft.search.artifacts import TrialArtifacts, check_artifacts_option, make_artifact_store
    from automl_ft.search.crossval import plan_for
    from automl_ft.search.mirror import check_mirroring
    from automl_ft.search.mirror import describe as describe_mirroring
    from automl_ft.search.objective import Objective, TrialFailed
    from automl_ft.search.progress import SearchProgress
    from automl_ft.search.space import load_space
    from automl_ft.search.storage import check_storage_url, make_storage, redact_url
    from automl_ft.search.study import (
        StudyBudget,
        best_trial,
        claim_abandoned,
        claim_export,
        count_done,
        enqueue_first_trial,
        make_pruner,
        make_sampler,
        open_study,
        recover_interrupted,
        worker_identity,
    )
    from automl_ft.tasks import FULL_TASKS, get_task
    from automl_ft.train import Caches

    started = time.time()
    quiet_libraries()
    run = RunDir(opts.out)
    demo = opts.data is None

    # 1. Every argument is checked before anything is written: a refused command leaves no file behind (a failed
    # demo used to leave demo-data/ and then refuse the corrected command as "not a run folder").
    existing = run.check_usable()
    # What this command may undo if it fails before run.json is claimed: only entries it created itself.
    before = None if existing is not None else set(run.path.iterdir()) if run.path.is_dir() else set()
    made = not run.path.exists()
    if demo:
        check_demo_options(opts, run, existing)
    else:
        check_data_placement(run, Path(opts.data))
    check_artifacts_option(opts.artifacts)
    # The run's own database is recorded as RUN_DIR/study.db (also when given as --storage): the folder can move.
    recorded_storage = run.normalize_storage(redact_url(opts.storage)) if opts.storage else run.default_storage
    shown_storage = redact_url(opts.storage) if opts.storage else str(run.database)
    url = opts.storage or run.storage_url(run.default_storage)
    if opts.storage or run.path.is_dir():  # no connection and nothing written: in-memory, missing folder, read-only
        check_storage_url(url, name=None if opts.storage else f"the run's database {run.database}")
    storage = None
    if opts.storage is not None and not url.lower().startswith("sqlite"):
        storage = make_storage(url)  # a database server is reached now; nothing is written on this machine
    device = resolve_device(opts.device)
    space_file = opts.space
    if demo:
        from automl_ft.search.space import default_space_path

        space_file = space_file or str(default_space_path("digits-demo"))
        # The demo's task is known before its data exists: check the space before writing 1,797 images.
        space = load_space(space_file, IMAGE, backbones=opts.backbones, trust_remote_code=opts.trust_remote_code)
        say(f"No DATA given: running the embedded demo ({DEMO_NAME}: 1,797 8x8 digit images, 10 classes, "
            "EfficientNet-Lite0).\nFor your own data: automl-ft tune PATH/TO/IMAGE_FOLDER_OR_TABLE --out RUN_DIR "
            "(an image folder with one sub-folder per class, or a CSV/TSV/JSONL/Parquet file with text and label "
            "columns).")

    def load(seed: int):
        return load_dataset(run.demo_data if demo else Path(opts.data), task=opts.task,
                            text_column=opts.text_column, label_column=opts.label_column,
                            image_column=opts.image_column, label_sep=opts.label_sep, seed=seed,
                            test_fraction=opts.test_fraction)

    try:
        if demo:
            make_dir(run.path, "--out")
            write_digits(run.demo_data)  # the only write before the checks below, undone if they fail
        data = load(opts.seed)
        if not demo:
            space = load_space(space_file, data.task, backbones=opts.backbones,
                               trust_remote_code=opts.trust_remote_code)
        cv = plan_for(data, opts.seed) if opts.cv == "auto" else None
        space.limit_to_data(len(data.train) + len(data.val), data.fitted_task().one_class_per_example)
        study_name = opts.study or default_study_name(data.source if not demo else DEMO_NAME, data.fingerprint) + (
            "-latency" if opts.multi_objective else "")
        identity = {"task": data.task, "data_fingerprint": data.fingerprint, "study": study_name,
                    "storage": recorded_storage, "data_source": run.record_path(data.source),
                    "space_file": space.file, "space_fingerprint": space.fingerprint(), "seed": opts.seed,
                    "artifacts": opts.artifacts, "objective": opts.objective, "max_latency_ms": opts.max_latency_ms,
                    "cv": None if cv is None else cv.to_dict(),
                    "data_options": {"task": opts.task, "text_column": opts.text_column,
                                     "label_column": opts.label_column, "image_column": opts.image_column,
                                     "label_sep": opts.label_sep, "seed": opts.seed,
                                     # only when set: runs recorded before the option resume as they were
                                     **({} if opts.test_fraction == TEST_FRACTION else
                                        {"test_fraction": opts.test_fraction})}}
        run.check_identity(identity, existing, fingerprint_with_seed=lambda seed: load(seed).fingerprint)
        if existing is not None and run.best.is_dir() and any(run.best.iterdir()) and \
                not run.owns_export(existing, run.best):
            raise UsageError(f"{run.best} holds files that are not an export of this run (tune exports the best model "
                             "there); move them away and run again")

        # 2. Everything checked: write. The storage and the artifact store open before run.json is claimed, so a
        # failure there leaves no run record behind (and a run folder this command created is removed).
        make_dir(run.path, "--out")
        if storage is None:
            storage = make_storage(url)
        store, store_desc, shared = make_artifact_store(opts.artifacts, run.path)
        record = run.claim(identity, format_command(opts.argv), existing)
    except BaseException:
        if before is not None and not run.run_file.exists():
            _undo(run.path, before, made)
        raise
    artifacts = TrialArtifacts(store, storage, shared=shared)
    if not url.startswith("sqlite") and not shared:
        say(f"Note: trial checkpoints stay in {store_desc} on this machine; pass --artifacts /shared/path (or "
            "s3://bucket/prefix) so workers on other machines can resume and export each other's trials.")
    if cv is not None:
        data.summary["validation"] = cv.describe()
    write_json(run.data_summary, data.summary)

    task = data.fitted_task()
    sampler = make_sampler(space, opts.trials, opts.seed)
    # cross-validated trials are scored on every labelled example in turn: so is their trivial baseline
    everything = data.train.labels + data.val.labels
    pruner = make_pruner(space, multi_objective=opts.multi_objective,
                         baseline=task.baseline(data.train.labels, data.val.labels) if cv is None else
                         task.baseline(everything, everything), direction=task.direction, cv=cv)
    directions = (task.direction, "minimize") if opts.multi_objective else (task.direction,)
    study = open_study(storage, study_name, sampler, pruner, url, directions)
    if not study.metric_names:
        study.set_metric_names([f"val_{task.primary_metric}"] + (["latency_ms"] if opts.multi_objective else []))
    retried = recover_interrupted(study, storage)
    if retried:
        say(f"Resuming: retrying interrupted trial(s) {', '.join(map(str, retried))} from their last finished epoch.")
    caches = Caches()
    caches.prefix.enabled = opts.prefix_cache
    if count_done(study) < opts.trials:
        # before the first trial is queued: its augmentation may be one that mirrors
        mirroring = check_mirroring(space, data, cv, device=device, caches=caches, seed=opts.seed)
        if mirroring is not None:
            if not mirroring["kept"]:
                space.without_mirroring()
            data.summary["mirroring"] = {**mirroring, "note": describe_mirroring(mirroring)}
            write_json(run.data_summary, data.summary)
    first = space.first_trial_params()
    # the probe first (seconds, and the floor of the search), then the known-good fine-tune when the budget has room
    probe = space.probe_config(data.task, task, opts.seed) is not None
    # on small data, SetFit next: the method made for a handful of examples, tried even in a 3-trial study
    setfit = space.setfit_trial_params() if cv is not None and opts.trials > 2 else None
    enqueue_first_trial(storage, study, first if not probe or opts.trials > 1 else None, probe=probe,
                        then=[setfit] if setfit else [])

    done = count_done(study)
    remaining = max(0, opts.trials - done)
    classes = f", {data.num_classes} classes" if data.classes else ""
    say(f"Study {study_name!r} ({shown_storage}): {done} of {opts.trials} trials done, {remaining} to run on "
        f"{device.type}; data {data.task}{classes}, {len(data.train)}/{len(data.val)}/{len(data.test)} "
        f"train/val/test; primary metric: validation {task.primary_metric} ({task.direction}).")
    if cv is not None:
        say(f"Small data: trials are scored by {cv.describe()}; the best is refit on all of them"
            + ("" if len(data.test) else "; no test split (" + ("--test-fraction 0" if opts.test_fraction <= 0 else
                                                                 "too few examples to hold one out")
               + "), so the card reports the cross-validated estimate")
            + ". --cv off uses the validation split instead.")
    if opts.task == "auto" and data.summary.get("task_reason"):
        # a layout of masks is read by the segmentation task only: there is nothing to switch to
        others = [] if task.spatial_targets else [
            t for t in FULL_TASKS if t.startswith(f"{data.modality}-") and t != data.task
            and not get_task(t.partition("-")[2]).spatial_targets]
        say(f"Task {data.task} ({data.summary['task_reason']})" + (
            f"; to override, pass --task {' or '.join(others)}." if others else "."))
    for warning in data.summary.get("warnings", []):
        say(f"Warning: {warning}.")
    if "mirroring" in data.summary:
        say(data.summary["mirroring"]["note"])
    deadline = started + opts.timeout if opts.timeout else None
    timed_out = False
    if remaining:
        progress = SearchProgress(study, opts.trials, live=False if quiet else opts.live, quiet=quiet,
                                  title=f"automl-ft tune {run.path.name}")
        objective = Objective(space, data, trial_dir=run.trial_dir, device=device, seed=opts.seed,
                              progress=progress, caches=caches, deadline=deadline, artifacts=artifacts,
                              multi_objective=opts.multi_objective,
                              max_latency_ms=opts.max_latency_ms, latency_threads=opts.latency_threads, cv=cv)
        stop_at_total = StudyBudget(opts.trials)
        try:
            with progress:
                n = remaining
                while n > 0:
                    study.optimize(objective, n_trials=n,
                                   timeout=None if deadline is None else max(1.0, deadline - time.time()),
                                   callbacks=[stop_at_total, progress], catch=(TrialFailed,), gc_after_trial=True)
                    if deadline is not None and time.time() >= deadline:
                        break
                    # Trials still RUNNING elsewhere may belong to a dead worker: wait for their heartbeats to go
                    # stale, so their retries run here and the study completes.
                    n = adopt_stale_trials(study, opts.trials, say)
        except KeyboardInterrupt:
            say(f"\nInterrupted: {count_done(study)} of {opts.trials} trials done; the interrupted trial is recorded "
                "and resumes from its last finished epoch when you run the same command again:\n  "
                f"{record['commands'][-1]}")
            raise
        timed_out = deadline is not None and time.time() >= deadline
        if not progress.live_enabled:
            progress.print_leaderboard()

    best = best_trial(study, opts.max_latency_ms)
    if best is None:
        if opts.max_latency_ms is not None and best_trial(study) is not None:
            timed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("latency_ms") is not None]
            fastest = min(timed, key=lambda t: t.user_attrs["latency_ms"])
            raise SearchFailedError(
                f"No trial meets --max-latency-ms {opts.max_latency_ms:g}: the fastest, trial {fastest.number}, takes "
                f"{fastest.user_attrs['latency_ms']:.2f} ms. Raise the limit, or search smaller backbones, input "
                "sizes or sequence lengths; nothing was exported.")
        reasons = sorted({str(why).splitlines()[0] for t in study.get_trials(deepcopy=False)
                          if (why := t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason"))})
        raise SearchFailedError(
            "No trial completed (" + ("; ".join(reasons[:3]) if reasons else "see the leaderboard") + "); fix the "
            "cause and run the same command again.")
    done = count_done(study)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if done < opts.trials and not timed_out and running:
        say(f"The study has {done} of {opts.trials} trials and {len(running)} running on other workers; the worker "
            "that completes it exports the best model (or run automl-ft export later).")
        return SearchOutcome(run, study, best, None)
    summary = exported_metrics(run.best, study.study_name, best.number)
    q = None
    if summary is not None:
        say(f"The best trial ({best.number}) is already exported in {run.best}.")
    elif claim_export(storage, study, best.number, worker_identity()) or claim_abandoned(study, best.number):
        local = run.trial_dir(best.number)
        if not (local / "model.safetensors").is_file() and not artifacts.fetch_result(best, local):
            raise SearchFailedError(f"Trial {best.number}'s checkpoint is neither here nor in the artifact store "
                                    f"({store_desc}); run automl-ft export on the machine that trained it.")
        summary = export_best(run, study, best, data, caches=caches, record=record, url=url, space=space,
                              started=started, say=say, device=device)
        if opts.int8 and not len(data.test):
            say("--int8 skipped: no test split to check the INT8 model's accuracy on.")
        elif opts.int8:
            from automl_ft.quantize import add_int8

            q = add_int8(run.best, data, say)
    else:
        claim = study.user_attrs.get(f"export:{best.number}", {})
        say(f"The best trial ({best.number}) was claimed for export by another worker ({claim.get('host')}, pid "
            f"{claim.get('pid')}); run 'automl-ft export {run.path}' to export it here too.")
        return SearchOutcome(run, study, best, None)
    test = summary["test"]
    latency = best.user_attrs.get("latency_ms")
    scored = best.user_attrs.get("cv")
    how = (f"cross-validated {task.primary_metric} {format_metric(task.primary_metric, scored['mean'])} "
           f"+- {format_metric(task.primary_metric, scored['std'])} over {len(scored['scores'])} folds"
           if scored else f"validation {task.primary_metric} {format_metric(task.primary_metric, best.values[0])}")
    tested = (f"test {task.describe(test)} on {test['num_examples']} held-out examples" if test else
              "no test split (every labelled example trained the refit)" if scored else
              "no test split (--test-fraction 0)")
    say(f"\nBest: trial {best.number}, {how}"
        + (f", {latency:.2f} ms per input (onnxruntime, batch 1)" if latency is not None else "") + f"; "
        f"{tested}.\nONNX check: max |logit diff| "
        f"{summary['onnx']['max_abs_logit_diff']:.2g}, prediction agreement "
        f"{100 * summary['onnx']['prediction_agreement']:.2f}%.\nModel: {run.best}  (card: {run.best / 'model_card.md'})"
        f"\nPredict: automl-ft predict {run.best} INPUT...\nTotal time: {(time.time() - started) / 60:.1f} min.")
    return SearchOutcome(run, study, best, summary, q)


def adopt_stale_trials(study: Any, n_trials: int, say) -> int:
    """Wait (at most a heartbeat grace period) while other workers' trials run; returns how many trials to run next.

    A worker that was killed leaves its trial RUNNING until its heartbeat is older than the grace period; then
    ``fail_stale_trials`` marks it failed and the retry callback queues it again (WAITING). A live worker's trial
    just keeps running, and this worker leaves the study to it once the grace period has passed.
    """
    import optuna
    from optuna.trial import TrialState

    from automl_ft.search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
    from automl_ft.search.study import count_done

    end = time.time() + GRACE_PERIOD + 2 * HEARTBEAT_INTERVAL
    announced = False
    while True:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if waiting:
            return waiting + max(0, n_trials - count_done(study) - running)
        if not running or time.time() >= end:
            return 0
        if not announced:
            say(f"{running} trial(s) still running on other workers; watching their heartbeats for up to "
                f"{end - time.time():.0f} s in case a worker died.")
            announced = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        time.sleep(min(HEARTBEAT_INTERVAL, max(0.5, end - time.time())))


def _undo(folder: Path, before: set[Path], made: bool) -> None:
    """Remove what a failed tune created in ``folder`` (the folder too, if it made it); nothing else is touched."""
    if not folder.is_dir():
        return
    for entry in set(folder.iterdir()) - before:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if made:
        try:
            folder.rmdir()
        except OSError:
            pass
