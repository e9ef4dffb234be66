"""Modalities: what the inputs are (texts, images), independent of what is predicted from them.

A modality owns reading-time preprocessing (tokenizer or image transform, torch-free at predict time), batching
for training and evaluation, the ONNX example inputs with their dynamic axes, and a representative input for
latency timing. It never looks at the labels: the task (``automl_ft.tasks``) owns those, so any task runs on any
modality and neither branches on the other.
"""

from __future__ import annotations

from .base import Modality

TEXT = "text"
IMAGE = "image"

_REGISTRY: dict[str, type[Modality]] = {}


def register_modality(cls: type[Modality]) -> type[Modality]:
    if cls.name in _REGISTRY:
        raise ValueError(f"modality {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get_modality(name: str) -> Modality:
    """The modality object for ``name`` (``text`` or ``image``); an unknown name lists the known ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(list_modalities())}") from None


def list_modalities() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    from . import image, text  # noqa: F401  (registration on import)


__all__ = ["IMAGE", "TEXT", "Modality", "get_modality", "list_modalities", "register_modality"]
