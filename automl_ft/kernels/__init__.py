"""Fused Triton kernels of automl-ft, each beside its PyTorch reference (installed as ``automl_ft.kernels``).

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on CPU tensors.
"""

from __future__ import annotations

from automl_ft.errors import KernelUnavailableError

from ._backend import BACKENDS, TRITON_INTERPRETER, resolve_backend
from .lora import lora_linear
from .lora_layer import LoRAConv1x1, LoRALinear, is_pointwise_conv
from .optim import FusedAdamW

__all__ = [
    "BACKENDS",
    "TRITON_INTERPRETER",
    "FusedAdamW",
    "KernelUnavailableError",
    "LoRAConv1x1",
    "LoRALinear",
    "is_pointwise_conv",
    "lora_linear",
    "resolve_backend",
]
