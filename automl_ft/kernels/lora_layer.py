"""LoRA modules on top of :func:`lora_linear`: a frozen ``nn.Linear`` (or 1x1 ``nn.Conv2d``) plus adapters.

Conventions are PEFT's, so adapters convert to PEFT's format by renaming: ``lora_a`` is ``[r, in]`` initialised
like PEFT (Kaiming-uniform, a=sqrt(5)), ``lora_b`` is ``[out, r]`` initialised to zero (the layer starts as the
pretrained one), scaling is ``alpha / r``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lora import lora_linear


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with a trainable low-rank update.

    Args:
        base: the pretrained layer; its weight and bias are frozen here.
        r: adapter rank (1..256). alpha: scaling numerator (scaling = alpha / r).
        dropout: LoRA dropout on the adapter branch's input.
        backend: kernel backend of :func:`lora_linear` ("auto", "triton", "addmm", "torch").
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if not 1 <= int(r) <= 256:
            raise ValueError(f"LoRA rank must be in 1..256, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.base.requires_grad_(False)
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        self.dropout = float(dropout)
        self.backend = backend
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(self.r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, self.r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        # Code that inspects `layer.weight` (e.g. a model's dtype probe) keeps working on a wrapped layer.
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_linear(
            x, self.base.weight, self.base.bias, self.lora_a, self.lora_b, self.scaling,
            self.dropout, self.training, backend=self.backend,
        )

    def delta_weight(self) -> torch.Tensor:
        """``scaling * lora_b @ lora_a`` in fp32, ``[out, in]``."""
        return (self.lora_b.detach().float() @ self.lora_a.detach().float()) * self.scaling

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (without dropout): ``W + scaling * B @ A``."""
        w = self.base.weight
        merged = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            merged.weight.copy_((w.float() + self.delta_weight()).to(w.dtype))
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g}, backend={self.backend!r}"


class LoRAConv1x1(nn.Module):
    """LoRA on a pointwise (1x1, ungrouped, stride 1) ``nn.Conv2d``: the same map as a linear layer over channels.

    The NCHW input is viewed as ``[N, H, W, C]`` (free for channels-last tensors) so the same fused kernel serves
    CNNs' projection convs, which hold most of an EfficientNet's weights.
    """

    def __init__(self, base: nn.Conv2d, r: int, alpha: float, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if not is_pointwise_conv(base):
            raise ValueError(f"LoRAConv1x1 needs a 1x1, stride-1, ungrouped conv, got {base}")
        linear = nn.Linear(base.in_channels, base.out_channels, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight.flatten(1))
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        self.lora = LoRALinear(linear, r, alpha, dropout, backend)

    @property
    def weight(self) -> torch.Tensor:
        return self.lora.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lora(x.permute(0, 2, 3, 1))
        return y.permute(0, 3, 1, 2)

    def merge(self) -> nn.Conv2d:
        lin = self.lora.merge()
        conv = nn.Conv2d(lin.in_features, lin.out_features, 1, bias=lin.bias is not None,
                         device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(lin.weight[:, :, None, None])
            if lin.bias is not None:
                conv.bias.copy_(lin.bias)
        return conv


def is_pointwise_conv(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1))
