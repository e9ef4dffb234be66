"""Frozen-prefix caching for images: a CNN trial with freezing depth k runs its stem and first k blocks once per
image view, not once per epoch and trial.

The frozen prefix is in eval mode (adapt.set_frozen_eval: BatchNorm's running statistics, no drop-path), so its
output depends only on the pixels it is given. Evaluation pixels never change; training pixels do, through random
crops and flips. The cache therefore holds augmented views of every training image, each drawn once per study from
a seed that depends on the image and the view only (so every trial with the same backbone, image size, augmentation
and depth shares them), and epoch e trains on view ``e % views``. With ``augment: none``
the one view is the evaluation view.

A trial gets as many views as it has epochs (up to :data:`VIEWS`): each epoch sees other crops and flips, as
without the cache. Fewer views would be faster and cost accuracy: with 2 views for 4 epochs, epochs took 11.4 s
instead of 23.2 s on the CIFAR subset but the 3 trials' validation accuracy fell by 0, 4.8 and 2.0 points
(bench/results/prefix-image-2views-*). So the saving is what trials and cross-validation folds share: the
validation images' prefix runs once, not every epoch, and every later trial (and fold) with the same backbone, size,
augmentation and depth reads its views from the cache. Each epoch's views are computed when it starts, so a pruned
trial pays only for the epochs it ran.

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

# Augmented views per training image at most (the default spaces train 4-8 epochs).
VIEWS = 8
EVAL_VIEW = -1
# Images per prefix pass. On the 2-core CPU small batches are faster (EfficientNet-Lite0, 160 px, 8 blocks, 512
# augmented CIFAR images: 178 img/s at 8, 146 at 16, 96-141 at 32, 68-72 at 64; activations at 80x80 outgrow the
# caches); a GPU wants large ones.
CAPTURE_BATCH = {"cpu": 8, "cuda": 64}
# The cached model must reproduce the full model's logits on this many validation images to this tolerance
# (float32 reordering inside convolutions differs by ~1e-6).
CHECK_IMAGES = 8
CHECK_TOLERANCE = 1e-4


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


class _Prefix:
    """The frozen prefix as a chain of modules, and the views it has computed."""

    def __init__(self, modules: list[nn.Module], table: dict, cache: PrefixCache, pre: Any, transform: Any,
                 images: Any, device: torch.device):
        self.modules, self.table, self.cache = modules, table, cache
        self.pre, self.transform, self.images, self.device = pre, transform, images, device

    def ensure(self, keys: list[tuple[str, int]]) -> int:
        """Compute the block outputs of the ``(path, view)`` keys not cached yet; returns how many. The views'
        seeds leave the trial's random streams where they were."""
        import numpy as np

        todo = [k for k in dict.fromkeys(keys) if k not in self.table]
        if not todo:
            return 0
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            with torch.inference_mode():
                batch = CAPTURE_BATCH.get(self.device.type, 64)
                for start in range(0, len(todo), batch):
                    chunk = todo[start:start + batch]
                    x = torch.stack([view_tensor(p, v, self.pre, self.transform, self.images) for p, v in chunk])
                    x = x.to(self.device)
                    for m in self.modules:
                        m.eval()
                        x = m(x)
                    out = x.float().cpu()
                    for row, k in enumerate(chunk):
                        self.table[k] = out[row].clone()
                    self.cache.used += out[0].numel() * 4 * len(chunk)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        return len(todo)


def train_view(epoch: int, n_views: int) -> int:
    """The view training epoch ``epoch`` reads (the evaluation view without augmentation)."""
    return epoch % n_views if n_views else EVAL_VIEW


def train_keys(inputs: list[str], epoch: int, n_views: int) -> list[tuple[str, int]]:
    """The cached views training epoch ``epoch`` reads."""
    view = train_view(epoch, n_views)
    return [(p, view) for p in inputs]


def install(backbone: Backbone, config: TrialConfig, train_inputs: list[str], val_inputs: list[str], pre: Any,
            caches: Any, device: torch.device) -> Installed | None:
    """Swap the frozen prefix for :class:`CachedImagePrefix`, with the validation images' block outputs computed;
    each epoch's training views are computed when the epoch starts (``Installed.fill``), so a pruned trial pays
    only for the epochs it ran. None when nothing applies, all the views would exceed the budget, or the cached
    model's logits differ from the full model's."""
    from automl_ft.loaders import train_image_transform
    from automl_ft.prefix_cache import Installed

    cache: PrefixCache = caches.prefix
    depth = applies(config, backbone, cache)
    if depth < 1 or not val_inputs:
        return None
    n_views = views(config)
    model = backbone.model
    prefix = [m for m in backbone.parts.stem if isinstance(m, nn.Module)] + list(backbone.parts.blocks[:depth])
    parents = _parents(model)
    key = cache_key(config, depth)
    if not prefix or any(id(m) not in parents for m in prefix) or key in cache.unusable:
        return None
    places = [parents[id(m)] for m in prefix]
    started = time.time()
    table = cache.store.setdefault(key, {})
    runner = _Prefix(prefix, table, cache, pre, train_image_transform(pre, config.augment) if n_views else None,
                     caches.images, device)
    val_keys = [(p, EVAL_VIEW) for p in val_inputs]
    wanted = set(val_keys)
    for epoch in range(max(n_views, 1)):
        wanted.update(train_keys(train_inputs, epoch, n_views))
    computed = runner.ensure(val_keys[:1])  # one block output: its size
    size = table[val_keys[0]].numel() * 4
    if cache.used + size * sum(k not in table for k in wanted) > cache.budget:
        if computed:
            del table[val_keys[0]]
            cache.used -= size
        if not table:
            cache.store.pop(key, None)
        return None
    computed += runner.ensure(val_keys)

    was_training = model.training
    model.eval()
    check = val_keys[:CHECK_IMAGES]
    check_x = torch.stack([view_tensor(p, v, pre, None, caches.images) for p, v in check]).to(device)
    with torch.inference_mode():
        reference = model(pixel_values=check_x).float()
    cached = [CachedImagePrefix(table)] + [CachedImagePrefix(None) for _ in prefix[1:]]
    for (parent, name), new in zip(places, cached):
        parent._modules[name] = new
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
    return Installed(depth, computed, len(val_keys) - computed, time.time() - started, cached[0], views=n_views,
                     fill=runner.ensure)
