"""Whether mirroring an image keeps its label, asked of the data before the search.

The image spaces flip training images left-right half the time (``crop-flip``, ``randaugment``; loaders.py): right
for photographs of things, wrong wherever the label reads the layout. Two digits side by side mirrored are another
number (and mirrored digits), so every flipped copy taught the regression a wrong target: on the digit-pairs set
the known-good first trial (crop-flip) ended at validation RMSE 27.4 against the probe's 21.7 (bench_tasks.py,
2026-12-04).

The frozen probe answers it in seconds: fit the probe on the training features, then score it on the validation
images and on the same images mirrored. A pretrained backbone's features of a mirrored photo are much like the
photo's, so where mirroring keeps the label the probe keeps (nearly) all its gain over the trivial baseline; where
the label reads the layout, it loses it. Below :data:`KEEP` of the gain, the search drops mirroring: ``crop``
replaces the flipping choices, and the study says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from automl_ft.data import LabeledData
    from automl_ft.search.crossval import CVPlan
    from automl_ft.search.space import SearchSpace

# Share of the probe's gain over the trivial baseline that mirrored validation images must keep for mirroring to
# stay in the search.
KEEP = 0.9


def check_mirroring(space: SearchSpace, data: LabeledData, cv: CVPlan | None, *, device: Any, caches: Any,
                    seed: int = 0) -> dict[str, Any] | None:
    """The probe's validation score on the images and on them mirrored, and whether mirroring is ``kept``; None
    where nothing in the space mirrors, the inputs cannot be mirrored or the task has no probe."""
    from automl_ft.modalities import get_modality
    from automl_ft.probe import fit_head, pooled_features
    from automl_ft.search.crossval import fold_data
    from automl_ft.tasks import load_task
    from automl_ft.train import build_model, make_preprocess

    task = data.fitted_task()
    if not space.mirrors() or not get_modality(data.modality).can_mirror:
        return None
    config = space.probe_config(data.task, task, seed)
    if config is None:
        return None
    # on small data the validation split may hold 2 images: the first cross-validation fold holds a fifth of all
    fold = fold_data(data, cv)[0] if cv is not None else data
    if not len(fold.val):
        return None
    backbone, _ = build_model(config)
    backbone.model.to(device)
    pre = make_preprocess(backbone, config)

    def features(inputs: list[str], mirrored: bool = False) -> np.ndarray:
        return pooled_features(backbone, config, inputs, pre, caches, device, mirrored=mirrored).astype(np.float64)

    x_val = features(fold.val.inputs)
    fit = fit_head(task, features(fold.train.inputs), fold.train.labels, x_val, fold.val.labels,
                   balanced=task.imbalanced)
    scored = load_task(task.state_dict())
    scored.calibrate(fit.val_logits, fold.val.labels)  # the same thresholds for both views (multi-label)
    plain = scored.primary(scored.metrics(x_val @ fit.weight.T + fit.bias, fold.val.labels))
    mirrored = scored.primary(scored.metrics(features(fold.val.inputs, mirrored=True) @ fit.weight.T + fit.bias,
                                             fold.val.labels))
    baseline = task.baseline(fold.train.labels, fold.val.labels)
    sign = 1.0 if task.direction == "maximize" else -1.0
    gain, kept_gain = sign * (plain - baseline), sign * (mirrored - baseline)
    # a probe no better than the baseline cannot tell: mirroring stays, as the space says
    kept = bool(gain <= 0 or kept_gain >= KEEP * gain)
    return {"metric": task.primary_metric, "probe": float(plain), "probe_mirrored": float(mirrored),
            "baseline": float(baseline), "kept": kept, "examples": len(fold.val), "threshold": KEEP}


def describe(check: dict[str, Any]) -> str:
    """One line for the study's start and the data summary."""
    m = check["metric"]
    scores = (f"the probe's validation {m} {check['probe']:.4g} on the images, {check['probe_mirrored']:.4g} "
              f"mirrored (trivial baseline {check['baseline']:.4g}, {check['examples']} images)")
    if check["kept"]:
        return f"Mirroring keeps the labels ({scores}): flips stay in the search."
    return (f"Mirroring changes the labels ({scores}): the search does not flip images (crop instead of "
            "crop-flip / randaugment).")
