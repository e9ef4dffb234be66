"""automl-ft: Optuna-searched fine-tuning of pretrained image and text classifiers, exported to ONNX."""

from __future__ import annotations

__version__ = "0.1.0"
