"""The cleaned, split data set that the rest of the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE = "image-classification"
TEXT = "text-classification"
TASKS = (IMAGE, TEXT)


@dataclass
class Split:
    """One split: inputs (text, or an image file path) with label indices into :attr:`LabeledData.classes`."""

    inputs: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def counts(self, n_classes: int) -> list[int]:
        out = [0] * n_classes
        for y in self.labels:
            out[y] += 1
        return out


@dataclass
class LabeledData:
    """A cleaned data set with its train / val / test splits and the record of how it was made."""

    task: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    summary: dict[str, Any]
    fingerprint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)
