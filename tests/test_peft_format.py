"""LoRA adapters saved in PEFT's format load with PEFT itself and reproduce our logits.

Train-free: the adapters and the head get random values (a zero lora_B would make the test pass with the adapters
dropped), then ``peft.PeftModel.from_pretrained`` on a freshly built base must give the same logits.
"""

from __future__ import annotations

import json
import re

import peft
import pytest
import torch
from automl_ft.kernels import LoRAConv1x1, LoRALinear

from automl_ft.adapt import apply_adaptation
from automl_ft.backbones import load_backbone, minilm_dir
from automl_ft.config import TrialConfig
from automl_ft.peft_format import CONFIG_FILE, META_FILE, README_FILE, WEIGHTS_FILE, load_peft_model, save_peft_adapter

ATOL, RTOL = 1e-5, 1e-5  # fp32; conv vs matmul order differs in the last bits


def _adapted(config: TrialConfig):
    backbone = load_backbone(config.backbone, config.num_classes, task=config.task)
    summary = apply_adaptation(backbone, freeze_depth=config.freeze_depth, adaptation=config.adaptation,
                               lora_rank=config.lora_rank or 8, lora_alpha=config.lora_alpha or 16.0,
                               lora_dropout=config.lora_dropout, backend="torch")
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in backbone.model.modules():
            if isinstance(m, LoRALinear):
                m.lora_a.copy_(torch.randn(m.lora_a.shape, generator=g) * 0.1)
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=g) * 0.1)
        head = backbone.parts.head[0]
        for p in head.parameters():  # logits of order 1-10, where an fp32 comparison at 1e-5 is meaningful
            p.copy_(torch.randn(p.shape, generator=g) * 2.0 / head.in_features ** 0.5)
    backbone.model.eval()
    return backbone, summary


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    diff = (ours - theirs).abs()
    worst = divmod(int((diff / (ATOL + RTOL * theirs.abs())).argmax()), ours.shape[-1])
    assert torch.allclose(ours, theirs, atol=ATOL, rtol=RTOL), (
        f"max |diff| {diff.max().item():.3g}, worst at {worst}: {ours[worst].item()} vs {theirs[worst].item()}")


def _check_keys_match_peft(base: torch.nn.Module, adapter_dir) -> None:
    """Our file has exactly the keys PEFT itself would save for the same LoraConfig."""
    from safetensors.torch import load_file

    cfg = peft.LoraConfig.from_pretrained(str(adapter_dir))
    cfg.base_model_name_or_path = None  # our base is not a hub model; PEFT warns when it renames it
    expected = peft.get_peft_model_state_dict(peft.get_peft_model(base, cfg))
    ours = load_file(str(adapter_dir / WEIGHTS_FILE))
    assert set(ours) == set(expected)
    assert all(ours[k].shape == expected[k].shape for k in ours)


def _run_readme_code(adapter_dir, block: int, **namespace) -> dict:
    """Execute a python block of the adapter's README.md as a user would (ADAPTER_DIR filled in)."""
    blocks = re.findall(r"```python\n(.*?)```", (adapter_dir / README_FILE).read_text(), re.DOTALL)
    code = blocks[block].replace('"ADAPTER_DIR"', repr(str(adapter_dir)))
    for old, new in namespace.pop("replace", {}).items():
        code = code.replace(old, new)
    with torch.no_grad():
        exec(compile(code, str(adapter_dir / README_FILE), "exec"), namespace)  # noqa: S102 (our own README)
    return namespace


def _check_files(adapter_dir, config: TrialConfig) -> dict:
    for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE, README_FILE):
        assert (adapter_dir / name).is_file(), name
    cfg = json.loads((adapter_dir / CONFIG_FILE).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == config.lora_rank and cfg["lora_alpha"] == config.lora_alpha
    meta = json.loads((adapter_dir / META_FILE).read_text())
    assert meta["trial_config"] == config.to_dict()
    assert "PeftModel.from_pretrained" in (adapter_dir / README_FILE).read_text()
    return cfg


def test_text_minilm_adapter_reproduces_logits_with_peft(tmp_path):
    config = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=3, freeze_depth=2,
                         adaptation="lora", lora_rank=4, lora_alpha=12.0, max_length=32)
    backbone, summary = _adapted(config)
    texts = ["free entry to win a prize now", "ok", "see you at the station at six, bring the tickets"]
    enc = backbone.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        ours = backbone.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])

    out = save_peft_adapter(backbone.model, config, tmp_path / "peft")
    assert out == tmp_path / "peft"
    cfg = _check_files(out, config)
    assert len(cfg["target_modules"]) == summary.lora_layers == 4 * 6  # 6 linears in each of layers 2..5
    assert cfg["modules_to_save"] == ["head"]

    torch.manual_seed(999)  # a fresh base with a differently initialised head
    base = load_backbone("minilm-l6", 3, task="text-classification").model
    with torch.no_grad():
        plain = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert (plain - ours).abs().max() > 0.1  # the adapter must matter for the comparison below to mean anything
    model = peft.PeftModel.from_pretrained(base, str(out))
    assert not model.training
    with torch.no_grad():
        theirs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    _assert_close(ours, theirs)

    _check_keys_match_peft(load_backbone("minilm-l6", 3, task="text-classification").model, out)

    # the README's code without automl-ft (plain transformers + a 10-line module) gives the same logits
    ns = _run_readme_code(out, 1, replace={"'sentence-transformers/all-MiniLM-L6-v2'": repr(str(minilm_dir()))})
    with torch.no_grad():
        _assert_close(ours, ns["model"](input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    assert type(ns["encoder"]).__name__ == "BertModel"


def test_image_lite0_conv_adapter_reproduces_logits_with_peft(tmp_path):
    config = TrialConfig(task="image-classification", backbone="efficientnet-lite0", num_classes=3, freeze_depth=12,
                         adaptation="lora", lora_rank=4, lora_alpha=6.0, image_size=64)
    backbone, summary = _adapted(config)
    assert any(isinstance(m, LoRAConv1x1) for m in backbone.model.modules())
    backbone.model.train()  # our LoRA keeps BatchNorm (and every frozen module) in eval mode even in train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    backbone.model.eval()
    with torch.no_grad():
        ours = backbone.model(x)

    out = save_peft_adapter(backbone.model, config, tmp_path / "peft")
    cfg = _check_files(out, config)
    assert len(cfg["target_modules"]) == summary.lora_layers
    assert "conv_head" in cfg["target_modules"]  # the neck's pointwise conv is trained when freeze_depth < N
    assert cfg["modules_to_save"] == ["classifier"]

    base = load_backbone("efficientnet-lite0", 3, task="image-classification").model.net  # a plain timm model
    model = peft.PeftModel.from_pretrained(base, str(out))
    assert any(isinstance(m, peft.tuners.lora.Conv2d) for m in model.modules())
    with torch.no_grad():
        theirs = model(x)
    _assert_close(ours, theirs)

    # automl-ft's own loader goes through the same PEFT call
    again, loaded_config = load_peft_model(out)
    assert loaded_config == config
    with torch.no_grad():
        _assert_close(ours, again(x))
    _check_keys_match_peft(load_backbone("efficientnet-lite0", 3, task="image-classification").model.net, out)

    ns = _run_readme_code(out, 0, pixel_values=x)
    _assert_close(ours, ns["logits"])
    with torch.no_grad():
        _assert_close(ours, ns["plain_timm"](x))  # merged back into a plain timm model


def test_nothing_to_save_for_full_finetune_or_linear_probe(tmp_path):
    full = TrialConfig(task="image-classification", backbone="efficientnet-lite0", num_classes=3, freeze_depth=0,
                       image_size=64)
    backbone = load_backbone("efficientnet-lite0", 3)
    assert save_peft_adapter(backbone.model, full, tmp_path / "a") is None
    probe = TrialConfig(task="image-classification", backbone="efficientnet-lite0", num_classes=3, freeze_depth=16,
                        adaptation="lora", lora_rank=4, image_size=64)
    backbone, summary = _adapted(probe)
    assert summary.lora_layers == 0
    assert save_peft_adapter(backbone.model, probe, tmp_path / "b") is None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trained_tensor_outside_lora_and_head_is_refused(tmp_path):
    config = TrialConfig(task="image-classification", backbone="efficientnet-lite0", num_classes=3, freeze_depth=14,
                         adaptation="lora", lora_rank=2, image_size=64)
    backbone, _ = _adapted(config)
    backbone.model.net.bn2.weight.requires_grad_(True)  # something PEFT's LoRA + head could not restore
    with pytest.raises(ValueError, match="bn2.weight"):
        save_peft_adapter(backbone.model, config, tmp_path / "peft")
