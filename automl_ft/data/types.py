"""The cleaned, split data set that the rest of the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automl_ft.tasks import Task

# The single-label task names from before problem types existed (still valid full names); modules that only
# need the modality should compare LabeledData.modality with IMAGE_MODALITY / TEXT_MODALITY.
IMAGE = "image-classification"
TEXT = "text-classification"
TASKS = (IMAGE, TEXT)
IMAGE_MODALITY = "image"
TEXT_MODALITY = "text"


@dataclass
class Split:
    """One split: inputs (text, or an absolute image file path) with their labels.

    ``labels`` per problem type: classification, a class index into :attr:`LabeledData.classes`; multilabel, a
    sorted list of class indices (possibly empty); regression, a float in the target's original units.
    """

    inputs: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def counts(self, n_classes: int) -> list[int]:
        """Examples per class (multilabel: examples carrying each label); all zero for regression targets."""
        out = [0] * n_classes
        for y in self.labels:
            if isinstance(y, (list, tuple)):
                for k in y:
                    out[k] += 1
            elif n_classes:
                out[y] += 1
        return out


@dataclass
class LabeledData:
    """A cleaned data set with its train / val / test splits and the record of how it was made."""

    task: str  # the full task name, f"{modality}-{problem}"
    classes: list[str]  # class names (classification, multilabel); [] for regression
    train: Split
    val: Split
    test: Split
    source: str
    summary: dict[str, Any]
    fingerprint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def modality(self) -> str:
        """``text`` or ``image`` (the first half of :attr:`task`)."""
        return self.task.partition("-")[0]

    @property
    def problem(self) -> str:
        """``classification``, ``multilabel`` or ``regression`` (the second half of :attr:`task`)."""
        return self.task.partition("-")[2]

    def fitted_task(self) -> Task:
        """The task fitted on the training labels (codec, imbalance, primary metric), made once per data set:
        training, search, export and the card all ask this one object."""
        task = self.__dict__.get("_fitted_task")
        if task is None:
            from automl_ft.tasks import get_task

            task = self.__dict__["_fitted_task"] = get_task(self.problem).fit(self.classes, self.train.labels)
        return task
