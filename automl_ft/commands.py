"""What ``automl-ft export`` and ``automl-ft report`` print: the work is in :mod:`automl_ft.runs`; this module only
turns its results into lines on the terminal."""

from __future__ import annotations

from typing import Any


def print_report(report: Any, record: dict[str, Any]) -> None:
    """The leaderboard, skipped plots, kernel timings and the page's path (see automl_ft/report.py)."""
    from rich.console import Console

    from automl_ft.report import PLOTS, TITLES, leaderboard_table

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
