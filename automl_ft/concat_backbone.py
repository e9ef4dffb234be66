"""Image backbones side by side: ``efficientnet-lite0+efficientnet-lite2`` is one classifier whose head reads both
networks' pooled features, concatenated.

Why: on few labelled images a frozen-feature probe is hard to beat by fine-tuning on a CPU, and two ImageNet
networks see different things. The CIFAR subset's test accuracy, probe at 224 px on bench_small.py's draws at 8 /
16 / 32 / 64 per class (LogisticRegressionCV, 2026-12-04): Lite0 76.8 / 80.9 / 83.4 / 84.6 %, Lite2 77.8 / 81.8 /
85.2 / 86.4 %, both concatenated 80.0 / 83.5 / 86.4 / 87.2 %. A probe costs one pass over the images per network.

A concatenation is an ordinary :class:`~automl_ft.backbones.Backbone`: one ``pixel_values`` input (the parts must
agree on the normalisation and the resampling), one linear head, parts cut along depth as the networks' stems,
then the first network's blocks followed by the second's, so freezing, LoRA, ONNX export and ``predict`` treat it
as any other image model. Text encoders are not concatenated: each has its own tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from automl_ft.errors import BackboneError

if TYPE_CHECKING:
    from automl_ft.backbones import Backbone

SEP = "+"
# what the parts' timm data configs must agree on to share one preprocessed input
SHARED_INPUT = ("mean", "std", "interpolation")


def is_concat_name(name: str) -> bool:
    return SEP in name and ":" not in name


def parse_name(name: str) -> list[str]:
    """The part names of ``a+b[+c...]``; a BackboneError where one is empty, repeated or not an image model."""
    from automl_ft.backbones import resolve_name
    from automl_ft.modalities import IMAGE

    parts = [p.strip() for p in name.split(SEP)]
    if len(parts) < 2 or not all(parts):
        raise BackboneError(f"backbone {name!r}: name two or more image backbones joined by '+', e.g. "
                            "efficientnet-lite0+efficientnet-lite2")
    if len({p.lower() for p in parts}) != len(parts):
        raise BackboneError(f"backbone {name!r}: a backbone is listed twice; list each once")
    for part in parts:
        r = resolve_name(part)
        if r.task != IMAGE or r.kind == "dense":
            raise BackboneError(f"backbone {name!r}: {part!r} is not an image classifier backbone; only image "
                                "backbones concatenate (a text encoder has its own tokenizer)")
    return parts


class ConcatImageClassifier(nn.Module):
    """``pixel_values -> head(dropout(cat(net(pixel_values) for net in nets)))``; each net ends at its pooled
    features (timm's ``num_classes=0``)."""

    input_names = ("pixel_values",)

    def __init__(self, nets: list[nn.Module], num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sum(int(net.num_features) for net in nets), num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.cat([net(pixel_values) for net in self.nets], dim=1)))


def load_concat(name: str, num_classes: int, dropout: float = 0.0, *, pretrained: bool = True,
                drop_path: float = 0.0, **unused: Any) -> Backbone:
    """A Backbone holding a :class:`ConcatImageClassifier` over the parts of ``name``.

    Raises:
        BackboneError: a bad name, options it does not take, or parts that cannot share one input.
        RuntimeError: a part's weights cannot be loaded (no hub): the trial fails.
    """
    from automl_ft.backbones import Backbone, ModelParts, _reject_unknown, _timm_parts, load_backbone
    from automl_ft.modalities import IMAGE

    _reject_unknown(unused, name)
    names = parse_name(name)
    options: dict[str, Any] = {"pretrained": pretrained, **({"drop_path": drop_path} if drop_path else {})}
    loaded = [load_backbone(part, num_classes, options=options) for part in names]
    first = loaded[0].data_config
    for part, bb in zip(names[1:], loaded[1:]):
        differs = [k for k in SHARED_INPUT if _norm(bb.data_config.get(k)) != _norm(first.get(k))]
        if differs:
            raise BackboneError(f"backbone {name!r}: {part!r} wants another input {differs[0]} than {names[0]!r} "
                                f"({bb.data_config.get(differs[0])} against {first.get(differs[0])}); concatenate "
                                "backbones that share their preprocessing")
    nets = []
    for bb in loaded:
        net = bb.model.net
        net.reset_classifier(0)  # the net ends at its pooled features; the one head reads them all
        nets.append(net)
    model = ConcatImageClassifier(nets, num_classes, dropout)
    cut = [_timm_parts(net) for net in nets]
    parts = ModelParts(stem=[m for c in cut for m in c.stem], blocks=[b for c in cut for b in c.blocks],
                       neck=[m for c in cut for m in c.neck], head=[model.head])
    return Backbone(name, IMAGE, model, parts, source=" + ".join(bb.source for bb in loaded),
                    data_config=dict(first))


def _norm(value: Any) -> Any:
    return tuple(round(float(v), 4) for v in value) if isinstance(value, (tuple, list)) else value
