"""Labeled data: reading, cleaning and splitting image folders and tables of texts or image paths, for every
problem type of :mod:`automl_ft.tasks`."""

from __future__ import annotations

from .dataset import detect_task, load_dataset
from .types import IMAGE, IMAGE_MODALITY, TASKS, TEXT, TEXT_MODALITY, LabeledData, Split

__all__ = ["IMAGE", "IMAGE_MODALITY", "TASKS", "TEXT", "TEXT_MODALITY", "LabeledData", "Split", "detect_task",
           "load_dataset"]
