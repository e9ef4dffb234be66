"""Backbone registry, architecture-aware freezing, LoRA injection and merging."""

from __future__ import annotations

import pytest
import torch
from automl_ft.kernels import LoRAConv1x1, LoRALinear

from automl_ft.adapt import apply_adaptation, merge_lora, trainable_state
from automl_ft.backbones import get_entry, list_backbones, load_backbone, resolve_name
from automl_ft.modalities import IMAGE, TEXT
from automl_ft.errors import BackboneError
from automl_ft.train import load_trainable_state


@pytest.mark.parametrize("name", list_backbones())
def test_registry_entries_load_offline_with_their_block_count(name):
    entry = get_entry(name)
    bb = load_backbone(name, 3)
    assert bb.task == entry.task and bb.num_blocks == entry.num_blocks
    assert bb.parts.stem and bb.parts.head
    if entry.task == TEXT:
        batch = bb.tokenizer(["hello world", "a longer sentence here"], padding=True, return_tensors="pt")
        logits = bb.model(batch["input_ids"], batch["attention_mask"])
    else:
        logits = bb.model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_lites_have_imagenet_weights(name):
    """The offline weights are really loaded: pretrained features are not those of a random init."""
    a = load_backbone(name, 3).model.net
    b = load_backbone(name, 3, options={"pretrained": False}).model.net
    assert not torch.equal(a.conv_stem.weight, b.conv_stem.weight)
    assert a.bn1.running_var.mean() != pytest.approx(1.0)  # trained statistics, not the init


@pytest.mark.parametrize("name,kind,task", [
    ("minilm-l6", "registry", TEXT), ("efficientnet-lite0", "registry", IMAGE), ("resnet18", "timm", IMAGE),
    ("efficientnet-lite0+efficientnet-lite2", "concat", IMAGE),
    ("timm:test_vit", "timm", IMAGE), ("hf:bert-base-uncased", "hf", TEXT), ("org/model", "hf", TEXT),
])
def test_resolve_name(name, kind, task):
    r = resolve_name(name)
    assert (r.kind, r.task) == (kind, task)


@pytest.mark.parametrize("name,match", [
    ("definitely-not-a-model", "unknown backbone"), ("timm:nope_net", "timm has no model"),
])
def test_unknown_backbones(name, match):
    with pytest.raises(BackboneError, match=match):
        resolve_name(name)


def test_hub_names_fail_to_load_as_runtime_errors(monkeypatch):
    """A resolvable name whose weights are unreachable fails its trial (RuntimeError), not the command."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot load Hugging Face model"):
        load_backbone("hf:some-org/some-missing-model", 2)


def _grad_flags(bb):
    return {n: p.requires_grad for n, p in bb.model.named_parameters()}


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_freezing_depth_text(tiny_bert_dir, depth):
    bb = load_backbone(str(tiny_bert_dir), 3)
    s = apply_adaptation(bb, freeze_depth=depth, adaptation="full")
    flags = _grad_flags(bb)
    assert not any(v for n, v in flags.items() if "embeddings" in n)
    for i in range(2):
        layer = [v for n, v in flags.items() if f"encoder.layer.{i}." in n]
        assert all(layer) if i >= depth else not any(layer)
    assert flags["head.weight"]
    assert s.trainable_params == sum(p.numel() for p in bb.model.parameters() if p.requires_grad)
    bb.model.train()
    assert all(not m.training for m in bb.model.frozen_modules) and bb.model.head.training


def test_freezing_skips_backward_through_frozen_blocks(tiny_bert_dir):
    bb = load_backbone(str(tiny_bert_dir), 3)
    apply_adaptation(bb, freeze_depth=1, adaptation="full")
    ids = torch.randint(1000, 2000, (2, 8))
    seen = []
    bb.model.encoder.encoder.layer[0].register_forward_hook(lambda m, i, o: seen.append(o[0].requires_grad))
    bb.model(ids, torch.ones_like(ids)).sum().backward()
    assert seen == [False]  # autograd never recorded the frozen layer


def test_freeze_all_blocks_is_a_linear_probe():
    bb = load_backbone("timm:test_efficientnet", 3, options={"pretrained": False})
    apply_adaptation(bb, freeze_depth=bb.num_blocks, adaptation="full")
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("net.classifier") for n in trainable)


def test_lora_on_text_and_merge(tiny_bert_dir):
    torch.manual_seed(0)
    bb = load_backbone(str(tiny_bert_dir), 3)
    s = apply_adaptation(bb, freeze_depth=1, adaptation="lora", lora_rank=4, lora_alpha=8, backend="torch")
    assert s.lora_layers == 6  # q, k, v, attention out, intermediate, output of the one trainable layer
    wrapped = [m for m in bb.model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 6
    trainable = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_a", "lora_b")) or n.startswith("head.") for n in trainable)
    for m in wrapped:  # make the adapters do something
        torch.nn.init.normal_(m.lora_b, std=0.05)
    bb.model.eval()
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    before = bb.model(ids, mask)
    assert merge_lora(bb.model) == 6
    assert not any(isinstance(m, LoRALinear) for m in bb.model.modules())
    torch.testing.assert_close(bb.model(ids, mask), before, atol=1e-5, rtol=1e-5)


def test_lora_on_cnn_pointwise_convs_and_merge():
    torch.manual_seed(0)
    bb = load_backbone("timm:test_efficientnet", 3, options={"pretrained": False})
    s = apply_adaptation(bb, freeze_depth=1, adaptation="lora", lora_rank=4, lora_alpha=8, backend="torch")
    convs = [m for m in bb.model.modules() if isinstance(m, LoRAConv1x1)]
    assert s.lora_layers == len(convs) > 0
    for m in convs:
        torch.nn.init.normal_(m.lora.lora_b, std=0.05)
    bb.model.train()  # BatchNorm statistics stay frozen in LoRA mode
    bns = [m for m in bb.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training for m in bns)
    bb.model.eval()
    x = torch.randn(2, 3, 32, 32)
    before = bb.model(x)
    merge_lora(bb.model)
    torch.testing.assert_close(bb.model(x), before, atol=1e-4, rtol=1e-4)


def test_trainable_state_round_trip(tiny_bert_dir):
    torch.manual_seed(0)
    a = load_backbone(str(tiny_bert_dir), 3)
    apply_adaptation(a, freeze_depth=0, adaptation="lora", lora_rank=2, lora_alpha=4, backend="torch")
    for p in a.model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    state = trainable_state(a.model)
    assert all(("lora_" in k or k.startswith("head.") or "running" in k) for k in state)
    torch.manual_seed(1)
    b = load_backbone(str(tiny_bert_dir), 3)
    apply_adaptation(b, freeze_depth=0, adaptation="lora", lora_rank=2, lora_alpha=4, backend="torch")
    load_trainable_state(b.model, state)
    ids = torch.randint(1000, 2000, (2, 5))
    a.model.eval(), b.model.eval()
    torch.testing.assert_close(a.model(ids, torch.ones_like(ids)), b.model(ids, torch.ones_like(ids)))
    with pytest.raises(RuntimeError, match="lacks trainable tensors"):
        load_trainable_state(b.model, {k: v for k, v in state.items() if "lora_a" not in k})
