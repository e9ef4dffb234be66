"""Images: decoded once per process, resized and center-cropped for evaluation, timm augmentation for training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import IMAGE, register_modality
from .base import Modality

AUGMENTS = ("none", "crop", "crop-flip", "randaugment")


@register_modality
class ImageModality(Modality):
    name = IMAGE
    input_names = ("pixel_values",)

    def config_error(self, config) -> str | None:
        if config.image_size is None or config.image_size < 16:
            return f"image trials need image_size >= 16, got {config.image_size}"
        if (config.augment or "none") not in AUGMENTS:
            return f"augment must be one of {AUGMENTS}, got {config.augment!r}"
        return None

    def describe(self, config) -> str:
        return f"{config.image_size}px {config.augment}"

    def make_preprocess(self, backbone, config):
        from automl_ft.preprocess import ImagePreprocess

        dc = backbone.data_config
        size = int(config.image_size)
        return ImagePreprocess(size=size, resize=size, mean=tuple(float(v) for v in dc.get("mean", (0.5,) * 3)),
                               std=tuple(float(v) for v in dc.get("std", (0.5,) * 3)),
                               interpolation=str(dc.get("interpolation", "bicubic")))

    def make_batches(self, config, inputs, targets, pre, caches, *, train, batch_size, weights=None):
        from automl_ft.loaders import ImageBatches

        return ImageBatches(inputs, targets, pre, batch_size, augment=config.augment if train else None,
                            shuffle=train, cache=caches.images, seed=config.seed, weights=weights)

    def onnx_example(self, config):
        import torch

        size = int(config.image_size)
        batch = torch.export.Dim("batch", min=1, max=65536)
        return ((torch.randn(2, 3, size, size),), {"pixel_values": {0: batch}}, {"pixel_values": {0: "batch"}})

    def example_feeds(self, pre, inputs: Sequence[str], batch_size: int = 1) -> dict[str, np.ndarray]:
        image = pre.load(inputs[0])
        return pre.batch([image] * batch_size)
