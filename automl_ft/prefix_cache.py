"""Frozen-prefix caching: a text trial with freezing depth k runs its frozen first k layers once per input, not once
per epoch and trial.

With depth k the embeddings and layers 0..k-1 are frozen and in eval mode (adapt.set_frozen_eval: no dropout
there, no LoRA), and text has no augmentation, so their output for a text depends only on the backbone, its load
options, ``max_length`` and k. :class:`PrefixCache` keeps those token states (the real tokens only, float32) for
the whole process; :func:`install` swaps layers 0..k-1 of the trial's model for :class:`CachedLayers`, which put
the cached states of the current batch in place of the first frozen layer's output and pass them through the rest.
Every epoch and every later trial with the same backbone, k and max_length then starts at layer k.

Padding is the one difference: a batch pads to its longest text, and the cache holds real tokens only, so padded
positions enter layer k as zeros instead of what the frozen layers made of the pad token. Attention masks them as
keys and mean pooling ignores them, so the real tokens and the logits are the same (tested to 1e-5).

Text under ``augment: token-dropout | span-drop`` (loaders.perturb_tokens) is not cached. Images are, per augmented
view of a training image (image_prefix.py): random crops and flips change every prefix output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from automl_ft.backbones import Backbone
    from automl_ft.config import TrialConfig

# Above this many bytes of cached token states the cache stops growing and trials run the full model: SMS spam at
# 128 tokens is ~5,000 x 25 tokens x 384 x 4 B = 0.2 GB, Banking77 ~0.25 GB.
BUDGET_BYTES = 4 << 30
CAPTURE_BATCH = 64


class _Captured(Exception):
    """Raised by the capture hook after layer k-1: the rest of the forward pass is not needed."""


@dataclass
class PrefixCache:
    """Token states after the frozen prefix, per (backbone, options, max_length, k) and text."""

    budget: int = BUDGET_BYTES
    used: int = 0
    store: dict[tuple, dict[Any, torch.Tensor]] = field(default_factory=dict)
    enabled: bool = True
    unusable: set[tuple] = field(default_factory=set)  # image prefixes whose cached logits differed (image_prefix)


class CachedLayers(nn.Module):
    """Stands in for a frozen layer: the first one returns the batch's cached states (padded to the batch's length),
    the others pass them through. ``keys`` (the batch's texts) is set before every forward pass."""

    def __init__(self, table: dict[str, torch.Tensor] | None):
        super().__init__()
        self.table = table
        self.keys: list[str] = []

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.table is None:
            return hidden_states
        out = torch.zeros_like(hidden_states)
        for row, key in enumerate(self.keys):
            states = self.table[key]
            out[row, : len(states)] = states.to(out.device, out.dtype)
        return out


@dataclass
class Installed:
    """What :func:`install` did, for the trial's record (``adaptation["prefix_cache"]``)."""

    layers: int
    computed: int
    reused: int
    seconds: float
    first: Any = None  # CachedLayers (text) or image_prefix.CachedImagePrefix
    views: int | None = None  # images: augmented views cached per training image (0: the evaluation view)
    fill: Any = None  # images: computes the keys an epoch reads that are not cached yet (image_prefix._Prefix)

    def add(self, keys: list[Any]) -> None:
        """Make sure the cache holds ``keys`` (an image epoch's views), counting what was computed or reused."""
        if self.fill is None:
            return
        t0 = time.time()
        n = self.fill(keys)
        self.computed += n
        self.reused += len(set(keys)) - n
        self.seconds += time.time() - t0

    def record(self) -> dict[str, Any]:
        out = {"layers": self.layers, "computed": self.computed, "reused": self.reused,
               "seconds": round(self.seconds, 2)}
        if self.views is not None:
            out["views"] = self.views
        return out


def cache_key(config: TrialConfig, depth: int) -> tuple:
    import json

    return config.backbone, json.dumps(config.backbone_options, sort_keys=True), config.max_length, depth


def applies(config: TrialConfig, backbone: Backbone, cache: PrefixCache) -> int:
    """The number of layers a trial can skip: its freezing depth for a text encoder (0: nothing cached)."""
    if not cache.enabled or config.modality != "text" or config.adaptation == "probe":
        return 0
    if config.augment not in (None, "none"):  # perturbed tokens: the prefix's output changes every epoch
        return 0
    if type(backbone.model).__name__ != "TextClassifier":
        return 0
    return min(config.freeze_depth, backbone.num_blocks - 1)  # the last layer never: the neck follows it


def install(backbone: Backbone, config: TrialConfig, train_inputs: list[str], val_inputs: list[str], pre: Any,
            caches: Any, device: torch.device) -> Installed | None:
    """Cache the frozen prefix's outputs for the trial's inputs (those not cached yet) and swap the frozen layers of
    ``backbone`` for cached ones: token states for text (:class:`CachedLayers`), block outputs per image view
    (image_prefix.py). None when nothing applies or the outputs would exceed the budget."""
    if config.modality == "image":
        from automl_ft import image_prefix

        return image_prefix.install(backbone, config, train_inputs, val_inputs, pre, caches, device)
    return _install_text(backbone, config, train_inputs + val_inputs, pre, caches, device)


def _install_text(backbone: Backbone, config: TrialConfig, inputs: list[str], pre: Any, caches: Any,
                  device: torch.device) -> Installed | None:
    import numpy as np

    from automl_ft.backbones import _largest_block_list
    from automl_ft.modalities import get_modality

    cache: PrefixCache = caches.prefix
    depth = applies(config, backbone, cache)
    if depth < 1:
        return None
    layers = _largest_block_list(backbone.model.encoder)
    if layers is None or list(layers)[: len(backbone.parts.blocks)] != backbone.parts.blocks:
        return None
    started = time.time()
    table = cache.store.setdefault(cache_key(config, depth), {})
    todo = [x for x in dict.fromkeys(inputs) if x not in table]
    hidden = int(backbone.model.head.in_features)
    if todo:
        ids = caches.tokens.get(pre, todo)
        need = sum(len(x) for x in ids) * hidden * 4
        if cache.used + need > cache.budget:
            return None
        seen: list[Any] = []

        def hook(_m, _args, output):
            seen.append(output)
            raise _Captured

        handle = layers[depth - 1].register_forward_hook(hook)
        model = backbone.model
        was_training = model.training
        model.eval()
        batches = get_modality("text").make_batches(config, todo, np.zeros(len(todo), np.float32), pre, caches,
                                                    train=False, batch_size=CAPTURE_BATCH)
        try:
            with torch.inference_mode():
                for x, _, idx in batches:
                    seen.clear()
                    try:
                        model(**{k: v.to(device) for k, v in x.items()})
                    except _Captured:
                        pass
                    if not seen or not isinstance(seen[0], torch.Tensor):  # a layer returning tuples: not cached
                        return None
                    lengths = x["attention_mask"].sum(1).tolist()
                    for row, i in enumerate(idx):
                        table[todo[i]] = seen[0][row, : lengths[row]].detach().float().cpu().clone()
        finally:
            handle.remove()
            model.train(was_training)
        cache.used += need
    first = CachedLayers(table)
    layers[0] = first
    for i in range(1, depth):
        layers[i] = CachedLayers(None)
    return Installed(depth, len(todo), len(set(inputs)) - len(todo), time.time() - started, first)


class KeyedBatches:
    """Batches that tell the cached layers which inputs they hold (their positions in ``inputs``): texts, or for
    images ``(path, view)`` pairs, the view being the epoch's (training) or the evaluation view."""

    def __init__(self, batches: Any, inputs: list[str], installed: Installed, *, train: bool = False):
        self.batches = batches
        self.inputs = inputs
        self.installed = installed
        self.first = installed.first
        self.views = installed.views
        self.train = train
        self.view: int | None = None  # images: the view this epoch reads
        if self.views is not None:  # the cache holds the pixels' block outputs: skip decoding and augmenting
            from automl_ft.image_prefix import EVAL_VIEW, train_view

            self.view = train_view(0, self.views) if train else EVAL_VIEW
            batches.placeholder = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)
        if self.train and self.views is not None:  # this epoch's views, computed when it first needs them
            from automl_ft.image_prefix import train_keys, train_view

            self.view = train_view(epoch, self.views)
            self.installed.add(train_keys(self.inputs, epoch, self.views))

    def __len__(self) -> int:
        return len(self.batches)

    def _key(self, i: int) -> Any:
        return self.inputs[i] if self.view is None else (self.inputs[i], self.view)

    def __iter__(self):
        for x, targets, idx in self.batches:
            self.first.keys = [self._key(i) for i in idx]
            yield x, targets, idx
