"""How a backbone is adapted: freezing depth, then full fine-tuning or LoRA on what is left, and merging for export.

Freezing depth k freezes the stem and the first k of the N blocks (and the neck when k = N: a linear probe).
Frozen modules stay in eval mode (no BatchNorm statistics drift, no dropout) and, because none of their tensors
requires grad, autograd never records them: backward stops at block k.

With LoRA, adapters go on the linear layers (and pointwise convs of CNNs) of the blocks that are not frozen;
everything but the adapters and the head is frozen, so the trial's delta is a few MB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from automl_ft.backbones import Backbone
from automl_ft.kernels import LoRAConv1x1, LoRALinear, is_pointwise_conv

ADAPTATIONS = ("full", "lora")


@dataclass
class AdaptationSummary:
    freeze_depth: int
    num_blocks: int
    adaptation: str
    lora_layers: int
    trainable_params: int
    total_params: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _modules_of(items) -> list[nn.Module]:
    return [m for m in items if isinstance(m, nn.Module)]


def _freeze(items) -> None:
    for item in items:  # modules and bare parameters (ViT's cls_token) both take requires_grad_
        item.requires_grad_(False)


def set_frozen_eval(model: nn.Module, modules: list[nn.Module]) -> None:
    """Keep ``modules`` in eval mode whenever ``model.train()`` is called."""
    frozen = list(modules)
    original_train = type(model).train

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        original_train(self, mode)
        for m in frozen:
            m.eval()
        return self

    model.train = train.__get__(model)  # type: ignore[method-assign]
    model.frozen_modules = frozen  # type: ignore[attr-defined]
    model.train(model.training)


def apply_adaptation(backbone: Backbone, *, freeze_depth: int, adaptation: str = "full", lora_rank: int = 8,
                     lora_alpha: float = 16.0, lora_dropout: float = 0.0, lora_targets: str | None = None,
                     backend: str = "auto") -> AdaptationSummary:
    """Freeze the first ``freeze_depth`` blocks and set up full fine-tuning or LoRA on the rest, in place.

    Args:
        lora_targets: optional regex on module names (relative to the model) restricting which layers get LoRA;
            default: every ``nn.Linear`` (and pointwise ``nn.Conv2d``) in the trainable blocks and neck.
        backend: kernel backend of the LoRA layers.
    """
    parts = backbone.parts
    n = len(parts.blocks)
    if not 0 <= freeze_depth <= n:
        raise ValueError(f"freeze_depth {freeze_depth} out of range 0..{n} for {backbone.name}")
    if adaptation not in ADAPTATIONS:
        raise ValueError(f"adaptation must be one of {ADAPTATIONS}, got {adaptation!r}")
    model = backbone.model
    frozen_items = list(parts.stem) + list(parts.blocks[:freeze_depth])
    if freeze_depth == n:
        frozen_items += parts.neck
    _freeze(frozen_items)
    frozen_modules = _modules_of(frozen_items)

    lora_layers = 0
    if adaptation == "lora":
        trainable_region = list(parts.blocks[freeze_depth:]) + (list(parts.neck) if freeze_depth < n else [])
        lora_layers = inject_lora(model, trainable_region, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                                  targets=lora_targets, backend=backend)
        head_params = {id(p) for h in parts.head for p in h.parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(id(p) in head_params or name.endswith(("lora_a", "lora_b")))
        # Norm statistics of frozen layers stay the pretrained ones (PEFT's semantics: only adapters and head move).
        # A head's own norms train with it: a segmentation decoder's BatchNorms start at mean 0 / var 1.
        in_head = {id(m) for h in parts.head for m in h.modules()}
        frozen_modules += [m for m in model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in in_head]
    set_frozen_eval(model, frozen_modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return AdaptationSummary(freeze_depth, n, adaptation, lora_layers, trainable, total)


def inject_lora(model: nn.Module, region: list[nn.Module], *, rank: int, alpha: float, dropout: float,
                targets: str | None = None, backend: str = "auto") -> int:
    """Replace linear layers (and pointwise convs) inside ``region`` by LoRA wrappers; returns how many."""
    in_region = {id(m) for r in region for m in r.modules()}
    pattern = re.compile(targets) if targets else None
    replace: list[tuple[nn.Module, str, nn.Module]] = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if id(child) not in in_region or isinstance(child, (LoRALinear, LoRAConv1x1)):
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if pattern is not None and not pattern.search(full):
                continue
            if type(child) is nn.Linear or is_pointwise_conv(child):
                replace.append((parent, child_name, child))
    for parent, child_name, child in replace:
        wrapper_cls = LoRALinear if isinstance(child, nn.Linear) else LoRAConv1x1
        setattr(parent, child_name, wrapper_cls(child, rank, alpha, dropout, backend))
    return len(replace)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRA wrapper by the plain layer with the merged weight (for export); returns how many."""
    replace = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, (LoRALinear, LoRAConv1x1)):
                replace.append((parent, child_name, child))
    for parent, child_name, child in replace:
        merged = child.merge()
        merged.requires_grad_(False)
        setattr(parent, child_name, merged)
    return len(replace)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a trial changes: trainable parameters and every persistent buffer (BatchNorm statistics).

    Frozen weights are the pretrained ones and are rebuilt from the backbone, so a LoRA trial's checkpoint holds
    only adapters, head and buffers.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().contiguous() for k, v in state.items() if k in trainable or k in buffers}
