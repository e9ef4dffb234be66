"""Frozen-prefix caching for images: the same training as the full model without augmentation, fixed reproducible
views with it, and a fallback to the full model wherever the cached one would compute something else."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from automl_ft.config import TrialConfig
from automl_ft.data import load_dataset
from automl_ft.train import Caches, fit

CPU = torch.device("cpu")


@pytest.fixture
def image_data(image_folder):
    return load_dataset(image_folder, seed=0)


def _config(data, **extra):
    values = dict(task="image-classification", backbone="timm:test_efficientnet", num_classes=data.num_classes,
                  lr=5e-3, batch_size=8, epochs=2, image_size=32, augment="none", freeze_depth=2, dropout=0.1,
                  seed=0, backbone_options={"pretrained": False})
    values.update(extra)
    return TrialConfig(**values)


@pytest.mark.parametrize("adaptation", ["full", "lora"])
def test_without_augmentation_the_cached_prefix_trains_exactly_as_the_full_model(tmp_path, image_data, adaptation):
    from safetensors.torch import load_file

    extra = {"lora_rank": 4, "lora_alpha": 8} if adaptation == "lora" else {}
    runs = {}
    for enabled in (False, True):
        caches = Caches()
        caches.prefix.enabled = enabled
        runs[enabled] = fit(_config(image_data, adaptation=adaptation, **extra), image_data, tmp_path / str(enabled),
                            device=CPU, caches=caches)
    assert "prefix_cache" not in runs[False].adaptation
    record = runs[True].adaptation["prefix_cache"]
    assert record["layers"] == 2 and record["views"] == 0
    assert record["computed"] == len(image_data.train) + len(image_data.val)  # one evaluation view per image
    for a, b in zip(runs[False].history, runs[True].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    wa = load_file(str(tmp_path / "False" / "model.safetensors"))
    wb = load_file(str(tmp_path / "True" / "model.safetensors"))
    # the cached run's checkpoint lacks the prefix's BatchNorm statistics: frozen in eval mode, they are the
    # pretrained ones, which loading rebuilds from the backbone
    extra = set(wa) - set(wb)
    assert set(wb) <= set(wa) and extra
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in extra)
    for k in wb:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-4)


def test_augmented_views_are_fixed_shared_and_leave_the_trials_random_streams_alone(tmp_path, image_data):
    from automl_ft import image_prefix
    from automl_ft.loaders import train_image_transform
    from automl_ft.train import build_model, make_preprocess

    caches = Caches()
    cfg = _config(image_data, augment="crop-flip", epochs=3)
    out = fit(cfg, image_data, tmp_path / "a", device=CPU, caches=caches)
    record = out.adaptation["prefix_cache"]
    assert record["views"] == 3  # one per epoch: as many distinct crops and flips as without the cache
    assert record["computed"] == 3 * len(image_data.train) + len(image_data.val)
    # another learning rate and dropout, the same views: nothing recomputed (another seed would be another random
    # initialisation of this unpretrained backbone: the install's check refuses it)
    out = fit(_config(image_data, augment="crop-flip", epochs=3, dropout=0.3, lr=1e-3), image_data, tmp_path / "b",
              device=CPU, caches=caches)
    assert out.adaptation["prefix_cache"]["computed"] == 0

    # a view is the same pixels every time it is drawn, and views differ
    pre = make_preprocess(build_model(cfg)[0], cfg)
    transform = train_image_transform(pre, "crop-flip")
    path = image_data.train.inputs[0]
    v0 = image_prefix.view_tensor(path, 0, pre, transform, caches.images)
    assert torch.equal(v0, image_prefix.view_tensor(path, 0, pre, transform, caches.images))
    assert not torch.equal(v0, image_prefix.view_tensor(path, 1, pre, transform, caches.images))

    # installing draws its views without moving the trial's random streams
    torch.manual_seed(0)
    backbone, _ = build_model(cfg)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    fresh = Caches()
    installed = image_prefix.install(backbone, cfg, image_data.train.inputs, image_data.val.inputs, pre, fresh, CPU)
    assert installed is not None and installed.computed == len(image_data.val)  # training views: epoch by epoch
    installed.add(image_prefix.train_keys(image_data.train.inputs, 1, installed.views))
    assert installed.computed == len(image_data.val) + len(image_data.train)
    assert random.random() == random.Random(5).random()
    assert np.random.rand() == np.random.RandomState(5).rand()
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(0)
    again = build_model(cfg)[0]
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    image_prefix.install(again, cfg, image_data.train.inputs, image_data.val.inputs, pre, Caches(), CPU).add(
        image_prefix.train_keys(image_data.train.inputs, 1, 3))
    assert torch.equal(torch.rand(1), expected)

    # the cached model gives a training view the logits the full model gives its pixels
    torch.manual_seed(0)
    full, _ = build_model(cfg)  # the same random initialisation
    full.model.eval(), backbone.model.eval()
    installed.first.keys = [(path, 1)]
    with torch.inference_mode():
        want = full.model(pixel_values=image_prefix.view_tensor(path, 1, pre, transform, caches.images)[None])
        got = backbone.model(pixel_values=torch.zeros(1, 3, 1, 1))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_a_model_that_is_not_a_plain_chain_trains_uncached(tmp_path, image_data, monkeypatch):
    """The install's check (cached logits against the full model's) is what guards exotic layouts; force it to
    fail and the trial trains the full model, with the cache's memory given back."""
    from automl_ft import image_prefix

    monkeypatch.setattr(image_prefix, "CHECK_TOLERANCE", -1.0)
    caches = Caches()
    out = fit(_config(image_data), image_data, tmp_path / "a", device=CPU, caches=caches)
    assert "prefix_cache" not in out.adaptation and caches.prefix.used == 0 and len(caches.prefix.unusable) == 1
    assert out.epochs_run == 2


def test_vit_budget_and_depth_zero_are_not_cached(tmp_path, image_data):
    from automl_ft import image_prefix
    from automl_ft.train import build_model

    vit = _config(image_data, backbone="timm:test_vit", freeze_depth=1)
    assert image_prefix.applies(vit, build_model(vit)[0], Caches().prefix) == 0  # pos_embed joins after the stem
    assert "prefix_cache" not in fit(_config(image_data, freeze_depth=0), image_data, tmp_path / "a",
                                     device=CPU).adaptation
    caches = Caches()
    caches.prefix.budget = 1000
    out = fit(_config(image_data), image_data, tmp_path / "b", device=CPU, caches=caches)
    assert "prefix_cache" not in out.adaptation and caches.prefix.used == 0
