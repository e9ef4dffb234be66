"""Stratified, seeded train / val / test split."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence


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
