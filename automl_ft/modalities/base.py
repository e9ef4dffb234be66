"""The modality interface (see ``automl_ft/modalities/__init__.py``)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from automl_ft.backbones import Backbone
    from automl_ft.config import TrialConfig


class Modality(abc.ABC):
    name: ClassVar[str]
    #: ONNX input names, in the order the model's forward takes them
    input_names: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def config_error(self, config: TrialConfig) -> str | None:
        """Why ``config`` cannot run on this modality (a missing max_length / image_size), or None."""

    @abc.abstractmethod
    def describe(self, config: TrialConfig) -> str:
        """The input side of a trial in a few words, for the progress line (``len 128``, ``160px crop-flip``)."""

    @abc.abstractmethod
    def make_preprocess(self, backbone: Backbone, config: TrialConfig) -> Any:
        """The eval-time preprocessing of a trial (also what export saves and predict applies)."""

    @abc.abstractmethod
    def make_batches(self, config: TrialConfig, inputs: Sequence[str], targets: np.ndarray, pre: Any, caches: Any, *,
                     train: bool, batch_size: int, weights: np.ndarray | None = None, spatial: bool = False) -> Any:
        """Batches of ``(model inputs, targets, example indices)``; ``weights`` draws training examples with
        replacement in proportion to them (the balanced sampler). ``spatial``: each target is a map over the
        input (a mask file, :attr:`Task.spatial_targets`), transformed together with it."""

    #: whether :meth:`mirror` applies (images: a horizontal flip; text has no such thing)
    can_mirror: ClassVar[bool] = False

    def mirror(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A model-input batch mirrored left-right: what a horizontal-flip augmentation shows the model."""
        raise NotImplementedError(f"{self.name} inputs cannot be mirrored")

    @abc.abstractmethod
    def onnx_example(self, config: TrialConfig) -> tuple[tuple[Any, ...], dict[str, dict[int, Any]],
                                                          dict[str, dict[int, str]]]:
        """``(example args, dynamo dynamic_shapes, TorchScript dynamic_axes)`` for exporting a model to ONNX.

        The batch of the example is 2 so the exporter keeps the batch axis symbolic.
        """

    @abc.abstractmethod
    def example_feeds(self, pre: Any, inputs: Sequence[str], batch_size: int = 1) -> dict[str, np.ndarray]:
        """A representative onnxruntime feed built from real inputs (latency timing)."""
