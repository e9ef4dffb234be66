"""Example data per problem type, so tests/tasks/test_common.py covers every registered task.

A newly registered task fails the common tests until it gets an entry in :data:`EXAMPLES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from automl_ft.tasks import Task, get_task


@dataclass
class Example:
    """Raw label cells, parsed into train / val labels, a fitted task, model outputs on val, and the logits of the
    trivial predictor (majority class / per-label majority / train mean) on val."""

    cells: list
    task: Task
    train: list
    val: list
    val_logits: np.ndarray
    trivial_logits: np.ndarray
    decode_fields: set[str]


def _classification(rng: np.random.Generator) -> Example:
    names = np.array(["cat", "dog", "emu"])
    cells = [str(names[i]) for i in rng.choice(3, size=60, p=[0.5, 0.3, 0.2])]
    parsed = get_task("classification").parse_labels(cells, "|")
    train, val = parsed.labels[:40], parsed.labels[40:]
    task = get_task("classification").fit(parsed.classes, train)
    logits = rng.normal(size=(len(val), 3)).astype(np.float32)
    logits[np.arange(len(val)), val] += 3.0  # a model better than chance, not perfect
    majority = int(np.bincount(train, minlength=3).argmax())
    trivial = np.zeros((len(val), 3), dtype=np.float32)
    trivial[:, majority] = 5.0
    return Example(cells, task, train, val, logits, trivial, {"label", "score"})


def _multilabel(rng: np.random.Generator) -> Example:
    names = ["a", "b", "c", "d"]
    rate = np.array([0.7, 0.4, 0.2, 0.05])  # "a" is positive in most examples: the per-label majority predicts it
    hot = rng.random((80, 4)) < rate
    cells = ["|".join(n for n, h in zip(names, row) if h) for row in hot]
    parsed = get_task("multilabel").parse_labels(cells, "|")
    train, val = parsed.labels[:50], parsed.labels[50:]
    task = get_task("multilabel").fit(parsed.classes, train)
    y = task.targets(val)
    logits = (rng.normal(size=y.shape) + 2.0 * (2 * y - 1)).astype(np.float32)
    majority = task.targets(train).mean(0) > 0.5
    trivial = np.where(majority, 8.0, -8.0)[None, :].repeat(len(val), 0).astype(np.float32)
    return Example(cells, task, train, val, logits, trivial, {"labels", "scores"})


def _regression(rng: np.random.Generator) -> Example:
    values = rng.normal(50.0, 12.0, size=60).round(3)
    cells = [str(v) for v in values]
    parsed = get_task("regression").parse_labels(cells, "|")
    train, val = parsed.labels[:40], parsed.labels[40:]
    task = get_task("regression").fit(parsed.classes, train)
    logits = (task.targets(val) + 0.3 * rng.normal(size=len(val))).astype(np.float32)[:, None]
    trivial = np.zeros((len(val), 1), dtype=np.float32)  # standardized 0 = the train mean
    return Example(cells, task, train, val, logits, trivial, {"value"})


EXAMPLES: dict[str, Callable[[np.random.Generator], Example]] = {
    "classification": _classification,
    "multilabel": _multilabel,
    "regression": _regression,
}


def make_example(problem: str, seed: int = 0) -> Example:
    """The example of ``problem``; a registered task without one fails loudly (add it to :data:`EXAMPLES`)."""
    if problem not in EXAMPLES:
        pytest.fail(f"task {problem!r} has no example in tests/tasks/examples.py; add one to EXAMPLES")
    return EXAMPLES[problem](np.random.default_rng(seed))
