"""Cleaning shared by text and image data: exact duplicates and inputs that carry conflicting labels.

Both are decided on a *key* per example (the stripped text, or a hash of the image bytes), so the same rules hold
for every modality and for data that arrives already split (a duplicate across train and test is a leak: it is
kept in the earliest split only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def dedupe(keys: Sequence[str], labels: Sequence[str], splits: Sequence[str] | None = None,
           split_order: Sequence[str] = ("train", "val", "test")) -> tuple[list[int], dict[str, int]]:
    """Indices of the examples to keep, and counts of what was dropped.

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
