"""BatchNorm statistics of the training images, before a linear-probe-then-fine-tune (LP-FT) head is fitted.

A full fine-tune trains its unfrozen BatchNorm layers in train mode: they normalise by each batch's statistics, not
by the pretrained running ones. Where the data looks unlike the pretraining photos, the two differ, and a probe head
fitted on eval-mode features meets other features in the first training step. Digit pairs (black background,
EfficientNet-Lite0, 8 of 16 blocks frozen): the probe head's training loss was 0.28 in eval mode and 25.7 with the
trainable BatchNorms in train mode (standardised targets), and every fine-tune spent its first epochs recovering
(validation RMSE 221 after epoch 1 against the probe's 19.4).

:func:`recalibrate` resets the trainable region's running statistics to the training images' own (a cumulative
average over one eval-transform pass, no gradients), so train-mode and eval-mode features agree and the probe head
is fitted on the features the fine-tune starts from. Frozen BatchNorms keep the pretrained statistics (adapt.py:
they stay in eval mode), so a LoRA trial, whose BatchNorms are all frozen, is left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from automl_ft.backbones import Backbone
    from automl_ft.config import TrialConfig
    from automl_ft.data import LabeledData


def trainable_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that train mode will normalise by batch statistics."""
    # a frozen block is listed whole: its BatchNorms are inside it (and an image prefix cache holds their outputs)
    frozen = {id(sub) for m in getattr(model, "frozen_modules", []) for sub in m.modules()}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and id(m) not in frozen]


def recalibrate(backbone: Backbone, config: TrialConfig, data: LabeledData, pre: Any, caches: Any,
                device: torch.device) -> int:
    """Set the running statistics of the trainable BatchNorms to the training images'; returns how many layers."""
    from dataclasses import replace

    from automl_ft.train import make_batches

    model = backbone.model
    norms = trainable_norms(model)
    if not norms or not len(data.train):
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass, not an exponential one
    model.eval()
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            # shuffled batches of the trial's size, as training will draw them (a class-sorted image folder in
            # unshuffled batches would average per-class variances and miss the between-class one); no augmentation
            for x, _, _ in make_batches(replace(config, augment="none"), data.train, pre, caches, data.fitted_task(),
                                        train=True):
                model(**{k: v.to(device) for k, v in x.items()})
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
