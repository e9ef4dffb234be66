"""``automl-ft export`` and ``automl-ft report``: work on an existing run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automl_ft.errors import UsageError
from automl_ft.rundir import HF_DIR, RunDir, check_creatable, check_not_in_data, check_output_dir


def open_run(run_dir: str, storage: str | None) -> tuple[RunDir, dict[str, Any], Any, str]:
    """The run folder, its record, its study and the storage URL used."""
    import optuna

    from automl_ft.search.storage import make_storage, redact_url
    from automl_ft.tune import quiet_libraries

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

    source = run.resolve_path(record["data_source"]) if run is not None else record["data_source"]
    opts = record.get("data_options", {})
    data = load_dataset(source, task=opts.get("task", "auto"), text_column=opts.get("text_column"),
                        label_column=opts.get("label_column"), image_column=opts.get("image_column"),
                        label_sep=opts.get("label_sep", "|"), seed=opts.get("seed", 0))
    if data.fingerprint != record["data_fingerprint"]:
        raise UsageError(f"the data at {source} changed since the study ran (fingerprint "
                         f"{data.fingerprint} != {record['data_fingerprint']}); restore it to evaluate on its test split")
    return data


def run_export(run_dir: str, *, trial: int | None = None, out: str | None = None, storage: str | None = None,
               int8: bool = False, argv: list[str] | None = None, format: str = "auto") -> int:
    from optuna.trial import TrialState

    from automl_ft.rundir import format_command
    from automl_ft.search.study import best_trial
    from automl_ft.tune import _printer, export_best

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
    record = {**record, "commands": [*record.get("commands", []), format_command(argv or ["export", run_dir])]}
    say = _printer()
    metrics = export_best(run, study, chosen, data, caches=None, record=record, url=url, space=None, started=None,
                          say=say, out_dir=out_dir)
    say(f"Exported trial {chosen.number} to {out_dir}: test {data.fitted_task().describe(metrics['test'])}, "
        f"ONNX agreement {100 * metrics['onnx']['prediction_agreement']:.2f}%.")
    if format == "hf" and not (out_dir / HF_DIR).is_dir():  # "auto" wrote it already for Hugging Face backbones
        from automl_ft.hf_format import export_hf

        say(f"Hugging Face folder: {export_hf(out_dir)}")
    if int8:
        add_int8(out_dir, data, say)
    return 0


def add_int8(model_dir: Path, data: Any, say) -> dict[str, Any]:
    """Quantize an exported model and say whether the INT8 model is usable (and why not)."""
    from automl_ft.quantize import quantize_model

    from automl_ft.metrics import format_metric

    say("Quantizing to INT8 and checking its test metric ...")
    q = quantize_model(model_dir, data)
    verdict = "usable" if q.get("usable") else f"NOT usable: {q.get('reason')}"
    metric = q.get("metric", "accuracy")
    say(f"INT8 ({q.get('method')}): test {metric} {format_metric(metric, q['test_score'])} against "
        f"{format_metric(metric, q['fp32_test_score'])} in fp32; {verdict}." if q.get("test_score") is not None
        else f"INT8: {verdict}.")
    return q


def run_report(run_dir: str, *, storage: str | None = None, out: str | None = None) -> int:
    """Print the leaderboard and write plots and an HTML page (default RUN_DIR/report/); see automl_ft/report.py."""
    from rich.console import Console

    from automl_ft.report import PLOTS, TITLES, build_report, leaderboard_table

    if out:
        check_creatable(Path(out).expanduser().resolve(), "--out")
    run, record, study, _ = open_run(run_dir, storage)
    out_dir = Path(out).expanduser().resolve() if out else run.report
    # Written only if new, empty or an earlier report of this run (its marker names the run).
    check_not_in_data(out_dir, "--out", run.resolve_path(str(record.get("data_source") or "")))
    check_output_dir(out_dir, "--out", lambda d: run.owns_report(record, d))
    report = build_report(run, study, record, out_dir=out_dir)
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would truncate the table to 80 columns
        console = Console(width=max(console.width, 160))
    console.print(leaderboard_table(report.rows, report.columns, f"{record['study']} ({len(report.rows)} trials)"))
    for name in PLOTS:
        if name in report.notes:
            console.print(f"[dim]{TITLES[name]}: skipped, {report.notes[name]}[/dim]", highlight=False)
    if report.kernels:
        saved = [k["saved_ms"] for k in report.kernels if k["saved_ms"] is not None]
        console.print(f"Kernels measured in {len(report.kernels)} trials"
                      + (f"; estimated saving {sum(saved):,.1f} ms over the PyTorch reference" if saved else ""),
                      highlight=False)
    else:
        console.print("[dim]Kernel time was not measured in this run.[/dim]")
    console.print(f"Report: {report.html}", highlight=False, soft_wrap=True)
    return 0
