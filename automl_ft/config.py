"""The resolved configuration of one trial, written as ``config.json`` beside its checkpoint.

Every exported model can be traced to this record: it is enough, with the data, to rebuild the model and rerun
the trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from automl_ft.modalities.image import AUGMENTS  # noqa: F401  (re-exported: the search space validates with it)

IMBALANCE = ("none", "weighted", "sampler")
# probe: every block frozen, the head fitted in closed form (probe.py); setfit: the body tuned on contrastive pairs,
# then the probe's head fitted on it (setfit.py)
ADAPTATIONS = ("full", "lora", "probe", "setfit")
HEAD_INITS = ("random", "probe")  # probe: linear-probe-then-fine-tune


@dataclass
class TrialConfig:
    """Hyper-parameters and set-up of one fine-tuning run (one Optuna trial)."""

    task: str  # full name, modality-problem: text-classification, image-regression, ...
    backbone: str
    num_classes: int  # outputs of the head: classes (classification, multilabel) or 1 (regression)
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
    # the task's searched choices: regression's loss (mse | huber); imbalanced classification's remedy
    loss: str | None = None
    imbalance: str | None = None
    head_init: str = "random"
    # the probe's regularisation when fixed (a cross-validated refit: the folds' median); None: picked on val
    probe_strength: float | None = None
    # setfit: rounds of pair sampling (each round pairs every example with one of its class and one of another)
    setfit_iterations: int = 20
    # Lower fidelity at Hyperband's lowest rung (pruner.subset_fraction, issue 13): the first ``subset_epochs``
    # epochs stop after this fraction of the epoch's shuffled batches, so a trial pruned there costs that much less
    subset_epochs: int = 0
    subset_fraction: float = 1.0
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from automl_ft.modalities import get_modality
        from automl_ft.tasks import split_task_name

        split_task_name(self.task)  # ValueError naming the known tasks
        if self.num_classes < 1:
            raise ValueError(f"num_classes (the head's outputs) must be >= 1, got {self.num_classes}")
        if self.imbalance is not None and self.imbalance not in IMBALANCE:
            raise ValueError(f"imbalance must be one of {IMBALANCE}, got {self.imbalance!r}")
        if self.adaptation not in ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {', '.join(ADAPTATIONS)}, got {self.adaptation!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if self.adaptation == "lora":
            if self.lora_rank is None or not 1 <= int(self.lora_rank) <= 256:
                raise ValueError(f"lora_rank must be in 1..256 for LoRA, got {self.lora_rank}")
            self.lora_rank = int(self.lora_rank)
            self.lora_alpha = float(self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank)
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.setfit_iterations < 1:
            raise ValueError(f"setfit_iterations must be >= 1, got {self.setfit_iterations}")
        if self.subset_epochs < 0 or not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError(f"subset_epochs must be >= 0 and subset_fraction in (0, 1], got {self.subset_epochs} "
                             f"and {self.subset_fraction}")
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
        error = get_modality(self.modality).config_error(self)
        if error:
            raise ValueError(error)

    @property
    def modality(self) -> str:
        from automl_ft.tasks import split_task_name

        return split_task_name(self.task)[0]

    @property
    def problem(self) -> str:
        from automl_ft.tasks import split_task_name

        return split_task_name(self.task)[1]

    def epoch_batches(self, epoch: int, batches: int) -> int:
        """How many of an epoch's ``batches`` epoch ``epoch`` (from 0) trains on: all, or the subset's share."""
        if epoch < self.subset_epochs and self.subset_fraction < 1.0:
            return max(1, math.ceil(batches * self.subset_fraction))
        return batches

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
