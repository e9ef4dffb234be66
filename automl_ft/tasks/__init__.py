"""Problem types (tasks) behind one registry: ``classification``, ``multilabel``, ``regression``.

A full task name is ``f"{modality}-{problem}"`` (``text-classification``, ``image-regression``...); the modality
(how inputs are read) and the problem (what the labels mean) are separate registries, so neither branches on the
other. Adding a problem type is one file here that defines a :class:`Task` subclass under ``@register_task``, plus
its tests (tests/tasks/ parametrize over :func:`list_tasks`, so the shared behaviour is tested automatically).

Importing this package imports neither torch nor scikit-learn nor scipy: predict and serve use it.
"""

from __future__ import annotations

from typing import Any

from automl_ft.errors import ModelDirError

from .base import ParsedLabels, Task

# The modalities a problem can be combined with (automl_ft.modalities registers how each is read); kept here as
# names only, so a task never imports a modality.
MODALITIES = ("image", "text")
DEFAULT_LABEL_SEP = "|"

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register ``cls`` under ``cls.name`` (lowercase, no ``-``: it is the second half of a full
    task name). A second class under the same name is a programming error."""
    name = cls.name
    if not name or name != name.lower() or "-" in name:
        raise ValueError(f"task name {name!r} must be lowercase without '-'")
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
    _TASKS[name] = cls
    return cls


def list_tasks() -> list[str]:
    """Registered problem names, sorted."""
    return sorted(_TASKS)


def get_task(problem: str) -> type[Task]:
    """The task class registered as ``problem``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return _TASKS[problem]
    except KeyError:
        raise ValueError(f"unknown problem type {problem!r}; known: {', '.join(list_tasks())}") from None


def task_name(modality: str, problem: str) -> str:
    """The full task name, ``text-classification`` for (``text``, ``classification``); both parts checked."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    if modality not in get_task(problem).modalities:
        raise ValueError(f"a {problem} task takes {' or '.join(get_task(problem).modalities)} inputs, not {modality}")
    return f"{modality}-{problem}"


def split_task_name(full: str) -> tuple[str, str]:
    """``("text", "classification")`` for ``text-classification``.

    Raises:
        ValueError: not ``<modality>-<problem>`` with a known modality and problem; the message lists the valid
        full names.
    """
    modality, sep, problem = str(full).partition("-")
    if not sep or modality not in MODALITIES or problem not in _TASKS or modality not in _TASKS[problem].modalities:
        raise ValueError(f"unknown task {full!r}; use one of {', '.join(full_tasks())}")
    return modality, problem


def full_tasks() -> tuple[str, ...]:
    """Every ``modality-problem`` combination of the registered tasks (modality-major, problems sorted)."""
    return tuple(f"{m}-{p}" for m in MODALITIES for p in list_tasks() if m in _TASKS[p].modalities)


def detect_problem(cells: list, label_sep: str = DEFAULT_LABEL_SEP) -> tuple[str, str]:
    """The problem type raw label cells look like, and a one-line reason (``tune`` prints it with the override).

    Tasks are asked in increasing ``detect_priority`` (multilabel, regression, then classification, which
    accepts anything), so the first that recognises the cells wins.
    """
    for cls in sorted(_TASKS.values(), key=lambda c: (c.detect_priority, c.name)):
        reason = cls.looks_like(cells, label_sep)
        if reason is not None:
            return cls.name, reason
    raise AssertionError("the classification task accepts any labels")  # pragma: no cover


def load_task(state: dict[str, Any]) -> Task:
    """The fitted task saved as ``state`` (``best/task.json``'s ``"state"``, from :meth:`Task.state_dict`).

    Raises:
        ModelDirError: ``state`` is not a task state this version knows (malformed, or a newer problem type).
    """
    if not isinstance(state, dict) or not isinstance(state.get("problem"), str):
        raise ModelDirError("task.json holds no task state (expected an object with a 'problem'); re-export the "
                            "model with this version of automl-ft")
    try:
        cls = get_task(state["problem"])
    except ValueError as e:
        raise ModelDirError(f"task.json: {e}; it was written by another version of automl-ft, use that version "
                            "or re-export the model") from None
    try:
        return cls.from_state(state)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"task.json: the {state['problem']} state is malformed ({type(e).__name__}: {e}); "
                            "re-export the model") from None


# Registration happens on import; these imports sit below the registry they use.
from . import multi_label, regression, segmentation, single_label

FULL_TASKS: tuple[str, ...] = full_tasks()

__all__ = [
    "DEFAULT_LABEL_SEP",
    "FULL_TASKS",
    "MODALITIES",
    "ParsedLabels",
    "Task",
    "detect_problem",
    "full_tasks",
    "get_task",
    "list_tasks",
    "load_task",
    "multi_label",
    "register_task",
    "regression",
    "segmentation",
    "single_label",
    "split_task_name",
    "task_name",
]
