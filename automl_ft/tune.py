"""``automl-ft tune``: labeled data in, a searched, fine-tuned, tested and exported model out.

Steps: validate everything the user gave (run folder, data, search space, storage) before writing anything;
record the study identity in RUN_DIR; open or resume the Optuna study; retry trials a dead or interrupted worker
left behind; run the remaining trials with live progress; evaluate the best trial once on the test split and
export it to ONNX with its model card.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl_ft.errors import UsageError
from automl_ft.rundir import RunDir, format_command, write_json


@dataclass
class TuneOptions:
    data: str | None
    out: str
    task: str = "auto"
    text_column: str | None = None
    label_column: str | None = None
    space: str | None = None
    trials: int = 8
    timeout: float | None = None
    storage: str | None = None
    study: str | None = None
    device: str = "auto"
    seed: int = 0
    backbones: list[str] | None = None
    trust_remote_code: bool = False
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


def quiet_libraries() -> None:
    import optuna

    # Optuna logs every failed trial with a traceback at WARNING; ours records the reason in the leaderboard.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    logging.getLogger("timm").setLevel(logging.WARNING)


def run_tune(opts: TuneOptions) -> int:
    import optuna

    from automl_ft.data import load_dataset
    from automl_ft.data.demo import DEMO_NAME, write_digits
    from automl_ft.search.objective import Objective, TrialFailed
    from automl_ft.search.progress import SearchProgress
    from automl_ft.search.space import load_space
    from automl_ft.search.storage import default_storage_url, make_storage, redact_url
    from automl_ft.search.study import (best_trial, count_done, make_pruner, make_sampler, open_study,
                                        recover_interrupted)
    from automl_ft.train import Caches

    started = time.time()
    quiet_libraries()
    run = RunDir(opts.out)
    existing = run.check_usable()
    device = resolve_device(opts.device)
    say = _printer()

    if opts.data is None:
        say(f"No DATA given: running the embedded demo ({DEMO_NAME}: 1,797 8x8 digit images, 10 classes, "
            "EfficientNet-Lite0).\nFor your own data: automl-ft tune PATH/TO/IMAGE_FOLDER_OR_TABLE --out RUN_DIR "
            "(an image folder with one sub-folder per class, or a CSV/TSV/JSONL/Parquet file with text and label "
            "columns).")
        run.path.mkdir(parents=True, exist_ok=True)
        data_path = write_digits(run.path / "demo-data")
    else:
        data_path = Path(opts.data)
    data = load_dataset(data_path, task=opts.task, text_column=opts.text_column, label_column=opts.label_column,
                        seed=opts.seed)
    space = load_space(opts.space, data.task, backbones=opts.backbones)
    url = opts.storage or default_storage_url(run.path)
    study_name = opts.study or default_study_name(data.source if opts.data else DEMO_NAME, data.fingerprint)
    if opts.storage is not None:
        storage = make_storage(url)  # a user's URL is checked before anything is written
    identity = {"task": data.task, "data_fingerprint": data.fingerprint, "study": study_name,
                "storage": redact_url(url), "data_source": data.source, "space_file": space.file,
                "space_fingerprint": space.fingerprint(), "seed": opts.seed,
                "data_options": {"task": opts.task, "text_column": opts.text_column,
                                 "label_column": opts.label_column, "seed": opts.seed}}
    record = run.claim(identity, format_command(opts.argv), existing)
    if opts.storage is None:
        storage = make_storage(url)
    write_json(run.path / "data_summary.json", data.summary)

    sampler = make_sampler(space, opts.trials, opts.seed)
    pruner = make_pruner(space)
    study = open_study(storage, study_name, sampler, pruner, url)
    retried = recover_interrupted(study, storage)
    if retried:
        say(f"Resuming: retrying interrupted trial(s) {', '.join(map(str, retried))} from their last finished epoch.")
    first = space.first_trial_params()
    if first and not study.get_trials(deepcopy=False):
        study.enqueue_trial(first, user_attrs={"origin": "first_trial"}, skip_if_exists=True)

    done = count_done(study)
    remaining = max(0, opts.trials - done)
    say(f"Study {study_name!r} ({redact_url(url)}): {done} of {opts.trials} trials done, {remaining} to run on "
        f"{device.type}; data {data.task}, {data.num_classes} classes, "
        f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test.")
    deadline = started + opts.timeout if opts.timeout else None
    caches = Caches()
    timed_out = False
    if remaining:
        progress = SearchProgress(study, opts.trials, live=opts.live, title=f"automl-ft tune {run.path.name}")
        objective = Objective(space, data, trial_dir=run.trial_dir, device=device, seed=opts.seed,
                              progress=progress, caches=caches, deadline=deadline,
                              trust_remote_code=opts.trust_remote_code)
        stop_at_total = optuna.study.MaxTrialsCallback(
            opts.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
        try:
            with progress:
                study.optimize(objective, n_trials=remaining,
                               timeout=None if deadline is None else max(1.0, deadline - time.time()),
                               callbacks=[stop_at_total, progress], catch=(TrialFailed,), gc_after_trial=True)
        except KeyboardInterrupt:
            say(f"\nInterrupted: {count_done(study)} of {opts.trials} trials done; the interrupted trial is recorded "
                "and resumes from its last finished epoch when you run the same command again:\n  "
                f"{record['commands'][-1]}")
            return 130
        timed_out = deadline is not None and time.time() >= deadline
        if not progress.live_enabled:
            progress.print_leaderboard()

    best = best_trial(study)
    if best is None:
        say("No trial completed: see the failure reasons in the leaderboard above; fix them and run the same command "
            "again.")
        return 1
    done = count_done(study)
    if done < opts.trials and not timed_out and remaining == 0:
        say(f"The study has {done} of {opts.trials} trials; other workers are still running.")
    summary = _exported_metrics(run.best, study.study_name, best.number)
    if summary is None:
        summary = export_best(run, study, best, data, caches=caches, record=record, url=url, space=space,
                              started=started, say=say)
    else:
        say(f"The best trial ({best.number}) is already exported in {run.best}.")
    test = summary["test"]
    say(f"\nBest: trial {best.number}, validation accuracy {100 * best.value:.2f}%; test accuracy "
        f"{100 * test['accuracy']:.2f}% (macro F1 {100 * test['macro_f1']:.2f}%) on {test['num_examples']} held-out "
        f"examples.\nONNX check: max |logit diff| {summary['onnx']['max_abs_logit_diff']:.2g}, class agreement "
        f"{100 * summary['onnx']['prediction_agreement']:.2f}%.\nModel: {run.best}  (card: {run.best / 'model_card.md'})"
        f"\nPredict: automl-ft predict {run.best} INPUT...\nTotal time: {(time.time() - started) / 60:.1f} min.")
    return 0


def search_summary(study: Any, best: Any, url: str, space: Any, started: float | None) -> dict[str, Any]:
    from collections import Counter

    from automl_ft.search.storage import redact_url

    counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    sampler = type(study.sampler).__name__
    pruner = type(study.pruner).__name__
    return {
        "study": study.study_name,
        "storage": redact_url(url),
        "sampler": f"{sampler} ({', '.join(f'{k}={v}' for k, v in space.sampler.items())})" if space else sampler,
        "pruner": f"{pruner} ({', '.join(f'{k}={v}' for k, v in space.pruner.items())})" if space else pruner,
        "counts": dict(counts),
        "best_trial": best.number,
        "best_value": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "minutes": ((time.time() - started) / 60.0) if started else sum(
            (t.user_attrs.get("seconds") or 0) for t in study.get_trials(deepcopy=False)) / 60.0,
        "space_file": space.file if space else None,
    }


def export_best(run: RunDir, study: Any, best: Any, data: Any, *, caches: Any, record: dict[str, Any], url: str,
                space: Any, started: float | None, say, out_dir: Path | None = None) -> dict[str, Any]:
    """Export ``best`` into ``out_dir`` (default RUN_DIR/best) with its model card; returns metrics.json's content."""
    from automl_ft.card import write_model_card
    from automl_ft.export import export_trial
    from automl_ft.search.leaderboard import leaderboard, markdown_table

    out_dir = out_dir or run.best
    trial_dir = run.trial_dir(best.number)
    if not (trial_dir / "model.safetensors").is_file():
        raise UsageError(f"trial {best.number} has no checkpoint in {trial_dir}; run export on the machine that "
                         "trained it or with --artifacts")
    search = search_summary(study, best, url, space, started)
    say(f"Evaluating trial {best.number} on the test split and exporting to ONNX ...")

    def card(directory: Path, metrics: dict[str, Any]) -> None:
        write_model_card(directory, metrics=metrics, config=best.user_attrs.get("config", {}),
                         data_summary=data.summary, search=search, commands=record.get("commands", []),
                         leaderboard_md=markdown_table(leaderboard(study, limit=20)))

    return export_trial(trial_dir, out_dir, data, caches=caches, card_writer=card,
                        extra_metrics={"trial": best.number, "study": study.study_name,
                                       "val_accuracy": best.value})


def _exported_metrics(best_dir: Path, study_name: str, trial: int) -> dict[str, Any] | None:
    """metrics.json of an existing export of this very trial, or None (then it must be exported)."""
    import json

    try:
        metrics = json.loads((best_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("study") == study_name and metrics.get("trial") == trial and (best_dir / "model.onnx").is_file():
        return metrics
    return None


def _printer():
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def say(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True)  # logs keep whole lines: no wrapping at 80 columns

    return say
