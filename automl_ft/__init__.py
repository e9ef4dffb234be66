"""automl-ft: Optuna-searched fine-tuning of pretrained image and text models, exported to ONNX.

Python API (see :mod:`automl_ft.api`)::

    import automl_ft

    result = automl_ft.tune("data.csv", "runs/my-model", trials=8)   # search, test, export
    model = automl_ft.load(result.model_dir)                         # onnxruntime, torch-free
    model.predict(["some text"])                                     # a DataFrame: label, score

Importing the package is light: ``tune`` and ``load`` import torch, optuna or onnxruntime only when called.
"""

from __future__ import annotations

__version__ = "0.1.0"

from automl_ft.api import Model, TuneResult, load, tune  # light: the heavy imports are inside the functions

__all__ = ["Model", "TuneResult", "__version__", "load", "tune"]
