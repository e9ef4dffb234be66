"""Seeded train / val / test splits: stratified on a task's strata (class index, regression bin), or iterative
stratification for multi-hot label sets."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

# The default share of labelled examples held out as test (and as val) when the data gives no such split.
VAL_FRACTION = TEST_FRACTION = 0.1


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split example indices into ``len(fractions)`` parts, class by class, with a fixed seed.

    The first part takes the remainder. Every class with at least ``len(fractions)`` examples gets at least one
    example in every part, so no split silently lacks a class; rarer classes go to the first part (train) first.

    Returns:
        One sorted list of indices per fraction.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n = len(idx)
        sizes = [0] * len(fractions)
        for j in range(1, len(fractions)):
            sizes[j] = round(n * fractions[j])
            if fractions[j] > 0 and n >= len(fractions):
                sizes[j] = max(1, sizes[j])
        while sum(sizes[1:]) >= n and any(sizes[1:]):  # train keeps at least one example
            j = max(range(1, len(sizes)), key=lambda k: sizes[k])
            sizes[j] -= 1
        start = 0
        for j in range(1, len(fractions)):
            parts[j].extend(idx[start:start + sizes[j]])
            start += sizes[j]
        parts[0].extend(idx[start:])
    return [sorted(p) for p in parts]


def split_strata(strata: Any, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split by a task's :meth:`Task.strata`: 1-D (class index, regression bin index) through
    :func:`stratified_split`, 2-D multi-hot ``[n, K]`` through :func:`iterative_split`."""
    import numpy as np

    arr = np.asarray(strata)
    if arr.ndim == 2:
        return iterative_split(arr, fractions, seed)
    if arr.ndim != 1:
        raise ValueError(f"strata must be 1-D or 2-D, got shape {arr.shape}")
    # Python ints: the same dictionary keys, order and shuffles as the class indices split before tasks existed.
    return stratified_split([int(v) for v in arr.tolist()], fractions, seed)


def iterative_split(multi_hot: Any, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split multi-label examples into ``len(fractions)`` parts with iterative stratification (Sechidis et al.,
    2011, the ``iterative-stratification`` package), so every label keeps its share in every part.

    The held-out parts are cut off the whole first, then among themselves (one seeded
    ``MultilabelStratifiedShuffleSplit`` each). Afterwards every label that has examples but none in the first
    part (train) gets one moved back from a held-out part: a label never seen in training cannot be learned, and
    iterative stratification alone places a label with one or two examples anywhere.

    Returns:
        One sorted list of indices per fraction.
    """
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    y = np.asarray(multi_hot, dtype=np.int64)
    n = len(y)
    parts: list[list[int]] = [list(range(n))] + [[] for _ in fractions[1:]]
    rest = 1.0
    for j in range(1, len(fractions)):
        pool = parts[0]
        # The share of what is left; at least one example when the pool can spare one (as stratified_split does).
        size = round(len(pool) * fractions[j] / rest)
        size = min(max(size, 1 if fractions[j] > 0 else 0), len(pool) - 1)
        rest -= fractions[j]
        if size <= 0:
            continue
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed + j - 1)
        keep, held = next(splitter.split(np.zeros((len(pool), 1)), y[pool]))
        parts[j] = [pool[i] for i in held]
        parts[0] = [pool[i] for i in keep]
    in_train = y[parts[0]].sum(axis=0) > 0 if parts[0] else np.zeros(y.shape[1], dtype=bool)
    for k in np.nonzero((y.sum(axis=0) > 0) & ~in_train)[0]:
        for j in range(1, len(parts)):
            carriers = [i for i in parts[j] if y[i, k]]
            if carriers and len(parts[j]) > 1:
                parts[j].remove(carriers[0])
                parts[0].append(carriers[0])
                break
    return [sorted(p) for p in parts]
