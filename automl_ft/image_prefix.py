"""Frozen-prefix caching for images: a CNN trial with freezing depth k runs its stem and first k blocks once per
image view, not once per epoch and trial.

The frozen prefix is in eval mode (adapt.set_frozen_eval: BatchNorm's running statistics, no drop-path), so its
output depends only on the pixels it is given. Evaluation pixels never change; training pixels do, through random
crops and flips. The cache therefore holds a fixed set of :data:`VIEWS` augmented views of every training image,
drawn once per study from a seed that depends on the image and the view only (so every trial with the same backbone,
image size, augmentation and depth shares them), and epoch e trains on view ``e % VIEWS``. With ``augment: none``
the one view is the evaluation view.

Fewer distinct views is what a cache trades for time (issue 13): with 2 views an 8-epoch trial computes its prefix
2 + 1 times per image instead of 8 + 8 (train + validation). bench/bench_prefix.py --modality image measures both
the time and what the fixed views cost in accuracy.

The stem's first module returns the cached block output of the batch and the other prefix modules pass it through
(:class:`CachedImagePrefix`); the batches then carry a 1-pixel placeholder instead of decoded, augmented pixels.
A model whose forward pass is not a plain chain from stem through blocks (a ViT adds position embeddings between
them) fails the install's check, that the cached model's logits match the full model's on validation images, and
trains uncached.
"""

from __future__ import annotations

import random
import time
import zlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from automl_ft.backbones import Backbone
    from automl_ft.config import TrialConfig
    from automl_ft.prefix_cache import Installed, PrefixCache

# Augmented views per training image. Measured on the CIFAR subset (bench/bench_prefix.py --modality image).
VIEWS = 2
EVAL_VIEW = -1
CAPTURE_BATCH = 64
# The cached model must reproduce the full model's logits on this many validation images to this tolerance
# (float32 reordering inside convolutions differs by ~1e-6).
CHECK_IMAGES = 8
CHECK_TOLERANCE = 1e-4


class _Captured(Exception):
    """Raised by the capture hook after block k-1: the rest of the forward pass is not needed."""


class CachedImagePrefix(nn.Module):
    """Stands in for a frozen prefix module: the first returns the batch's cached block output, the others pass
    their input through. ``keys`` (the batch's ``(path, view)`` pairs) is set before every forward pass."""

    def __init__(self, table: dict[tuple[str, int], torch.Tensor] | None):
        super().__init__()
        self.table = table
        self.keys: list[tuple[str, int]] = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.table is None:
            return x
        return torch.stack([self.table[k] for k in self.keys]).to(x.device)


def views(config: TrialConfig) -> int:
    """Training views cached per image: 0 means the evaluation view (no augmentation)."""
    if (config.augment or "none") == "none":
        return 0
    return max(1, min(VIEWS, config.epochs))


def applies(config: TrialConfig, backbone: Backbone, cache: PrefixCache) -> int:
    """The number of blocks a trial can skip (0: nothing cached)."""
    if not cache.enabled or config.modality != "image" or config.adaptation in ("probe", "setfit"):
        return 0
    if backbone.dense or type(backbone.model).__name__ != "ImageClassifier":
        return 0
    stem = backbone.parts.stem
    if any(not isinstance(m, nn.Module) for m in stem):  # ViT's cls_token / pos_embed join between stem and blocks
        return 0
    return min(config.freeze_depth, backbone.num_blocks - 1)  # the last block never: the neck follows it


def cache_key(config: TrialConfig, depth: int) -> tuple:
    import json

    return ("image", config.backbone, json.dumps(config.backbone_options, sort_keys=True), config.image_size,
            config.augment or "none", views(config), depth)


def _seeded(path: str, view: int) -> None:
    """Every random source timm's transforms draw from, seeded by the image and the view alone."""
    seed = zlib.crc32(f"{view}:{path}".encode())
    random.seed(seed)
    torch.manual_seed(seed)
    import numpy as np

    np.random.seed(seed)


def view_tensor(path: str, view: int, pre: Any, transform: Any, images: Any) -> torch.Tensor:
    """The pixels of ``path`` as view ``view`` shows them (the evaluation transform for :data:`EVAL_VIEW`)."""
    if view == EVAL_VIEW or transform is None:
        return images.eval_tensor(path, pre)
    _seeded(path, view)
    return transform(images.image(path))


def _parents(root: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    return {id(child): (parent, name) for parent in root.modules() for name, child in parent._modules.items()
            if child is not None}


def install(backbone: Backbone, config: TrialConfig, train_inputs: list[str], val_inputs: list[str], pre: Any,
            caches: Any, device: torch.device) -> Installed | None:
    """Cache the frozen prefix's output for every (image, view) a trial needs and swap the prefix for
    :class:`CachedImagePrefix`. None when nothing applies, the outputs would exceed the budget, or the cached
    model's logits differ from the full model's."""
    import numpy as np

    from automl_ft.loaders import train_image_transform
    from automl_ft.prefix_cache import Installed

    cache: PrefixCache = caches.prefix
    depth = applies(config, backbone, cache)
    if depth < 1 or not val_inputs:
        return None
    n_views = views(config)
    started = time.time()
    table = cache.store.setdefault(cache_key(config, depth), {})
    train_views = range(n_views) if n_views else [EVAL_VIEW]
    wanted = list(dict.fromkeys([(p, v) for p in train_inputs for v in train_views]
                                + [(p, EVAL_VIEW) for p in val_inputs]))
    todo = [k for k in wanted if k not in table]
    model = backbone.model
    blocks = backbone.parts.blocks
    prefix = [m for m in backbone.parts.stem if isinstance(m, nn.Module)] + list(blocks[:depth])
    parents = _parents(model)
    key = cache_key(config, depth)
    if not prefix or any(id(m) not in parents for m in prefix) or key in cache.unusable:
        return None
    places = [parents[id(m)] for m in prefix]
    was_training = model.training
    model.eval()
    check = [(p, EVAL_VIEW) for p in val_inputs[:CHECK_IMAGES]]
    with torch.inference_mode():
        check_x = torch.stack([view_tensor(p, v, pre, None, caches.images) for p, v in check]).to(device)
        reference = model(pixel_values=check_x).float()
    if todo:
        transform = train_image_transform(pre, config.augment) if n_views else None
        seen: list[Any] = []

        def hook(_m, _args, output):
            seen.append(output)
            raise _Captured

        handle = blocks[depth - 1].register_forward_hook(hook)
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        fresh: dict[tuple[str, int], torch.Tensor] = {}
        try:
            with torch.inference_mode():
                for start in range(0, len(todo), CAPTURE_BATCH):
                    chunk = todo[start:start + CAPTURE_BATCH]
                    x = torch.stack([view_tensor(p, v, pre, transform, caches.images) for p, v in chunk])
                    seen.clear()
                    try:
                        model(pixel_values=x.to(device))
                    except _Captured:
                        pass
                    if not seen or not isinstance(seen[0], torch.Tensor):
                        return None
                    out = seen[0].detach().float().cpu()
                    if start == 0 and cache.used + out[0].numel() * 4 * len(todo) > cache.budget:
                        return None
                    for row, k in enumerate(chunk):
                        fresh[k] = out[row].clone()
        finally:
            handle.remove()
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            model.train(was_training)
        table.update(fresh)
        cache.used += sum(t.numel() * 4 for t in fresh.values())
    cached = [CachedImagePrefix(table)] + [CachedImagePrefix(None) for _ in prefix[1:]]
    for (parent, name), new in zip(places, cached):
        parent._modules[name] = new
    model.eval()
    cached[0].keys = check
    with torch.inference_mode():
        got = model(pixel_values=check_x[:, :1, :1, :1]).float()
    model.train(was_training)
    if float((got - reference).abs().max()) > CHECK_TOLERANCE * (1 + float(reference.abs().max())):
        for (parent, name), old in zip(places, prefix):  # not a plain chain: train the full model
            parent._modules[name] = old
        cache.used -= sum(t.numel() * 4 for t in table.values())
        cache.store.pop(key, None)
        cache.unusable.add(key)
        return None
    return Installed(depth, len(todo), len(wanted) - len(todo), time.time() - started, cached[0], views=n_views)
