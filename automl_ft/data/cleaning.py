"""Cleaning shared by text and image data: exact duplicates and inputs that carry conflicting labels.

Both are decided on a *key* per example (the stripped text, or a hash of the image bytes), so the same rules hold
for every modality and for data that arrives already split (a duplicate across train and test is a leak: it is
kept in the earliest split only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

# The label rules (MISSING_LABELS, is_missing_label, NUMERIC_TARGET_DISTINCT) live with the tasks, which parse the
# labels of every problem type; re-exported here for the data layer. tasks imports nothing from data: no cycle.
from automl_ft.tasks.base import MISSING_LABELS, NUMERIC_TARGET_DISTINCT, is_missing_label  # noqa: F401


def dedupe(keys: Sequence[str], labels: Sequence[str], splits: Sequence[str] | None = None,
           split_order: Sequence[str] = ("train", "val", "test")) -> tuple[list[int], dict[str, int]]:
    """Indices of the examples to keep, and counts of what was dropped.

    ``labels`` are strings compared for equality: a class name, or the canonical form of a label set or a number
    (``dataset._label_key``), so a multi-label example with another label set, or a regression example with
    another value, conflicts like a class that differs.

    - An input that appears with more than one label is dropped entirely (every copy): its label is unknowable,
      and keeping one copy would teach the model noise.
    - Of exact duplicates (same input, same label) the first is kept; with ``splits``, the copy in the earliest
      split of ``split_order`` is kept, so a test example never also sits in train.
    """
    labels_of: dict[str, set[str]] = defaultdict(set)
    for k, y in zip(keys, labels):
        labels_of[k].add(y)
    rank = {s: i for i, s in enumerate(split_order)}
    order = list(range(len(keys)))
    if splits is not None:
        order.sort(key=lambda i: (rank.get(splits[i], len(rank)), i))
    seen: set[str] = set()
    keep: list[int] = []
    dropped = {"conflicting_labels": 0, "duplicates": 0, "duplicates_across_splits": 0}
    first_split: dict[str, str] = {}
    for i in order:
        k = keys[i]
        if len(labels_of[k]) > 1:
            dropped["conflicting_labels"] += 1
            continue
        if k in seen:
            if splits is not None and first_split[k] != splits[i]:
                dropped["duplicates_across_splits"] += 1
            else:
                dropped["duplicates"] += 1
            continue
        seen.add(k)
        if splits is not None:
            first_split[k] = splits[i]
        keep.append(i)
    keep.sort()
    return keep, dropped


def case_collisions(labels: Sequence[str]) -> list[list[str]]:
    """Groups of distinct labels that differ only in case or surrounding spaces (``Spam``/``spam``)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for y in labels:
        groups[y.strip().casefold()].add(y)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def numeric_target(labels: Sequence[str]) -> int | None:
    """The number of distinct labels when every label is a finite number and there are more than
    :data:`NUMERIC_TARGET_DISTINCT` of them (a regression target read as classes), else None."""
    import math

    distinct = set(labels)
    if len(distinct) <= NUMERIC_TARGET_DISTINCT:
        return None
    for y in distinct:
        try:
            if not math.isfinite(float(y)):
                return None
        except ValueError:
            return None
    return len(distinct)
