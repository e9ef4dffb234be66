"""Live progress of a search: the running trial's progress bar above the leaderboard of finished trials (rich).

On a terminal the view updates in place; in a log (CI, a pipe) it prints one line per epoch and per trial.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from automl_ft.metrics import format_metric, record_score

from .leaderboard import NUMERIC, column_title, format_cell, leaderboard, shown_columns, study_metric

if TYPE_CHECKING:
    import optuna


class SearchProgress:
    """Training callbacks (``on_epoch_start`` / ``on_step`` / ``on_epoch_end``) plus an Optuna trial callback."""

    def __init__(self, study: optuna.Study, n_trials: int, *, live: bool | None = None, title: str = "",
                 quiet: bool = False):
        """``quiet``: show nothing (the Python API without ``progress=True``); the callbacks still run."""
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)
        if not self.console.is_terminal:  # logs: wide enough that the leaderboard does not wrap every cell
            self.console = Console(stderr=True, width=160, quiet=quiet)
        self.live_enabled = False if quiet else self.console.is_terminal if live is None else live
        self.study = study
        self.n_trials = n_trials
        self.title = title
        self.started = time.time()
        self._live = None
        self._progress = None
        self._task = None
        self._trial_number: int | None = None
        self._trial_desc = ""
        self._epoch = (0, 0)

    # ------------------------------------------------------------------------------------------- rendering

    def _table(self):
        from rich.table import Table

        table = Table(title="leaderboard", expand=False, title_justify="left")
        rows = leaderboard(self.study, limit=12)
        columns = shown_columns(rows)
        metric = study_metric(self.study)
        for col in columns:
            table.add_column(column_title(col, metric), justify="right" if col in NUMERIC else "left",
                             overflow="fold", max_width=48 if col == "note" else None)
        for row in rows:
            table.add_row(*(format_cell(c, row.get(c), metric) for c in columns))
        return table

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        elapsed = time.time() - self.started
        header = Text(f"{self.title}  trial {self._trial_number if self._trial_number is not None else '-'}"
                      f"  ({self._done()}/{self.n_trials} done)  {elapsed / 60:.1f} min  {self._trial_desc}",
                      style="bold")
        return Group(header, self._progress, self._table())

    def _done(self) -> int:
        from .study import count_done

        try:
            return count_done(self.study)
        except Exception:
            return 0

    def __enter__(self) -> SearchProgress:
        if self.live_enabled:
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                      console=self.console)
            self._task = self._progress.add_task("waiting", total=1, loss="-")
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    # ---------------------------------------------------------------------------------------------- events

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def trial_started(self, number: int, description: str) -> None:
        self._trial_number = number
        self._trial_desc = description
        if self._live is None:
            self.message(f"trial {number}: {description}")
        self._refresh()

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch = (epoch, epochs)
        if self._progress is not None:
            self._progress.reset(self._task, total=steps, completed=0,
                                 description=f"trial {self._trial_number} epoch {epoch}/{epochs}", loss="-")
            self._refresh()

    def on_step(self, step: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self._live is None:
            metric = record.get("val_metric", "accuracy")
            self.message(f"  trial {self._trial_number} epoch {record['epoch']}: val {metric} "
                         f"{format_metric(metric, record_score(record))}  val loss {record['val_loss']:.4f}  "
                         f"train loss {record['train_loss']:.4f}  ({record['seconds']:.0f} s)")
        self._refresh()

    def fold_done(self, text: str) -> None:
        """One line per cross-validation fold (small data: the folds are the trial's steps)."""
        if self._live is None:
            self.message(text)
        self._refresh()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: a trial finished."""
        if self._live is None:
            from .leaderboard import trial_row

            from optuna.study import StudyDirection

            row = trial_row(trial, maximize=study.directions[0] == StudyDirection.MAXIMIZE)
            metric = study_metric(study)
            self.message(f"trial {trial.number} {row['state']}: val {metric} {format_cell('val', row['val'], metric)}"
                         f" in {format_cell('minutes', row['minutes'])} min"
                         + (f" ({row['note']})" if row["note"] else ""))
        self._refresh()

    def print_leaderboard(self) -> None:
        self.console.print(self._table())
