"""The resolved configuration of one trial, written as ``config.json`` beside its checkpoint.

Every exported model can be traced to this record: it is enough, with the data, to rebuild the model and rerun
the trial.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from automl_ft.data import IMAGE, TASKS, TEXT

AUGMENTS = ("none", "crop", "crop-flip", "randaugment")


@dataclass
class TrialConfig:
    """Hyper-parameters and set-up of one fine-tuning run (one Optuna trial)."""

    task: str
    backbone: str
    num_classes: int
    freeze_depth: int = 0
    adaptation: str = "full"
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lr: float = 5e-5
    head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    anchor_decay: float = 0.0
    label_smoothing: float = 0.0
    dropout: float = 0.0
    batch_size: int = 32
    epochs: int = 3
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    patience: int = 2
    grad_accumulation: int = 1
    max_length: int | None = None
    image_size: int | None = None
    augment: str | None = None
    seed: int = 0
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.adaptation not in ("full", "lora"):
            raise ValueError(f"adaptation must be 'full' or 'lora', got {self.adaptation!r}")
        if self.adaptation == "lora":
            if self.lora_rank is None or not 1 <= int(self.lora_rank) <= 256:
                raise ValueError(f"lora_rank must be in 1..256 for LoRA, got {self.lora_rank}")
            self.lora_rank = int(self.lora_rank)
            self.lora_alpha = float(self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank)
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.freeze_depth < 0:
            raise ValueError(f"freeze_depth must be >= 0, got {self.freeze_depth}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "anchor_decay", "label_smoothing", "dropout", "warmup_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.dropout < 1.0 or self.warmup_ratio >= 1.0:
            raise ValueError("label_smoothing, dropout and warmup_ratio must be below 1")
        if self.batch_size < 1 or self.epochs < 1 or self.grad_accumulation < 1 or self.patience < 1:
            raise ValueError("batch_size, epochs, grad_accumulation and patience must be >= 1")
        if self.task == TEXT and (self.max_length is None or self.max_length < 8):
            raise ValueError(f"text trials need max_length >= 8, got {self.max_length}")
        if self.task == IMAGE:
            if self.image_size is None or self.image_size < 16:
                raise ValueError(f"image trials need image_size >= 16, got {self.image_size}")
            if (self.augment or "none") not in AUGMENTS:
                raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accumulation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrialConfig keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrialConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
