"""Where the engine's messages go: a ``say(text)`` callback that the CLI prints and the Python API silences.

The engine never prints itself; every step that has something to tell the user takes a ``say`` callable, so
``automl_ft.tune(...)`` is quiet in a notebook unless ``progress=True`` and the CLI prints the same lines as ever.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

Say = Callable[[str], None]


def printer() -> Say:
    """A ``say`` that prints whole lines to stderr (rich, no markup, no wrapping at 80 columns: logs keep lines)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def say(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True)

    return say


def silent(text: str) -> None:
    """A ``say`` that drops every message (the Python API's default)."""


def quiet_libraries() -> None:
    import optuna

    # Optuna logs every failed trial with a traceback at WARNING; ours records the reason in the leaderboard.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    logging.getLogger("timm").setLevel(logging.WARNING)
