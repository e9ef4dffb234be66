"""``automl-ft report``: the leaderboard, plots (PNG) and one self-contained HTML page for a run.

::

    RUN_DIR/report/index.html               leaderboard, test metrics, the plots, kernel timings, commands
    RUN_DIR/report/optimization_history.png objective per trial and the best so far (Optuna's plot)
    RUN_DIR/report/param_importances.png    fANOVA importances (Optuna's plot; needs >= 2 complete trials)
    RUN_DIR/report/pareto_front.png         multi-objective studies only (e.g. accuracy vs latency)
    RUN_DIR/report/confusion_matrix.png     test confusion matrix of the exported best model (RUN_DIR/best)
    RUN_DIR/report/learning_curves.png      val accuracy and train/val loss per epoch of the top 3 trials

A plot that cannot be drawn yet (no complete trial, a single-objective study, no export) is skipped with a note
that says why, on the console and on the page; the page never points at a missing image. Works on a study that
is still running, and on studies with failed, pruned and running trials.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_ft.metrics import format_metric, record_score
from automl_ft.rundir import LABELS_FILE, METRICS_FILE, REPORT_MARKER, make_dir, write_json
from automl_ft.search.leaderboard import (
    COLUMNS,
    NUMERIC,
    column_title,
    format_cell,
    leaderboard,
    shown_columns,
    study_metric,
)

if TYPE_CHECKING:
    import optuna

    from automl_ft.rundir import RunDir

TOP_CURVES = 3
PLOTS = ("optimization_history", "param_importances", "pareto_front", "confusion_matrix", "learning_curves")
TITLES = {
    "optimization_history": "Optimization history",
    "param_importances": "Hyper-parameter importances",
    "pareto_front": "Pareto front",
    "confusion_matrix": "Confusion matrix (test split, best model)",
    "learning_curves": f"Learning curves of the top {TOP_CURVES} trials",
}


@dataclass
class Report:
    """What :func:`build_report` wrote: the page, the images by plot name, and why the others were skipped."""

    out_dir: Path
    html: Path
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    images: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    kernels: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ leaderboard


def objective_names(study: optuna.Study) -> list[str]:
    """The study's metric names, or defaults (the first objective is the primary validation metric)."""
    names = list(study.metric_names or [])
    n = len(study.directions)
    defaults = [f"val_{study_metric(study)}"] + [f"objective_{i}" for i in range(1, n)]
    return [names[i] if i < len(names) and names[i] else defaults[i] for i in range(n)]


def report_rows(study: optuna.Study) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Leaderboard rows (best first) and their columns; objectives beyond the primary metric and latency get a
    column. The primary metric's column is titled by it (``val_accuracy``, ``val_rmse``)."""
    rows = leaderboard(study)
    title = column_title("val", study_metric(study))
    for row in rows:
        row[title] = row.pop("val")
    columns = tuple(title if c == "val" else c for c in COLUMNS)
    extra = [n for n in objective_names(study)[1:] if n not in columns]
    if not extra:
        return rows, shown_columns(rows, columns)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for row in rows:
        values = by_number[row["trial"]].values or []
        for i, name in enumerate(objective_names(study)[1:], start=1):
            if name in extra:
                row[name] = values[i] if i < len(values) else None
    at = columns.index(title) + 1
    return rows, shown_columns(rows, columns[:at] + tuple(extra) + columns[at:])


def cell(column: str, value: Any) -> str:
    if column.startswith("val_"):
        return format_metric(column[4:], value)
    if column in COLUMNS:
        return format_cell(column, value)
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def leaderboard_table(rows: list[dict[str, Any]], columns: tuple[str, ...], title: str):
    """The leaderboard as a rich Table."""
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in NUMERIC or col.startswith("val_") else "left")
    for row in rows:
        table.add_row(*(cell(c, row.get(c)) for c in columns))
    return table


# ----------------------------------------------------------------------------------------------------- plots


def _save(ax_or_fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = ax_or_fig if hasattr(ax_or_fig, "savefig") else ax_or_fig.figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _optuna_plots(study: optuna.Study, out: Path, report: Report) -> None:
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    names = objective_names(study)
    multi = len(study.directions) > 1
    target: Callable | None = (lambda t: t.values[0]) if multi else None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            ax = ovm.plot_optimization_history(study, target=target, target_name=names[0])
            report.images["optimization_history"] = _save(ax, out / "optimization_history.png")
        else:
            report.notes["optimization_history"] = "no complete trial yet"

        if len(complete) < 2:
            report.notes["param_importances"] = (f"needs at least 2 complete trials, the study has {len(complete)}")
        else:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                ax = ovm.plot_param_importances(study, evaluator=evaluator, target=target, target_name=names[0])
                report.images["param_importances"] = _save(ax, out / "param_importances.png")
            except (ValueError, RuntimeError) as e:  # e.g. no parameter common to all complete trials
                report.notes["param_importances"] = f"not computable: {str(e).splitlines()[0][:200]}"

        if not multi:
            report.notes["pareto_front"] = "single-objective study (validation accuracy only)"
        elif not complete:
            report.notes["pareto_front"] = "no complete trial yet"
        else:
            ax = ovm.plot_pareto_front(study, target_names=names)
            report.images["pareto_front"] = _save(ax, out / "pareto_front.png")


def load_test_metrics(best_dir: Path) -> tuple[dict[str, Any] | None, list[str] | None, str | None]:
    """``(metrics, class names, why not)`` of the exported best model."""
    metrics_path, labels_path = best_dir / METRICS_FILE, best_dir / LABELS_FILE
    if not metrics_path.is_file():
        return None, None, f"no exported model ({metrics_path} is missing; run tune to the end or export)"
    try:
        metrics = json.loads(metrics_path.read_text())
        labels = json.loads(labels_path.read_text()) if labels_path.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        return None, None, f"{metrics_path.parent} is unreadable: {e}"
    return metrics, labels, None


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """Counts annotated when readable (<= 20 classes); colour is the row-normalised rate (recall per class)."""
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(matrix, dtype=float)
    k = cm.shape[0]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    side = min(max(4.0, 0.45 * k + 2.0), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(k)
    fontsize = 9 if k <= 20 else max(3, int(180 / k))
    ax.set_xticks(ticks, labels, rotation=90 if k > 6 else 0, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(f"Test confusion matrix ({int(cm.sum())} examples)")
    return _save(fig, path)


def curve_trials(study: optuna.Study, rows: list[dict[str, Any]], top: int = TOP_CURVES) -> list[Any]:
    """The first ``top`` trials of the leaderboard that have a per-epoch history."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    picked = [by_number[r["trial"]] for r in rows if by_number[r["trial"]].user_attrs.get("history")]
    return picked[:top]


def plot_learning_curves(trials: list[Any], rows_by_number: dict[int, dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, t in enumerate(trials):
        history = [h for h in t.user_attrs["history"] if isinstance(h, dict) and "epoch" in h]
        color = colors[i % len(colors)]
        row = rows_by_number.get(t.number, {})
        label = f"#{t.number} {row.get('backbone', '')} {row.get('adaptation', '')} ({row.get('state', '')})"
        epochs = [h["epoch"] for h in history]

        def series(key: str, history: list[dict[str, Any]] = history) -> list[float]:
            return [h.get(key) if h.get(key) is not None else math.nan for h in history]

        scores = [record_score(h) for h in history]
        metric = next((h["val_metric"] for h in history if "val_metric" in h), "accuracy")
        acc_ax.plot(epochs, scores, "o-", color=color, label=label)
        loss_ax.plot(epochs, series("train_loss"), "o-", color=color, label=f"#{t.number} train")
        loss_ax.plot(epochs, series("val_loss"), "s--", color=color, label=f"#{t.number} val")
        best = t.user_attrs.get("best_epoch")
        if best in epochs:
            acc_ax.plot([best], [scores[epochs.index(best)]], "*", color=color, markersize=14)
    metric = metric if trials else "accuracy"
    acc_ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"Validation {metric} (star: best epoch)")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Train (solid) and validation (dashed) loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------- kernels


def kernel_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Trials that measured their kernels (user attr ``kernel_time``), with what the kernels saved.

    ``saved_ms`` is the PyTorch reference's estimated time minus the time spent in the fused LoRA and AdamW
    kernels; None when the trial recorded no reference estimate.
    """
    out = []
    for t in study.get_trials(deepcopy=False):
        kt = t.user_attrs.get("kernel_time")
        if not isinstance(kt, dict):
            continue
        lora, adamw, ref = kt.get("lora_ms"), kt.get("adamw_ms"), kt.get("reference_estimate_ms")
        spent = sum(v for v in (lora, adamw) if isinstance(v, (int, float)))
        saved = ref - spent if isinstance(ref, (int, float)) else None
        out.append({"trial": t.number, "state": t.state.name.lower(), "backend": kt.get("backend", "?"),
                    "lora_ms": lora, "adamw_ms": adamw, "reference_estimate_ms": ref, "saved_ms": saved,
                    "saved_pct": 100.0 * saved / ref if saved is not None and ref else None})
    return out


def _ms(v: Any) -> str:
    return "" if not isinstance(v, (int, float)) else f"{v:,.1f}"


# ------------------------------------------------------------------------------------------------------ page


def build_report(run: RunDir, study: optuna.Study, record: dict[str, Any], *, out_dir: Path | None = None) -> Report:
    """Write the PNGs and ``index.html`` for ``run`` into ``out_dir`` (default ``RUN_DIR/report``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window (and no display on servers)

    out = make_dir(Path(out_dir) if out_dir else run.report, "--out")
    write_json(out / REPORT_MARKER, {"run": run.run_id(record)})  # a later report of this run may replace it
    rows, columns = report_rows(study)
    report = Report(out_dir=out, html=out / "index.html", rows=rows, columns=columns)
    for name in PLOTS:  # an image left from an earlier report must not pass for a current one
        (out / f"{name}.png").unlink(missing_ok=True)

    import matplotlib.pyplot as plt

    with plt.rc_context():  # Optuna's plots switch the global style to ggplot; keep that out of ours
        _optuna_plots(study, out, report)

    metrics, labels, why = load_test_metrics(run.best)
    test = (metrics or {}).get("test") or {}
    matrix = test.get("confusion_matrix")
    if why:
        report.notes["confusion_matrix"] = why
    elif not matrix:
        report.notes["confusion_matrix"] = f"{run.best / 'metrics.json'} has no test confusion matrix"
    else:
        names = labels if labels and len(labels) == len(matrix) else [str(i) for i in range(len(matrix))]
        report.images["confusion_matrix"] = plot_confusion_matrix(matrix, names, out / "confusion_matrix.png")

    trials = curve_trials(study, rows)
    if trials:
        report.images["learning_curves"] = plot_learning_curves(trials, {r["trial"]: r for r in rows},
                                                                out / "learning_curves.png")
    else:
        report.notes["learning_curves"] = "no trial has finished an epoch yet"

    report.kernels = kernel_rows(study)
    tmp = report.html.with_name(f".{report.html.name}.tmp")
    tmp.write_text(render_html(report, study, record, metrics), encoding="utf-8")
    tmp.replace(report.html)
    return report


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.complete td{background:#fff}tr.pruned td{color:#777}tr.fail td{color:#a33}tr.running td{color:#36c}
img{max-width:100%;border:1px solid #eee}.note{color:#777;font-style:italic}code{background:#f4f4f4;padding:0 .2rem}
"""

_NUMERIC = {"trial", "freeze", "lr", "batch", "minutes", "lora_ms", "adamw_ms", "reference_estimate_ms",
            "saved_ms", "saved_pct"}


def _table(columns: tuple[str, ...] | list[str], rows: list[list[str]], classes: list[str] | None = None,
           numeric: set[str] | None = None) -> str:
    numeric = _NUMERIC if numeric is None else numeric
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{html.escape(classes[i])}"' if classes else ""
        cells = "".join(f'<td{" class=num" if c in numeric or c.startswith("val_") else ""}>{html.escape(v)}</td>'
                        for c, v in zip(columns, r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report, study: optuna.Study, record: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The page: no scripts, no external assets; images by path relative to the page."""
    from collections import Counter

    esc = html.escape
    states = Counter(r["state"] for r in report.rows)
    directions = ", ".join(f"{d.name.lower()} {n}" for d, n in zip(study.directions, objective_names(study)))
    parts = [(f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>automl-ft report: "
             f"{esc(study.study_name)}</title><style>{_CSS}</style></head><body>"),
             f"<h1>automl-ft report: {esc(study.study_name)}</h1>",
             (f"<p>{len(report.rows)} trials ({esc(', '.join(f'{n} {s}' for s, n in sorted(states.items())))}); "
             f"objective: {esc(directions)}; task {esc(str(record.get('task', '?')))}; data "
             f"<code>{esc(str(record.get('data_source', '?')))}</code>; storage "
             f"<code>{esc(str(record.get('storage', '?')))}</code>.</p>")]

    parts.append("<h2>Leaderboard</h2>")
    parts.append(_table(report.columns, [[cell(c, r.get(c)) for c in report.columns] for r in report.rows],
                        [r["state"] for r in report.rows]))

    parts.append("<h2>Best model on the test split</h2>")
    test = (metrics or {}).get("test") or {}
    if test:
        summary = ", ".join(f"{k.replace('_', ' ')} {format_metric(k, v)}" for k, v in test.items()
                            if k not in ("num_examples", "loss") and isinstance(v, (int, float))
                            and not isinstance(v, bool))
        parts.append(f"<p>Trial {esc(str(metrics.get('trial', '?')))}: {esc(summary)} on "
                     f"{esc(str(test.get('num_examples', '?')))} examples.</p>")
        per_class = test.get("per_class") or {}
        if per_class:
            cols = ("class", "precision", "recall", "f1", "support")
            parts.append(_table(cols, [[str(name), *(f"{100 * v[k]:.1f}%" for k in cols[1:4]), str(v.get("support"))]
                                       for name, v in per_class.items()], numeric=set(cols[1:])))
    else:
        parts.append(f"<p class=note>{esc(report.notes.get('confusion_matrix', 'no test metrics'))}</p>")

    for name in PLOTS:
        parts.append(f"<h2>{esc(TITLES[name])}</h2>")
        if name in report.images:
            rel = report.images[name].name  # beside index.html
            parts.append(f'<img src="{esc(rel)}" alt="{esc(TITLES[name])}">')
        else:
            parts.append(f"<p class=note>Skipped: {esc(report.notes.get(name, 'not available'))}.</p>")

    parts.append("<h2>Kernels: what the fused kernels saved</h2>")
    if report.kernels:
        cols = ("trial", "state", "backend", "lora_ms", "adamw_ms", "reference_estimate_ms", "saved_ms", "saved_pct")
        parts.append(_table(cols, [[str(k["trial"]), k["state"], str(k["backend"]), _ms(k["lora_ms"]),
                                    _ms(k["adamw_ms"]), _ms(k["reference_estimate_ms"]), _ms(k["saved_ms"]),
                                    "" if k["saved_pct"] is None else f"{k['saved_pct']:.1f}%"]
                                   for k in report.kernels]))
        total = [k["saved_ms"] for k in report.kernels if k["saved_ms"] is not None]
        if total:
            parts.append(f"<p>In total the kernels saved an estimated {_ms(sum(total))} ms over the PyTorch "
                         f"reference in {len(total)} trials (time in fused LoRA + AdamW kernels against the "
                         "reference's estimate for the same work).</p>")
        else:
            parts.append("<p class=note>No trial recorded a reference estimate, so the saving is unknown.</p>")
    else:
        parts.append("<p class=note>Kernel time was not measured in this run (no trial has a "
                     "<code>kernel_time</code> attribute).</p>")

    commands = record.get("commands") or []
    if commands:
        parts.append("<h2>Commands</h2><pre>" + esc("\n".join(commands)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
