"""Labeled data: reading, cleaning and splitting image folders and text tables."""

from __future__ import annotations

from .dataset import detect_task, load_dataset
from .types import IMAGE, TASKS, TEXT, LabeledData, Split

__all__ = ["IMAGE", "TASKS", "TEXT", "LabeledData", "Split", "detect_task", "load_dataset"]
