"""Fused LoRA linear layer (forward and backward).

TODO(issue 3): Triton kernels, launchers and the autograd Function. Until then backend="triton" is unavailable.
"""

from __future__ import annotations

import torch

from automl_ft.errors import KernelUnavailableError

from ._backend import resolve_backend
from .reference import lora_linear_reference


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ weight.T + bias + scaling * (dropout(x) @ lora_a.T) @ lora_b.T`` (PEFT's unmerged LoRA)."""
    chosen = resolve_backend(backend, x.device.type, "lora_linear")
    if chosen == "torch":
        return lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training)
    raise KernelUnavailableError("lora_linear: the Triton backend is not built yet")
