"""The leaderboard: one row per trial, shared by the live progress view, the report and the model card.

The ``val`` column is the task's primary validation metric (accuracy, macro F1, micro F1, RMSE, ...): its title
names the metric (``val_rmse``), its order follows the study's direction, its cells the metric's format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from automl_ft.metrics import format_metric

if TYPE_CHECKING:
    import optuna

COLUMNS = ("trial", "state", "backbone", "adaptation", "freeze", "lr", "batch", "epochs", "val", "latency_ms",
           "minutes", "note")
NUMERIC = ("trial", "freeze", "lr", "batch", "val", "latency_ms", "minutes")
# Studies made before tasks existed name no metric: theirs is the validation accuracy.
DEFAULT_METRIC = "val_accuracy"


def study_metric(study: optuna.Study) -> str:
    """The primary metric of a study, without the ``val_`` prefix (``accuracy``, ``rmse``, ...)."""
    names = study.metric_names or [DEFAULT_METRIC]
    return names[0][4:] if names[0].startswith("val_") else names[0]


def column_title(column: str, metric: str) -> str:
    return f"val_{metric}" if column == "val" else column


def trial_row(t: optuna.trial.FrozenTrial, maximize: bool = True) -> dict[str, Any]:
    """A flat summary of a trial from its parameters and user attributes (set by the objective); an unfinished
    trial's ``val`` is its best epoch so far (``maximize``: the study's direction)."""
    cfg = t.user_attrs.get("config") or {}
    adaptation = cfg.get("adaptation", "?")
    if adaptation == "lora":
        adaptation = f"lora r{cfg.get('lora_rank')}"
    if adaptation == "setfit":
        adaptation = f"setfit x{cfg.get('setfit_iterations')}"  # rounds of contrastive pairs
    if cfg.get("head_init") == "probe":
        adaptation += " lp-ft"  # the head started at the probe's fit
    probe = adaptation == "probe"
    epochs = cfg.get("epochs")
    ran = t.user_attrs.get("epochs_run", len(t.intermediate_values))
    note = (t.user_attrs.get("pruned_reason") or t.user_attrs.get("fail_reason") or
            t.user_attrs.get("stopped") or "")
    cached = (t.user_attrs.get("adaptation") or {}).get("prefix_cache")
    if cached:  # what the trial reused instead of recomputing (prefix_cache.py)
        views = f", {cached['views']} views" if cached.get("views") else ""  # images: augmented views per image
        note = (note + "; " if note else "") + (f"{cached['layers']} frozen layers cached{views}" + (
            " (reused)" if not cached["computed"] else ""))
    retry_of = (t.user_attrs.get("retry_history") or [None])[-1]
    if retry_of is not None:
        note = (f"retry of #{retry_of}" + (f", resumed at epoch {t.user_attrs['resumed_from_epoch']}"
                                           if t.user_attrs.get("resumed_from_epoch") else "")
                + (f"; {note}" if note else ""))
    best = max if maximize else min
    value = t.values[0] if t.values else (best(t.intermediate_values.values()) if t.intermediate_values else None)
    seconds = t.user_attrs.get("seconds")
    # Without the objective's own figure, the clock tells the duration only of trials that ended themselves: a
    # trial failed for a dead worker ends when someone notices (48.9 min after it started, in one resumed study).
    if seconds is None and t.datetime_start and t.datetime_complete and t.state.name != "FAIL":
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    return {
        "trial": t.number,
        "state": t.state.name.lower(),
        "backbone": cfg.get("backbone", t.params.get("backbone", t.user_attrs.get("backbone", "?"))),
        "adaptation": adaptation,
        "freeze": cfg.get("freeze_depth"),
        "lr": None if probe else cfg.get("lr"),  # fitted in closed form: no learning rate, no batches
        "batch": None if probe else cfg.get("batch_size"),
        # a cross-validated trial's steps are its folds
        "epochs": (f"{epochs} x {t.user_attrs['cv'].get('folds_done')} folds" if t.user_attrs.get("cv") else
                   f"{ran}/{epochs}" if epochs else str(ran)),
        "val": value,
        # measured by the objective; in a multi-objective study it is also the second value
        "latency_ms": t.user_attrs.get("latency_ms", t.values[1] if t.values and len(t.values) > 1 else None),
        "minutes": None if seconds is None else seconds / 60.0,
        "note": note,
    }




def leaderboard(study: optuna.Study, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows sorted best first: complete trials by value, then pruned by best intermediate value, then the rest."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    rank = {TrialState.COMPLETE: 0, TrialState.RUNNING: 1, TrialState.PRUNED: 2, TrialState.FAIL: 3,
            TrialState.WAITING: 4}
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = trial_row(t, maximize=sign < 0)
        value = sign * row["val"] if row["val"] is not None else float("inf")
        rows.append((rank.get(t.state, 5), value, t.number, row))
    rows.sort(key=lambda r: r[:3])
    out = [r[3] for r in rows]
    return out[:limit] if limit else out


def shown_columns(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> tuple[str, ...]:
    """The columns worth showing: latency only where some trial was timed (latency-aware studies)."""
    return tuple(c for c in columns if c != "latency_ms" or any(r.get(c) is not None for r in rows))


def format_cell(key: str, value: Any, metric: str = "accuracy") -> str:
    if value is None:
        return ""
    if key == "val":
        return format_metric(metric, value)
    if key == "lr":
        return f"{value:.2g}"
    if key == "minutes":
        return f"{value:.1f}"
    if key == "latency_ms":
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None,
                   metric: str = "accuracy") -> str:
    columns = shown_columns(rows) if columns is None else columns
    head = "| " + " | ".join(column_title(c, metric) for c in columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(format_cell(c, r.get(c), metric).replace("|", "/") for c in columns) + " |\n"
                   for r in rows)
    return head + body
