"""Image backbones side by side (``a+b``): the features, the parts, bad names, and the default image probe on them
end to end (tune, export to ONNX, predict)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from automl_ft.adapt import apply_adaptation
from automl_ft.backbones import load_backbone, resolve_name
from automl_ft.concat_backbone import ConcatImageClassifier
from automl_ft.errors import BackboneError
from automl_ft.modalities import IMAGE

PAIR = "efficientnet-lite0+efficientnet-lite2"
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def test_the_head_reads_both_networks_pretrained_features():
    torch.manual_seed(0)
    pair = load_backbone(PAIR, 4, task="image-classification")
    assert isinstance(pair.model, ConcatImageClassifier) and resolve_name(PAIR).kind == "concat"
    assert pair.task == IMAGE and pair.data_config["mean"] == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    parts = []
    for name in PAIR.split("+"):  # each network alone, its ImageNet weights, up to its pooled features
        net = load_backbone(name, 4).model.net.eval()
        net.reset_classifier(0)
        parts.append(net(x))
    head = pair.model.head
    assert head.in_features == 1280 + 1280
    with torch.no_grad():
        expected = torch.cat(parts, 1) @ head.weight.T + head.bias
        torch.testing.assert_close(pair.model.eval()(x), expected, atol=1e-4, rtol=1e-4)


def test_freezing_runs_through_the_first_network_then_the_second():
    pair = load_backbone(PAIR, 3, options={"pretrained": False})
    assert pair.num_blocks == 16 + 21 and pair.parts.head == [pair.model.head]
    apply_adaptation(pair, freeze_depth=16, adaptation="full")  # both stems and Lite0's 16 blocks
    trainable = [n for n, p in pair.model.named_parameters() if p.requires_grad]
    assert not any(n.startswith(("nets.0.blocks", "nets.0.conv_stem", "nets.1.conv_stem")) for n in trainable)
    assert any(n.startswith("nets.1.blocks.0.") for n in trainable)
    assert any(n.startswith("nets.0.conv_head") for n in trainable)  # a neck freezes only at depth N
    probe = load_backbone(PAIR, 3, options={"pretrained": False})
    apply_adaptation(probe, freeze_depth=probe.num_blocks, adaptation="full")
    assert {n for n, p in probe.model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


@pytest.mark.parametrize("name,match", [
    ("efficientnet-lite0+", "two or more image backbones"),
    ("efficientnet-lite0+efficientnet-lite0", "listed twice"),
    ("efficientnet-lite0+minilm-l6", "not an image classifier backbone"),
    ("efficientnet-lite0+no-such-net", "unknown backbone 'no-such-net'"),
])
def test_bad_names_are_user_errors(name, match):
    with pytest.raises(BackboneError, match=match):
        resolve_name(name)


def test_parts_must_share_their_preprocessing():
    """ResNet-18 wants ImageNet's mean and std, the Lites [-1, 1]: one input cannot serve both."""
    with pytest.raises(BackboneError, match="wants another input mean"):
        load_backbone("efficientnet-lite0+resnet18", 3, options={"pretrained": False})


@pytest.mark.slow
def test_default_image_probe_on_both_networks_end_to_end(tmp_path):
    """The default image space's probe (Lite0 + Lite2 at its own size, here 64 px) on real photos: the probe trial
    reads the concatenated features, is refit, exported to ONNX (checked against PyTorch) and predicts."""
    from automl_ft.api import load, tune

    if not (SHARED / "cifar10_subset" / "train").is_dir():
        pytest.skip("the shared CIFAR subset is not here")
    root = tmp_path / "photos"
    for c in ("airplane", "frog", "ship"):
        (root / c).mkdir(parents=True)
        for f in sorted((SHARED / "cifar10_subset" / "train" / c).glob("*.png"))[:10]:
            (root / c / f.name).write_bytes(f.read_bytes())
    space = tmp_path / "space.yaml"
    space.write_text(f"""
task: image-classification
backbones:
  efficientnet-lite0: {{image_size: 64, freeze_depth: 12, augment: crop}}
adaptation:
  full: {{lr: 1.0e-3}}
training: {{batch_size: [16], epochs: 1}}
probe: {{backbone: {PAIR}, image_size: 64}}
""")
    result = tune(root, tmp_path / "run", trials=1, space=str(space), seed=0, cv="off")
    config = json.loads((result.model_dir / "config.json").read_text())
    assert (config["backbone"], config["adaptation"], config["image_size"]) == (PAIR, "probe", 64)
    metrics = json.loads((result.model_dir / "metrics.json").read_text())
    assert metrics["onnx"]["prediction_agreement"] == 1.0 and metrics["refit"]
    photos = sorted((SHARED / "cifar10_subset" / "test" / "frog").glob("*.png"))[:3]
    out = load(result.model_dir).predict([str(p) for p in photos])
    assert set(out["label"]) <= {"airplane", "frog", "ship"} and len(out["label"]) == 3
