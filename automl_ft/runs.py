"""Work on an existing run folder: open its study, reload its data, export a trial, build its report.

``automl-ft export``/``report``, ``automl_ft.tune`` and the Python API share these; they take a ``say`` callback
for their messages (see :mod:`automl_ft.console`) and never print.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_ft.console import Say, quiet_libraries, silent
from automl_ft.errors import UsageError
from automl_ft.rundir import (
    HF_DIR,
    METRICS_FILE,
    ONNX_FILE,
    RunDir,
    check_creatable,
    check_not_in_data,
    check_output_dir,
    format_command,
)


def open_run(run_dir: str | Path, storage: str | None) -> tuple[RunDir, dict[str, Any], Any, str]:
    """The run folder, its record, its study and the storage URL used."""
    import optuna

    from automl_ft.search.storage import make_storage, redact_url

    quiet_libraries()
    run = RunDir(run_dir)
    record = run.load()
    recorded = record.get("storage") or ""
    if storage and run.normalize_storage(redact_url(storage)) != recorded:
        raise UsageError(f"--storage {redact_url(storage)} is not this run's storage ({recorded})")
    if not storage and "***" in recorded:
        raise UsageError(f"{run.run_file} stores the storage URL without its password ({recorded}); pass --storage "
                         "URL")
    # RUN_DIR/study.db is this folder's own database, wherever the folder is now (a copy reads its copy).
    url = storage or run.storage_url(recorded)
    st = make_storage(url, heartbeat=False, must_exist=True)
    try:
        study = optuna.load_study(study_name=record["study"], storage=st)
    except KeyError:
        raise UsageError(f"study {record['study']!r} is not in {redact_url(url)}; pass the right --storage") from None
    return run, record, study, url


def load_run_data(record: dict[str, Any], run: RunDir | None = None):
    """Reload the run's data exactly as tune split it, and check it is still the same data."""
    from automl_ft.data import load_dataset
    from automl_ft.data.split import TEST_FRACTION

    source = run.resolve_path(record["data_source"]) if run is not None else record["data_source"]
    opts = record.get("data_options", {})
    data = load_dataset(source, task=opts.get("task", "auto"), text_column=opts.get("text_column"),
                        label_column=opts.get("label_column"), image_column=opts.get("image_column"),
                        label_sep=opts.get("label_sep", "|"), seed=opts.get("seed", 0),
                        test_fraction=opts.get("test_fraction", TEST_FRACTION))
    if data.fingerprint != record["data_fingerprint"]:
        raise UsageError(f"the data at {source} changed since the study ran (fingerprint "
                         f"{data.fingerprint} != {record['data_fingerprint']}); restore it to evaluate on its test split")
    return data


@dataclass
class Exported:
    """What :func:`export_run` wrote: the model folder, the trial, metrics.json's content, the INT8 result."""

    model_dir: Path
    trial: int
    metrics: dict[str, Any]
    int8: dict[str, Any] | None = None


def export_run(run_dir: str | Path, *, trial: int | None = None, out: str | Path | None = None,
               storage: str | None = None, int8: bool = False, argv: list[str] | None = None,
               format: str = "auto", say: Say = silent) -> Exported:
    """Evaluate a trial of a run on its test split and export it to ONNX with its card (default: the best trial
    into RUN_DIR/best, or RUN_DIR/trial-N).

    Raises:
        UsageError: no such run, trial or checkpoint; an --out that is not ours to write.
    """
    from optuna.trial import TrialState

    from automl_ft.search.study import best_trial

    if out:  # a path that cannot be a folder is refused before the study is even opened
        check_creatable(Path(out).expanduser().resolve(), "--out")
    run, record, study, url = open_run(run_dir, storage)
    if trial is None:
        chosen = best_trial(study, record.get("max_latency_ms"))
        if chosen is None:
            raise UsageError(f"{run.path}: no complete trial to export yet" + (
                f" under {record['max_latency_ms']:g} ms" if record.get("max_latency_ms") else "") + "; run tune first")
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches:
            raise UsageError(f"{run.path}: no trial {trial} (trials 0..{len(study.trials) - 1})")
        chosen = matches[0]
        if chosen.state != TrialState.COMPLETE:
            raise UsageError(f"trial {trial} is {chosen.state.name.lower()}, not complete; pick a complete trial")
    out_dir = Path(out).expanduser().resolve() if out else (run.best if trial is None else run.path / f"trial-{trial}")
    # Before minutes of evaluation: written only if new, empty or an earlier export of this run.
    check_not_in_data(out_dir, "--out", run.resolve_path(str(record.get("data_source") or "")))
    check_output_dir(out_dir, "--out", lambda d: run.owns_export(record, d))
    data = load_run_data(record, run)
    local = run.trial_dir(chosen.number)
    if not (local / "model.safetensors").is_file():  # trained by another worker: fetch it from the artifact store
        from automl_ft.search.artifacts import TrialArtifacts, make_artifact_store

        store, desc, shared = make_artifact_store(record.get("artifacts"), run.path)
        if not TrialArtifacts(store, study._storage, shared=shared).fetch_result(chosen, local):
            raise UsageError(f"trial {chosen.number} has no checkpoint here or in {desc}; export it where it ran")
    record = {**record, "commands": [*record.get("commands", []), format_command(argv or ["export", str(run_dir)])]}
    metrics = export_best(run, study, chosen, data, caches=None, record=record, url=url, space=None, started=None,
                          say=say, out_dir=out_dir)
    say(f"Exported trial {chosen.number} to {out_dir}: " + (
        f"test {data.fitted_task().describe(metrics['test'])}" if metrics["test"] else "no test split") + ", "
        f"ONNX agreement {100 * metrics['onnx']['prediction_agreement']:.2f}%.")
    if format == "hf" and not (out_dir / HF_DIR).is_dir():  # "auto" wrote it already for Hugging Face backbones
        from automl_ft.hf_format import export_hf

        say(f"Hugging Face folder: {export_hf(out_dir)}")
    q = None
    if int8:
        from automl_ft.quantize import add_int8

        q = add_int8(out_dir, data, say)
    return Exported(out_dir, chosen.number, metrics, q)


def make_report(run_dir: str | Path, *, storage: str | None = None, out: str | Path | None = None
                ) -> tuple[Any, dict[str, Any]]:
    """Write a run's plots and HTML page (default RUN_DIR/report/); returns the report and the run record."""
    from automl_ft.report import build_report

    if out:
        check_creatable(Path(out).expanduser().resolve(), "--out")
    run, record, study, _ = open_run(run_dir, storage)
    out_dir = Path(out).expanduser().resolve() if out else run.report
    # Written only if new, empty or an earlier report of this run (its marker names the run).
    check_not_in_data(out_dir, "--out", run.resolve_path(str(record.get("data_source") or "")))
    check_output_dir(out_dir, "--out", lambda d: run.owns_report(record, d))
    return build_report(run, study, record, out_dir=out_dir), record


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
        "best_value": best.values[0],
        "best_latency_ms": best.user_attrs.get("latency_ms"),
        "objectives": list(study.metric_names or ["val_accuracy"]),
        "direction": study.directions[0].name.lower(),
        "metric": study.metric_names[0] if study.metric_names else "val_accuracy",
        "pareto_front": [{"trial": t.number, "val_score": t.values[0], "latency_ms": t.values[1]}
                         for t in sorted(study.best_trials, key=lambda t: t.values[1])]
        if len(study.directions) > 1 else None,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "minutes": ((time.time() - started) / 60.0) if started else sum(
            (t.user_attrs.get("seconds") or 0) for t in study.get_trials(deepcopy=False)) / 60.0,
        "space_file": space.file if space else None,
    }


def export_best(run: RunDir, study: Any, best: Any, data: Any, *, caches: Any, record: dict[str, Any], url: str,
                space: Any, started: float | None, say: Say, out_dir: Path | None = None,
                device: Any = None) -> dict[str, Any]:
    """Export ``best`` into ``out_dir`` (default RUN_DIR/best) with its model card; returns metrics.json's content.

    A cross-validated trial's checkpoint is one fold's: it is first refit on every labelled example (on ``device``,
    default the CPU), once: ``refit.json`` marks a trial already refit.
    """
    from automl_ft.card import write_model_card
    from automl_ft.export import export_trial
    from automl_ft.search.leaderboard import leaderboard, markdown_table, study_metric

    out_dir = out_dir or run.best
    trial_dir = run.trial_dir(best.number)
    if not (trial_dir / "model.safetensors").is_file():
        raise UsageError(f"trial {best.number} has no checkpoint in {trial_dir}; run export on the machine that "
                         "trained it or with --artifacts")
    # A cross-validated trial is refit on every labelled example; so is a probe that won on a validation split: its
    # closed-form head costs seconds on cached features, and the validation examples are 20 % more data. The CIFAR
    # subset (1,000 train / 250 val): 85.2 % test from train alone, where LogisticRegressionCV on both scored 86.4 %
    # (bench_search.py, 2026-12-04).
    if best.user_attrs.get("cv") or (best.user_attrs.get("config") or {}).get("adaptation") == "probe":
        import torch

        from automl_ft.search.crossval import refit_best

        refit_best(best, data, trial_dir, device=device or torch.device("cpu"), caches=caches, say=say)
    search = search_summary(study, best, record.get("storage") or url, space, started)
    say(f"Evaluating trial {best.number} on the test split and exporting to ONNX ..." if len(data.test) else
        f"Exporting trial {best.number} to ONNX (no test split to evaluate on) ...")

    def card(directory: Path, metrics: dict[str, Any]) -> None:
        write_model_card(directory, metrics=metrics, config=best.user_attrs.get("config", {}),
                         data_summary=data.summary, search=search, commands=record.get("commands", []),
                         task=data.fitted_task(),
                         leaderboard_md=markdown_table(leaderboard(study, limit=20), metric=study_metric(study)))

    return export_trial(trial_dir, out_dir, data, caches=caches, card_writer=card,
                        extra_metrics={"run": run.run_id(record), "trial": best.number, "study": study.study_name,
                                       "val_score": best.values[0], "val_metric": search["metric"],
                                       "latency": best.user_attrs.get("latency"), **cv_metrics(best, trial_dir)})


def cv_metrics(best: Any, trial_dir: Path) -> dict[str, Any]:
    """``{"cv": ...}`` for a cross-validated trial (its fold scores and the refit), ``{"refit": ...}`` for a probe
    refit on train + validation, else nothing."""
    from automl_ft.search.crossval import REFIT_FILE

    refit_file = trial_dir / REFIT_FILE
    refit = json.loads(refit_file.read_text()) if refit_file.is_file() else None
    scored = best.user_attrs.get("cv")
    if not scored:
        return {"refit": refit} if refit else {}  # a probe refit on train + validation
    return {"cv": {**scored, "refit": refit}}


def exported_metrics(best_dir: Path, study_name: str, trial: int) -> dict[str, Any] | None:
    """metrics.json of an existing export of this very trial, or None (then it must be exported)."""
    try:
        metrics = json.loads((best_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("study") == study_name and metrics.get("trial") == trial and (best_dir / ONNX_FILE).is_file():
        return metrics
    return None
