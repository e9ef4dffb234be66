"""Texts: tokenized once per (tokenizer, max_length), padded per batch, length-bucketed for training."""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from . import TEXT, register_modality
from .base import Modality

# training-time perturbations of the token ids (loaders.perturb_tokens); "none" leaves texts as they are
TEXT_AUGMENTS = ("none", "token-dropout", "span-drop")
# ONNX example sequence length: short, so tracing is quick; the axis is symbolic anyway.
EXAMPLE_TOKENS = 16


@register_modality
class TextModality(Modality):
    name = TEXT
    input_names = ("input_ids", "attention_mask")

    def config_error(self, config) -> str | None:
        if config.max_length is None or config.max_length < 8:
            return f"text trials need max_length >= 8, got {config.max_length}"
        if (config.augment or "none") not in TEXT_AUGMENTS:
            return f"text augment must be one of {TEXT_AUGMENTS}, got {config.augment!r}"
        return None

    def describe(self, config) -> str:
        return f"len {config.max_length}" + (f" {config.augment}" if config.augment not in (None, "none") else "")

    def make_preprocess(self, backbone, config):
        from automl_ft.preprocess import TextPreprocess

        return TextPreprocess.from_hf(backbone.tokenizer, int(config.max_length))

    def make_batches(self, config, inputs, targets, pre, caches, *, train, batch_size, weights=None, spatial=False):
        if spatial:
            raise ValueError("texts have no spatial targets")
        from automl_ft.loaders import TextBatches

        ids = caches.tokens.get(pre, inputs)
        return TextBatches(ids, targets, pre, batch_size, shuffle=train, seed=config.seed, weights=weights,
                           augment=config.augment if train else None)

    def onnx_example(self, config):
        import torch

        args = (torch.randint(1000, 2000, (2, EXAMPLE_TOKENS)), torch.ones(2, EXAMPLE_TOKENS, dtype=torch.long))
        batch = torch.export.Dim("batch", min=1, max=65536)
        seq = torch.export.Dim("sequence", min=1, max=max(int(config.max_length or 512), EXAMPLE_TOKENS))
        shapes = {n: {0: batch, 1: seq} for n in self.input_names}
        axes = {n: {0: "batch", 1: "sequence"} for n in self.input_names}
        return args, shapes, axes

    def example_feeds(self, pre, inputs: Sequence[str], batch_size: int = 1) -> dict[str, np.ndarray]:
        # the median-length validation text: what a typical request costs, not the longest one
        ids = pre.encode(list(inputs))
        median = sorted(ids, key=len)[len(ids) // 2]
        return pre.pad([median] * batch_size)
