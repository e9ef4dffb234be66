"""Images: decoded once per process, resized and center-cropped for evaluation, timm augmentation for training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import IMAGE, register_modality
from .base import Modality

AUGMENTS = ("none", "crop", "crop-flip", "randaugment")
# Dense (segmentation) models downsample by 32 and upsample back: their input sides are multiples of it.
SPATIAL_STRIDE = 32


def _spatial(config) -> bool:
    """Whether the trial's task has per-pixel targets (asked of the task class, never its name)."""
    from automl_ft.tasks import get_task

    return bool(get_task(config.problem).spatial_targets)


@register_modality
class ImageModality(Modality):
    name = IMAGE
    input_names = ("pixel_values",)

    def config_error(self, config) -> str | None:
        if config.image_size is None or config.image_size < 16:
            return f"image trials need image_size >= 16, got {config.image_size}"
        if (config.augment or "none") not in AUGMENTS:
            return f"augment must be one of {AUGMENTS}, got {config.augment!r}"
        if _spatial(config) and config.image_size % SPATIAL_STRIDE:
            return f"segmentation trials need image_size divisible by {SPATIAL_STRIDE}, got {config.image_size}"
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

    def make_batches(self, config, inputs, targets, pre, caches, *, train, batch_size, weights=None, spatial=False):
        from automl_ft.loaders import ImageBatches, SegmentationBatches

        if spatial:  # a mask per image: one geometric transform for both
            return SegmentationBatches(inputs, targets, pre, batch_size, augment=config.augment if train else None,
                                       shuffle=train, cache=caches.images, seed=config.seed, weights=weights)
        return ImageBatches(inputs, targets, pre, batch_size, augment=config.augment if train else None,
                            shuffle=train, cache=caches.images, seed=config.seed, weights=weights)

    can_mirror = True

    def mirror(self, inputs):
        # the eval transform's resize and centre crop are left-right symmetric: mirroring after them is mirroring
        # the image
        return {**inputs, "pixel_values": inputs["pixel_values"].flip(-1)}

    def onnx_example(self, config):
        import torch

        size = int(config.image_size)
        batch = torch.export.Dim("batch", min=1, max=65536)
        if _spatial(config):  # dense models take any multiple of the stride: height and width stay symbolic
            height, width = (torch.export.Dim(n, min=1, max=512) for n in ("height", "width"))
            return ((torch.randn(2, 3, size, size),),
                    {"pixel_values": {0: batch, 2: SPATIAL_STRIDE * height, 3: SPATIAL_STRIDE * width}},
                    {"pixel_values": {0: "batch", 2: "height", 3: "width"}})
        return ((torch.randn(2, 3, size, size),), {"pixel_values": {0: batch}}, {"pixel_values": {0: "batch"}})

    def example_feeds(self, pre, inputs: Sequence[str], batch_size: int = 1) -> dict[str, np.ndarray]:
        image = pre.load(inputs[0])
        return pre.batch([image] * batch_size)
