"""PyTorch references of every kernel: the CPU fallback of ``backend="torch"`` and the oracle of the tests.

Tests and benchmarks import these; nobody re-types the math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    *,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PEFT's unmerged LoRA: ``x @ weight.T + bias + scaling * (dropout(x) @ lora_a.T) @ lora_b.T``.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``, frozen. bias: ``[out]`` or None, frozen.
        lora_a: ``[r, in]``. lora_b: ``[out, r]``.
        scaling: ``alpha / r``.
        dropout_p, training: LoRA dropout on the adapter branch's input, active only when training.
        dropout_mask: a ``{0, 1}`` mask shaped like ``x`` to use instead of drawing one (the tests pass the Triton
            kernel's own mask here, so both paths drop the same elements); kept elements are scaled by 1/(1-p).

    Returns:
        ``[..., out]`` in x's dtype. Autograd gives the gradients of x, lora_a and lora_b.
    """
    base = F.linear(x, weight, bias)
    if dropout_mask is not None:
        xd = x * dropout_mask.to(x.dtype) / (1.0 - dropout_p) if dropout_p > 0 else x
    else:
        xd = F.dropout(x, p=dropout_p, training=training) if dropout_p > 0 else x
    # The adapters may be kept in another dtype than the activations (fp32 adapters on a bf16 model); compute the
    # branch in the activations' dtype like PEFT does under autocast.
    low_rank = F.linear(F.linear(xd, lora_a.to(x.dtype)), lora_b.to(x.dtype))
    return base + low_rank * scaling
