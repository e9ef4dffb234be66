"""The segmentation model family: segmentation-models-pytorch decoders on timm encoders.

A segmentation backbone is named ``<decoder>:<encoder>``: ``unet:efficientnet-lite0``,
``deeplabv3plus:timm:resnet18``, ``fpn:test_efficientnet``. The encoder is any timm model (``timm:`` optional) or
the offline ``efficientnet-lite0`` (its ImageNet weights load into smp's timm universal encoder,
``tu-tf_efficientnet_lite0``, through the same name mapping as the classifier's). Decoders (:data:`DECODERS`): smp's U-Net, FPN and DeepLabV3+,
and ``linear``, a 1x1 conv on the deepest feature map upsampled to the input: with every encoder stage frozen it is
the frozen-feature baseline the searched models are measured against.

Freezing depth runs over the encoder's stages (EfficientNet: 7 stages; ResNet: 4 layers) after its stem; the decoder
and the segmentation head are the model's *head* (always trained). LoRA goes on the pointwise convs of the unfrozen
stages through :mod:`automl_ft.adapt`, the same :mod:`automl_ft.kernels` layers as the classifiers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from automl_ft.errors import BackboneError

# decoder name -> (smp class name, keyword arguments sized for a CPU: smp's defaults are for 512 px GPUs)
DECODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet": ("Unet", {"decoder_channels": (128, 64, 32, 16, 16)}),
    "fpn": ("FPN", {"decoder_pyramid_channels": 128, "decoder_segmentation_channels": 64}),
    "deeplabv3plus": ("DeepLabV3Plus", {"decoder_channels": 128}),
    "linear": ("", {}),
}
# Offline registry encoders: registry name -> timm model name (weights through backbones' state-dict loader).
OFFLINE_ENCODERS = {"efficientnet-lite0": "tf_efficientnet_lite0"}
# smp's decoders need the input side divisible by the encoder's output stride.
STRIDE = 32


def is_dense_name(name: str) -> bool:
    """True for ``<decoder>:<encoder>`` with a known decoder."""
    decoder, sep, encoder = name.strip().lower().partition(":")
    return bool(sep) and decoder in DECODERS and bool(encoder)


def parse_name(name: str) -> tuple[str, str, str]:
    """``(decoder, timm model name, encoder as written)`` of a segmentation backbone name.

    Raises:
        BackboneError: unknown decoder, or an encoder that is neither the offline one nor a timm model.
    """
    decoder, _, encoder = name.strip().partition(":")
    decoder = decoder.lower()
    if decoder not in DECODERS:
        raise BackboneError(f"segmentation backbone {name!r}: unknown decoder {decoder!r}; known: "
                            f"{', '.join(DECODERS)}")
    enc = encoder[5:] if encoder.lower().startswith("timm:") else encoder
    if enc.lower() in OFFLINE_ENCODERS:
        return decoder, OFFLINE_ENCODERS[enc.lower()], enc.lower()
    from automl_ft.backbones import _timm_is_model

    if not _timm_is_model(enc):
        raise BackboneError(f"segmentation backbone {name!r}: encoder {enc!r} is neither "
                            f"{', '.join(OFFLINE_ENCODERS)} nor a timm model; see timm.list_models()")
    return decoder, enc, enc


class LinearDecoderNet(nn.Module):
    """A 1x1 conv on the encoder's deepest feature map, bilinearly upsampled to the input size."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder = encoder
        self.segmentation_head = nn.Conv2d(encoder.out_channels[-1], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)[-1]
        return nn.functional.interpolate(self.segmentation_head(feats), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


class Segmenter(nn.Module):
    """``pixel_values [B, 3, H, W] -> logits [B, classes, H, W]`` (H and W multiples of 32)."""

    input_names = ("pixel_values",)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def _encoder_parts(features: nn.Module):
    """(stem modules, stage modules) of a timm features-only model: the stages freeze in order."""
    names = [n for n, _ in features.named_children()]
    if "blocks" in names:
        container, stages = "blocks", list(features.blocks.children())
    elif "stages" in names:
        container, stages = "stages", list(features.stages.children())
    elif all(f"layer{i}" in names for i in (1, 2, 3, 4)):
        container, stages = "layer1", [getattr(features, f"layer{i}") for i in (1, 2, 3, 4)]
    else:
        raise RuntimeError(f"cannot find the stages of {type(features).__name__} for freezing")
    first = names.index(container)
    stem = [m for n, m in features.named_children()][:first]
    return stem, stages


def load_segmentation_model(name: str, num_classes: int, dropout: float = 0.0, *, pretrained: bool = True,
                            **unused: Any):
    """A :class:`~automl_ft.backbones.Backbone` holding a :class:`Segmenter` with ``num_classes`` score maps.

    Raises:
        BackboneError: an unknown decoder or encoder, or options it does not take (user errors).
        RuntimeError: the encoder's weights cannot be loaded (no hub): the trial fails.
    """
    from automl_ft.backbones import Backbone, ModelParts, _lite0_state_dict_loader, _reject_unknown

    _reject_unknown(unused, name)
    decoder, timm_name, encoder_name = parse_name(name)
    import segmentation_models_pytorch as smp
    import timm

    cls_name, kwargs = DECODERS[decoder]
    try:
        if decoder == "linear":
            from segmentation_models_pytorch.encoders import get_encoder

            net = LinearDecoderNet(get_encoder(f"tu-{timm_name}", weights=None), num_classes)
        else:
            extra = {"decoder_dropout": float(dropout)} if cls_name == "FPN" else {}
            net = getattr(smp, cls_name)(f"tu-{timm_name}", encoder_weights=None, classes=num_classes, **kwargs,
                                         **extra)
        features = net.encoder.model
        if pretrained:
            full = timm.create_model(timm_name, pretrained=encoder_name not in OFFLINE_ENCODERS)
            if encoder_name in OFFLINE_ENCODERS:
                _lite0_state_dict_loader(full)
            missing, _ = features.load_state_dict(full.state_dict(), strict=False)
            if missing:
                raise RuntimeError(f"{len(missing)} encoder tensors not in {timm_name}'s weights ({missing[0]})")
    except BackboneError:
        raise
    except Exception as e:
        raise RuntimeError(f"cannot build {name!r}: {str(e).splitlines()[0][:300]}") from e
    stem, stages = _encoder_parts(features)
    head = [m for n, m in net.named_children() if n != "encoder"]
    with torch.device("meta"):  # mean/std/interpolation only: no weights, no memory
        data_config = timm.data.resolve_data_config({}, model=timm.create_model(timm_name, pretrained=False))
    return Backbone(name, "image", Segmenter(net), ModelParts(stem=stem, blocks=stages, neck=[], head=head),
                    source=f"smp:{decoder}:timm:{timm_name}", data_config=dict(data_config), dense=True)


def count_stages(name: str) -> int:
    """Encoder stages of a segmentation backbone, without loading weights (a meta-device build)."""
    from segmentation_models_pytorch.encoders import get_encoder

    _, timm_name, _ = parse_name(name)
    with torch.device("meta"):
        encoder = get_encoder(f"tu-{timm_name}", weights=None)
    return len(_encoder_parts(encoder.model)[1])
