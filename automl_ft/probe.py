"""The frozen-feature probe: pooled features of the pretrained backbone and a linear head fitted by scikit-learn.

Three uses of one fit:

- a trial of its own (``adaptation: probe``), queued first in every study whose task has a linear head: the
  cheapest transfer, and a floor the search cannot end below (the best trial is picked on the same validation);
- the head initialisation of linear-probe-then-fine-tune (``head_init: probe``): the head starts where the probe
  ended instead of at random, so the first epochs adapt the body instead of fitting a head to features that move
  under it (LP-FT, Kumar et al. 2022). Banking77 facets: a random-head fine-tune ended at micro F1 77.7 % against
  the probe's 83.6 % (bench_tasks.py, 2026-12-03);
- the method that wins on a handful of examples (issue 16's learning curve).

Features depend on the backbone, its load options and the eval-time preprocessing (``max_length`` or
``image_size``) only: never on a trial's freezing depth, LoRA (its B starts at zero), dropout (eval mode) or
learning rate. So :class:`FeatureCache` computes them once per process and input and every trial and fold reuses
them: the probe trial after the first costs the scikit-learn fit alone (~1 s on 1,200 x 384 features).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from automl_ft.backbones import Backbone
    from automl_ft.config import TrialConfig
    from automl_ft.data import LabeledData
    from automl_ft.tasks import Task

FEATURE_BATCH = 64
# A pooled dimension almost constant on train (EfficientNet on digit pairs: spreads down to 1e-7 of the median
# one) says nothing a linear head can learn, and dividing by its spread blew held-out features up to 900 sigma
# (an image-regression probe's RMSE went to 78 for a target std of 29): no dimension is scaled up by more than 10x
# the median's.
SCALE_FLOOR = 0.1


@dataclass
class FeatureCache:
    """Pooled features per (backbone, load options, preprocessing) and input, kept for the whole process."""

    store: dict[tuple, dict[str, np.ndarray]] = field(default_factory=dict)

    def get(self, key: tuple, inputs: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        table = self.store.setdefault(key, {})
        missing = [x for x in dict.fromkeys(inputs) if x not in table]
        if missing:
            for x, row in zip(missing, compute(missing)):
                table[x] = row
        return np.stack([table[x] for x in inputs]) if inputs else np.zeros((0, 0), dtype=np.float32)


def feature_key(config: TrialConfig) -> tuple:
    """What the frozen pretrained features depend on (and nothing a trial searches besides)."""
    return (config.backbone, json.dumps(config.backbone_options, sort_keys=True), config.modality,
            config.max_length, config.image_size)


def head_module(backbone: Backbone) -> Any:
    """The backbone's linear head, or a ValueError naming what it is instead."""
    from torch import nn

    heads = backbone.parts.head
    if len(heads) != 1 or not isinstance(heads[0], nn.Linear):
        kinds = ", ".join(type(h).__name__ for h in heads) or "none"
        raise ValueError(f"{backbone.name} has no single linear head ({kinds}); the probe needs one")
    return heads[0]


def pooled_features(backbone: Backbone, config: TrialConfig, inputs: Sequence[str], pre: Any, caches: Any,
                    device: torch.device, *, mirrored: bool = False) -> np.ndarray:
    """What the head sees for each input ([n, d] float32, eval mode), from the cache or computed now;
    ``mirrored``: of each input mirrored left-right (images; search/mirror.py)."""
    import torch

    from automl_ft.modalities import get_modality
    from automl_ft.train import _autocast

    head = head_module(backbone)
    model = backbone.model
    modality = get_modality(config.modality)

    def compute(todo: list[str]) -> np.ndarray:
        seen: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().float().cpu()))
        batches = modality.make_batches(
            config, todo, np.zeros(len(todo), dtype=np.float32), pre, caches, train=False, batch_size=FEATURE_BATCH)
        out = np.zeros((len(todo), head.in_features), dtype=np.float32)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for x, _, idx in batches:
                    seen.clear()
                    if mirrored:
                        x = modality.mirror(x)
                    with _autocast(device):
                        model(**{k: v.to(device, non_blocking=True) for k, v in x.items()})
                    out[idx] = seen[0].numpy()
        finally:
            hook.remove()
            model.train(was_training)
        return out

    if mirrored and not modality.can_mirror:
        raise ValueError(f"{config.modality} inputs cannot be mirrored")
    return caches.features.get(feature_key(config) + (("mirrored",) if mirrored else ()), list(inputs), compute)


@dataclass
class ProbeFit:
    """A linear head in the backbone's raw feature space (the standardisation folded in)."""

    weight: np.ndarray  # [head_size, d]
    bias: np.ndarray  # [head_size]
    strength: float
    val_metrics: dict[str, Any]
    val_logits: np.ndarray
    # every strength's validation (primary metric, loss): cross-validation picks the strength by their fold means
    scores: dict[float, tuple[float, float]] = field(default_factory=dict)


def fit_head(task: Task, x_train: np.ndarray, y_train: list, x_val: np.ndarray, y_val: list, *,
             balanced: bool = False, grid: Sequence[float] | None = None) -> ProbeFit:
    """Fit the task's linear head at each strength of its grid on standardised train features; keep the one
    whose validation primary metric is best (scored as export scores: a calibrated copy of the task)."""
    from automl_ft.tasks import load_task

    grid = tuple(grid) if grid else task.probe_grid()
    if not grid:
        raise ValueError(f"the {task.name} task has no linear probe")
    x_train = x_train.astype(np.float64)
    x_val = x_val.astype(np.float64)
    mean = x_train.mean(0)
    scale = x_train.std(0)
    scale = np.maximum(scale, SCALE_FLOOR * max(float(np.median(scale)), 1e-12))
    xs_train, xs_val = (x_train - mean) / scale, (x_val - mean) / scale
    best: ProbeFit | None = None
    scores: dict[float, tuple[float, float]] = {}
    for strength in grid:
        weight, bias = task.fit_linear(xs_train, y_train, strength, balanced=balanced)
        logits = xs_val @ weight.T + bias
        scored = load_task(task.state_dict())
        scored.calibrate(logits, y_val)
        metrics = scored.metrics(logits, y_val)
        scores[float(strength)] = (scored.primary(metrics), float(metrics["loss"]))
        # The grid runs from the strongest regularisation to the weakest and a tie keeps the earlier: small
        # validation sets tie often (5 examples score in steps of 20 %), and breaking ties by the lower loss picked
        # the weakest C, whose sharper probabilities lower the loss: CIFAR at 16 per class, test 75.6 % against
        # 77.1 % at the strongest tied C (bench_small.py, 2026-12-04).
        if best is None or task.better(scores[float(strength)][0], best.scores[best.strength][0]):
            best = ProbeFit(weight, bias, float(strength), metrics, logits, scores)
    assert best is not None
    weight = best.weight / scale
    return ProbeFit(weight, best.bias - weight @ mean, best.strength, best.val_metrics, best.val_logits, scores)


def write_head(backbone: Backbone, fit: ProbeFit) -> None:
    """Copy the probe's head into the model's linear head."""
    import torch

    head = head_module(backbone)
    if tuple(head.weight.shape) != fit.weight.shape:
        raise ValueError(f"probe head {fit.weight.shape} does not fit {backbone.name}'s head "
                         f"{tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight).to(head.weight))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(fit.bias).to(head.bias))


def probe_for(backbone: Backbone, config: TrialConfig, data: LabeledData, pre: Any, caches: Any,
              device: torch.device) -> ProbeFit:
    """The probe of ``data`` (train fit, val choice) on ``backbone``'s frozen pretrained features."""
    task = data.fitted_task()
    x_train = pooled_features(backbone, config, data.train.inputs, pre, caches, device)
    x_val = pooled_features(backbone, config, data.val.inputs, pre, caches, device)
    return fit_head(task, x_train, data.train.labels, x_val, data.val.labels,
                    balanced=config.imbalance in ("weighted", "sampler"),
                    grid=None if config.probe_strength is None else (config.probe_strength,))


def fit_probe_trial(config: TrialConfig, data: LabeledData, workdir: Path, *, device: torch.device, caches: Any,
                    backend: str = "auto") -> Any:
    """A trial of ``adaptation: probe``: everything frozen, the head fitted in closed form; written as a one-epoch
    trial (model.safetensors holds the head), so export, predict and the card treat it as any other."""
    from safetensors.torch import save_file

    from automl_ft.adapt import trainable_state
    from automl_ft.train import (
        CONFIG_FILE,
        HISTORY_FILE,
        MODEL_FILE,
        TrainOutcome,
        build_model,
        epoch_record,
        make_preprocess,
        seed_everything,
    )

    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    config.save(workdir / CONFIG_FILE)
    seed_everything(config.seed)
    task = data.fitted_task()
    backbone, adaptation = build_model(config, backend=backend)
    backbone.model.to(device)
    pre = make_preprocess(backbone, config)
    try:
        fit = probe_for(backbone, config, data, pre, caches, device)
    except ValueError as e:
        from automl_ft.search.objective import TrialFailed

        raise TrialFailed(str(e)) from None
    write_head(backbone, fit)
    x_train = pooled_features(backbone, config, data.train.inputs, pre, caches, device).astype(np.float64)
    train_loss = float(task.metrics(x_train @ fit.weight.T + fit.bias, data.train.labels)["loss"])
    # fit.val_metrics are already a calibrated copy's (fit_head); the record reads only the primary metric's name
    record = {**epoch_record(1, train_loss, fit.val_metrics, task), "lr": 0.0,
              "probe_strength": fit.strength, "seconds": time.time() - started}
    save_file(trainable_state(backbone.model), str(workdir / MODEL_FILE))
    (workdir / HISTORY_FILE).write_text(json.dumps([record], indent=2) + "\n")
    adaptation = {**adaptation, "probe_strength": fit.strength,
                  "probe_scores": {str(k): list(v) for k, v in fit.scores.items()}}
    return TrainOutcome(record["val_score"], 1, 1, "completed", [record], time.time() - started, 0, adaptation)
