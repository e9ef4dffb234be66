"""The segmentation model family (smp decoders on timm encoders) and joint image/mask batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from automl_ft.adapt import apply_adaptation, merge_lora
from automl_ft.backbones import load_backbone, resolve_name
from automl_ft.config import TrialConfig
from automl_ft.errors import BackboneError
from automl_ft.kernels import LoRAConv1x1
from automl_ft.loaders import ImageCache, SegmentationBatches
from automl_ft.modalities import get_modality
from automl_ft.preprocess import ImagePreprocess, read_mask
from automl_ft.search.space import count_blocks
from automl_ft.segmentation_models import DECODERS
from tests.segmentation_data import build

TINY = {"pretrained": False}


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_every_decoder_maps_any_stride_multiple_to_per_pixel_logits(decoder):
    b = load_backbone(f"{decoder}:test_efficientnet", 4, task="image", options=TINY)
    assert b.dense and b.source.startswith(f"smp:{decoder}:timm:test_efficientnet")
    b.model.eval()
    with torch.no_grad():
        for shape in ((2, 3, 64, 64), (1, 3, 96, 160)):
            assert b.model(torch.randn(*shape)).shape == (shape[0], 4, *shape[2:])
    assert b.num_blocks == count_blocks(f"{decoder}:test_efficientnet") == 5  # the encoder's stages


def test_offline_lite0_weights_load_into_the_encoder():
    classifier = load_backbone("efficientnet-lite0", 10, task="image")
    seg = load_backbone("unet:efficientnet-lite0", 3, task="image")
    ref = classifier.model.net.state_dict()
    enc = seg.model.net.encoder.model.state_dict()
    assert len(enc) > 200 and all(torch.equal(enc[k], ref[k]) for k in enc)
    assert seg.num_blocks == 7
    random_init = load_backbone("unet:efficientnet-lite0", 3, task="image", options={"pretrained": False})
    assert not torch.equal(random_init.model.net.encoder.model.conv_stem.weight, ref["conv_stem.weight"])


def test_freezing_runs_over_encoder_stages_and_lora_goes_on_their_pointwise_convs():
    b = load_backbone("deeplabv3plus:test_efficientnet", 3, task="image", options=TINY)
    summary = apply_adaptation(b, freeze_depth=2, adaptation="lora", lora_rank=4, lora_alpha=8.0, backend="torch")
    assert summary.lora_layers > 0
    stages = b.parts.blocks
    for s in stages[:2]:
        assert not any(p.requires_grad for p in s.parameters())
        assert not any(isinstance(m, LoRAConv1x1) for m in s.modules())
    assert any(isinstance(m, LoRAConv1x1) for s in stages[2:] for m in s.modules())
    decoder = b.model.net.decoder
    assert all(p.requires_grad for p in decoder.parameters())  # the decoder is the head: always trained
    b.model.train()  # the decoder's BatchNorms learn their statistics; the encoder's keep the pretrained ones
    norms = torch.nn.modules.batchnorm._BatchNorm
    assert all(m.training for m in decoder.modules() if isinstance(m, norms))
    assert any(isinstance(m, norms) for m in decoder.modules())
    assert not any(m.training for m in b.model.net.encoder.modules() if isinstance(m, norms))
    b.model.eval()
    for m in b.model.modules():  # nudge the adapters so merging has something to fold in
        if isinstance(m, LoRAConv1x1):
            torch.nn.init.normal_(m.lora.lora_b, std=0.05)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = b.model(x)
        assert merge_lora(b.model) >= summary.lora_layers
        assert not any(isinstance(m, LoRAConv1x1) for m in b.model.modules())
        torch.testing.assert_close(b.model(x), before, atol=1e-4, rtol=1e-4)


def test_names_resolve_and_mistakes_fail_loudly():
    assert resolve_name("fpn:timm:test_efficientnet").kind == "dense"
    assert resolve_name("efficientnet-lite0").kind == "registry"  # the classifier is untouched
    with pytest.raises(BackboneError, match="unknown decoder 'pspnet'|is neither"):
        resolve_name("unet:no_such_model_xyz")
    with pytest.raises(BackboneError, match="unknown option"):
        load_backbone("unet:test_efficientnet", 3, task="image", options={"pooling": "mean", **TINY})


def test_a_classifier_backbone_is_refused_for_segmentation_and_back(tmp_path):
    from automl_ft.train import build_model

    base = {"num_classes": 3, "image_size": 64, "augment": "none", "backbone_options": TINY}
    with pytest.raises(BackboneError, match="use a segmentation model"):
        build_model(TrialConfig(task="image-segmentation", backbone="timm:test_efficientnet", **base))
    with pytest.raises(BackboneError, match="use a classifier backbone"):
        build_model(TrialConfig(task="image-classification", backbone="unet:test_efficientnet", **base))
    with pytest.raises(ValueError, match="divisible by 32"):
        TrialConfig(task="image-segmentation", backbone="unet:test_efficientnet", num_classes=3, image_size=72,
                    augment="none")


def _colour_of(mask: np.ndarray) -> np.ndarray:
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]] + [[255, 255, 255]] * 253, dtype=np.uint8)
    return palette[mask]


@pytest.mark.parametrize("augment", ["crop", "crop-flip"])
def test_joint_augmentation_moves_image_and_mask_together(tmp_path, augment):
    """Images painted by their own (real) masks: after a random crop and flip, each pixel's colour still names its
    mask class (bar resampling at class borders), and the crops do differ between epochs."""
    root = build(tmp_path / "ds", n=6, size=96)
    paths, masks = [], []
    for m in sorted((root / "masks").glob("*.png")):
        img = tmp_path / f"{m.stem}.png"
        Image.fromarray(_colour_of(read_mask(str(m)))).save(img)
        paths.append(str(img))
        masks.append(str(m))
    pre = ImagePreprocess(size=64, resize=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic")
    batches = SegmentationBatches(paths, np.asarray(masks, dtype=object), pre, 3, augment=augment, shuffle=True,
                                  cache=ImageCache(), seed=0)
    seen = []
    flipped = False
    for epoch in range(3):
        batches.set_epoch(epoch)
        for inputs, y, idx in batches:
            x = inputs["pixel_values"].numpy()
            assert x.shape == (len(idx), 3, 64, 64) and y.shape == (len(idx), 64, 64) and y.dtype == torch.int64
            for xi, yi in zip(x, y.numpy()):
                red, green = xi[0] > 0.5, xi[1] > 0.5
                decoded = np.where(red & ~green, 1, np.where(green & ~red, 2, np.where(red & green, 255, 0)))
                assert (decoded == yi).mean() > 0.93
                assert set(np.unique(yi)) <= {0, 1, 2, 255}  # nearest: no blended indices
            seen.append(y.numpy().copy())
            full = np.asarray(Image.fromarray(read_mask(masks[idx[0]])).resize((64, 64), Image.Resampling.NEAREST))
            flipped |= (y[0].numpy() == full[:, ::-1]).mean() > (y[0].numpy() == full).mean()
    assert any(not np.array_equal(seen[0], s) for s in seen[1:])
    if augment == "crop":
        assert not flipped


def test_evaluation_batches_use_the_predict_transform_and_the_same_crop_for_masks(tmp_path):
    root = build(tmp_path / "ds", n=4, size=80)
    images = sorted(str(p) for p in (root / "images").glob("*.jpg"))
    masks = sorted(str(p) for p in (root / "masks").glob("*.png"))
    config = TrialConfig(task="image-segmentation", backbone="unet:test_efficientnet", num_classes=3, image_size=64,
                         augment="crop-flip")
    pre = ImagePreprocess(size=64, resize=64, mean=(0.5,) * 3, std=(0.5,) * 3)

    class C:
        images = ImageCache()

    batches = get_modality("image").make_batches(config, images, np.asarray(masks, dtype=object), pre, C(),
                                                 train=False, batch_size=3, spatial=True)
    got = list(batches)
    assert [len(i) for _, _, i in got] == [3, 1]  # evaluation keeps a last batch of one
    np.testing.assert_allclose(got[0][0]["pixel_values"][1].numpy(), pre.load(images[1]))
    np.testing.assert_array_equal(got[0][1][1].numpy(), pre.apply_mask(read_mask(masks[1])))
    train = get_modality("image").make_batches(config, images, np.asarray(masks, dtype=object), pre, C(),
                                               train=True, batch_size=3, spatial=True)
    assert [len(i) for _, _, i in train] == [3]  # a training batch of one is dropped (BatchNorm)
