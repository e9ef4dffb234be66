"""BatchNorm recalibration before an LP-FT head: train-mode and eval-mode features agree on the training images,
frozen and LoRA BatchNorms keep their pretrained statistics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from automl_ft.config import TrialConfig
from automl_ft.data import load_dataset
from automl_ft.norm_calibration import recalibrate, trainable_norms
from automl_ft.train import Caches, build_model, fit, make_batches, make_preprocess

CPU = torch.device("cpu")


def _config(data, **extra):
    values = {"task": "image-classification", "backbone": "timm:test_efficientnet", "num_classes": data.num_classes,
              "lr": 5e-3, "batch_size": 8, "epochs": 1, "image_size": 32, "augment": "none", "freeze_depth": 2,
              "seed": 0, "backbone_options": {"pretrained": False}}
    values.update(extra)
    return TrialConfig(**values)


def _gap(backbone, config, data, pre, caches) -> float:
    """Mean |train-mode - eval-mode| output over shuffled training batches of the trial's size."""
    batches = make_batches(config, data.train, pre, caches, data.fitted_task(), train=True)
    gaps = []
    with torch.no_grad():
        for x, _, _ in batches:
            backbone.model.train()
            a = backbone.model(**x)
            backbone.model.eval()
            gaps.append(float((a - backbone.model(**x)).abs().mean()))
    return float(np.mean(gaps))


def test_recalibrated_statistics_make_train_mode_match_eval_mode(image_folder):
    data = load_dataset(image_folder, seed=0)
    # one batch of the whole training split: its statistics are the split's, so the recalibrated running ones are
    # what train mode sees (smaller batches add their own sampling noise, which no running statistic removes)
    config = _config(data, batch_size=len(data.train))
    torch.manual_seed(0)
    backbone, _ = build_model(config)
    pre, caches = make_preprocess(backbone, config), Caches()
    frozen = [m for m in backbone.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m not in trainable_norms(backbone.model)]
    frozen_stats = [m.running_mean.clone() for m in frozen]
    # the solid-colour images are nothing like the statistics of a fresh backbone (mean 0, variance 1)
    before = _gap(backbone, config, data, pre, caches)
    torch.manual_seed(0)
    backbone, _ = build_model(config)
    assert recalibrate(backbone, config, data, pre, caches, CPU) == len(trainable_norms(backbone.model)) > 0
    after = _gap(backbone, config, data, pre, caches)
    assert after < 0.2 * before, (before, after)  # 2.20 -> 0.24 here
    assert all(m.momentum == 0.1 for m in trainable_norms(backbone.model))  # restored after the pass
    for m, stats in zip([m for m in backbone.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                         and m not in trainable_norms(backbone.model)], frozen_stats):
        torch.testing.assert_close(m.running_mean, stats)  # frozen layers: untouched


def test_lora_and_random_heads_are_not_recalibrated(tmp_path, image_folder):
    data = load_dataset(image_folder, seed=0)
    lora = _config(data, adaptation="lora", lora_rank=4, lora_alpha=8)
    backbone, _ = build_model(lora)
    assert trainable_norms(backbone.model) == []  # adapt.py keeps every BatchNorm of a LoRA trial in eval mode
    assert recalibrate(backbone, lora, data, make_preprocess(backbone, lora), Caches(), CPU) == 0
    out = fit(_config(data, head_init="probe"), data, tmp_path / "lpft", device=CPU)
    assert out.adaptation.get("norms_recalibrated") is True and out.adaptation["head_init"] == "probe"
    out = fit(_config(data), data, tmp_path / "random", device=CPU)
    assert "norms_recalibrated" not in out.adaptation
