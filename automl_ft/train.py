"""Fine-tuning one configuration: the training loop of a trial.

AdamW is :class:`automl_ft.kernels.FusedAdamW` (Triton on CUDA, the PyTorch path elsewhere) with global-norm
clipping folded into the step; warm-up then cosine decay; label smoothing; bf16 autocast on CUDA; validation once
per epoch, reported to the pruner; early stopping on the validation metric; the best epoch's weights are kept.

Each epoch also writes a resume point (trainable weights, optimizer, scheduler, RNG, history) so a trial that is
interrupted (Ctrl-C, a killed worker) continues from its last finished epoch instead of starting over.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from automl_ft.adapt import apply_adaptation, trainable_state
from automl_ft.backbones import Backbone, load_backbone
from automl_ft.config import TrialConfig
from automl_ft.data import LabeledData, Split
from automl_ft.kernel_timing import KernelTimer
from automl_ft.loaders import ImageCache, TokenCache
from automl_ft.metrics import record_score
from automl_ft.modalities import get_modality
from automl_ft.prefix_cache import KeyedBatches, PrefixCache, install
from automl_ft.probe import FeatureCache
from automl_ft.tasks import Task

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
RESUME_WEIGHTS = "last.safetensors"
RESUME_META = "last.json"
PEFT_DIR = "peft_adapter"

_log = logging.getLogger("automl_ft.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the configuration is broken (too high a learning rate, usually)."""


class Callbacks(Protocol):
    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def on_step(self, step: int, loss: float) -> None: ...

    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


class NoCallbacks:
    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def on_step(self, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class Caches:
    """Per-process caches shared by the trials of a study (tokenization, decoded images)."""

    tokens: TokenCache = field(default_factory=TokenCache)
    images: ImageCache = field(default_factory=ImageCache)
    features: FeatureCache = field(default_factory=FeatureCache)  # frozen pooled features (probe, LP-FT)
    prefix: PrefixCache = field(default_factory=PrefixCache)  # token states after a frozen text prefix


@dataclass
class TrainOutcome:
    best_value: float
    best_epoch: int
    epochs_run: int
    stopped: str  # "completed" | "early_stopping" | "deadline"
    history: list[dict[str, Any]]
    seconds: float
    steps: int
    adaptation: dict[str, Any]
    resumed_from_epoch: int = 0
    kernel_time: dict[str, Any] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_preprocess(backbone: Backbone, config: TrialConfig) -> Any:
    """The eval-time preprocessing of a trial (also what export saves and predict applies)."""
    return get_modality(config.modality).make_preprocess(backbone, config)


def build_model(config: TrialConfig, *, backend: str = "auto") -> tuple[Backbone, dict[str, Any]]:
    """Load the backbone and apply freezing / LoRA exactly as the trial did (also used to rebuild for export)."""
    options = dict(config.backbone_options)
    backbone = load_backbone(config.backbone, config.num_classes, task=config.modality, dropout=config.dropout,
                             options=options)
    from automl_ft.tasks import get_task

    if get_task(config.problem).spatial_targets != backbone.dense:  # a classifier cannot predict masks, nor back
        from automl_ft.errors import BackboneError

        want = "a segmentation model (<decoder>:<encoder>, e.g. unet:efficientnet-lite0)" if not backbone.dense \
            else "a classifier backbone (efficientnet-lite0, a timm model)"
        raise BackboneError(f"backbone {config.backbone!r} does not fit a {config.task} task; use {want}")
    # the probe freezes everything but the head: full fine-tuning of nothing below it; setfit tunes the body as
    # a full fine-tune does (on pairs instead of labels)
    probe = config.adaptation == "probe"
    summary = apply_adaptation(backbone, freeze_depth=backbone.num_blocks if probe else min(config.freeze_depth,
                                                                                              backbone.num_blocks),
                               adaptation="full" if probe or config.adaptation == "setfit" else config.adaptation,
                               lora_rank=config.lora_rank or 8,
                               lora_alpha=config.lora_alpha or 16.0, lora_dropout=config.lora_dropout,
                               backend=backend)
    return backbone, summary.as_dict()


def make_batches(config: TrialConfig, split: Split, pre: Any, caches: Caches, task: Task, *, train: bool,
                 batch_size: int | None = None):
    """Batches of ``split`` with the task's targets; training batches of the balanced sampler draw by weight."""
    weights = task.sample_weights(split.labels) if train and config.imbalance == "sampler" else None
    return get_modality(config.modality).make_batches(config, split.inputs, task.targets(split.labels), pre, caches,
                                                      train=train, batch_size=batch_size or config.batch_size,
                                                      weights=weights, spatial=task.spatial_targets)


def param_groups(model: nn.Module, backbone: Backbone, config: TrialConfig) -> list[dict[str, Any]]:
    """AdamW groups: decayed weights, undecayed biases / norms / LoRA-free 1-d tensors, and the head.

    The head is new (random) while the body is pretrained, so with full fine-tuning it may learn ``head_lr_scale``
    times faster. Not with LoRA: its learning rate is already ~10x a full fine-tune's, and 10x more on the head
    (up to 0.05) collapsed SMS-spam trials to the majority class.
    """
    head_ids = {id(p) for h in backbone.parts.head for p in h.parameters()}
    decay, no_decay, head_decay, head_no_decay = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = id(p) in head_ids
        no_wd = p.ndim <= 1 or name.endswith(".bias")
        (head_no_decay if is_head and no_wd else head_decay if is_head else no_decay if no_wd else decay).append(p)
    clip = config.max_grad_norm
    groups = []
    head_lr = config.lr * (config.head_lr_scale if config.adaptation == "full" else 1.0)
    for params, lr, wd in ((decay, config.lr, config.weight_decay), (no_decay, config.lr, 0.0),
                           (head_decay, head_lr, config.weight_decay), (head_no_decay, head_lr, 0.0)):
        if params:
            g: dict[str, Any] = {"params": params, "lr": lr, "weight_decay": wd}
            if config.anchor_decay and params is decay:
                g["anchor_decay"] = config.anchor_decay
            groups.append(g)
    if clip:
        # One global norm over every trainable tensor, as clip_grad_norm_ would compute it: the fused optimizer
        # folds the clipping into the update of each group, so the groups must share the norm (see _clip_coef).
        for g in groups:
            g["max_grad_norm"] = float(clip)
    return groups


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.inference_mode()
def predict_logits(model: nn.Module, batches, device: torch.device) -> np.ndarray:
    """Logits over ``batches`` in the original example order."""
    model.eval()
    n = len(batches.targets)
    out: np.ndarray | None = None
    for inputs, _, idx in batches:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        with _autocast(device):
            logits = model(**inputs).float().cpu().numpy()
        if out is None:  # [n, head] (one output per input), or [n, C, H, W] (dense)
            out = np.zeros((n, *logits.shape[1:]), dtype=np.float32)
        out[idx] = logits
    assert out is not None
    return out


def evaluate(model: nn.Module, batches, device: torch.device, task: Task, labels: list) -> dict[str, Any]:
    """The task's metrics (its primary metric and loss included) of ``model`` on the examples of ``batches``.

    Scored as the exported model will be: a copy of the task is calibrated on these examples first (multi-label
    thresholds; a no-op elsewhere). At fixed 0.5 thresholds an early multi-label model predicts no label at all,
    scores micro F1 0 and was pruned as "no better than the baseline" (a Banking77-facets trial, 2 epochs in).
    """
    from automl_ft.tasks import load_task

    logits = predict_logits(model, batches, device)
    scored = load_task(task.state_dict())
    scored.calibrate(logits, labels)
    return scored.metrics(logits, labels)


def epoch_record(epoch: int, train_loss: float, metrics: dict[str, Any], task: Task) -> dict[str, Any]:
    """One line of history.json: the primary metric as ``val_score`` plus every scalar metric as ``val_<name>``
    (classification keeps the ``val_accuracy`` / ``val_macro_f1`` of earlier runs)."""
    record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_loss": metrics["loss"],
                              "val_score": task.primary(metrics), "val_metric": task.primary_metric}
    for key, value in metrics.items():
        if key not in ("loss", "num_examples") and isinstance(value, (int, float)) and not isinstance(value, bool):
            record[f"val_{key}"] = float(value)
    return record


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_optimizer(groups: list[dict[str, Any]], config: TrialConfig):
    from automl_ft.kernels import FusedAdamW

    return FusedAdamW(groups, lr=config.lr, weight_decay=config.weight_decay, backend="auto")


def fit(config: TrialConfig, data: LabeledData, workdir: Path, *, device: torch.device,
        report: Callable[[int, float], None] | None = None, callbacks: Callbacks | None = None,
        deadline: float | None = None, resume_dir: Path | None = None, caches: Caches | None = None,
        backend: str = "auto", keep_last: bool = False) -> TrainOutcome:
    """Train one configuration; keep the best epoch's trainable weights in ``workdir/model.safetensors``.

    Args:
        report: called with (epoch, validation accuracy) after every epoch; it raises to prune the trial.
        deadline: ``time.time()`` after which training stops at the next step once an epoch has finished.
        resume_dir: a directory with a resume point of the same configuration to continue from.
        keep_last: keep every epoch's weights (the last wins) and never stop early: a cross-validated refit,
            whose validation examples are among its training examples, trains for a fixed epoch count.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    from safetensors.torch import save_file

    callbacks = callbacks or NoCallbacks()
    caches = caches or Caches()
    if config.adaptation == "probe":
        from automl_ft.probe import fit_probe_trial

        return fit_probe_trial(config, data, workdir, device=device, caches=caches, backend=backend)
    if config.adaptation == "setfit":
        from automl_ft.setfit import fit_setfit_trial

        return fit_setfit_trial(config, data, workdir, device=device, caches=caches, backend=backend)
    workdir.mkdir(parents=True, exist_ok=True)
    config.save(workdir / CONFIG_FILE)
    seed_everything(config.seed)
    task = data.fitted_task()
    backbone, adaptation = build_model(config, backend=backend)
    model = backbone.model.to(device)
    pre = make_preprocess(backbone, config)
    if config.head_init == "probe":
        init_head_from_probe(backbone, config, data, pre, caches, device, adaptation)
    train_batches = make_batches(config, data.train, pre, caches, task, train=True)
    val_batches = make_batches(config, data.val, pre, caches, task, train=False,
                               batch_size=max(64, config.batch_size))
    # after the probe (it needs the whole model): the frozen layers are computed once per text / image view, then
    # skipped
    installed = install(backbone, config, data.train.inputs, data.val.inputs, pre, caches, device)
    if installed is not None:
        train_batches = KeyedBatches(train_batches, data.train.inputs, installed, train=True)
        val_batches = KeyedBatches(val_batches, data.val.inputs, installed)
        adaptation["prefix_cache"] = installed.record()
    # the first subset_epochs epochs (Hyperband's lowest rung) may take only part of their batches
    total_steps = sum(math.ceil(config.epoch_batches(e, len(train_batches)) / config.grad_accumulation)
                      for e in range(config.epochs))
    optimizer = make_optimizer(param_groups(model, backbone, config), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, config.warmup_ratio))
    loss_fn = task.loss(label_smoothing=config.label_smoothing, kind=config.loss,
                        class_weights=task.class_weights(data.train.labels) if config.imbalance == "weighted" else None)
    timer = KernelTimer(model, optimizer, device)

    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_epoch, start_epoch, bad_epochs = 0, 0, 0
    if resume_dir is not None and (resume_dir / RESUME_META).is_file():
        meta = load_resume_point(resume_dir, model, optimizer, scheduler)
        history = meta["history"]
        best_value, best_epoch, bad_epochs = meta["best_value"], meta["best_epoch"], meta["bad_epochs"]
        start_epoch = meta["epoch"]
        if resume_dir != workdir and (resume_dir / MODEL_FILE).is_file():
            (workdir / MODEL_FILE).write_bytes((resume_dir / MODEL_FILE).read_bytes())
        for record in history:  # the pruner sees the resumed trial's curve too
            if report is not None:
                report(record["epoch"], record_score(record))

    started = time.time()
    steps = 0
    stopped = "completed"
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.time()
        model.train()
        train_batches.set_epoch(epoch)
        n_batches = config.epoch_batches(epoch, len(train_batches))
        callbacks.on_epoch_start(epoch + 1, config.epochs, n_batches)
        running, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets, _) in enumerate(train_batches):
            if i == n_batches:  # a subset epoch: the first n_batches of this epoch's shuffled order
                break
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            targets = targets.to(device, non_blocking=True)
            with _autocast(device):
                logits = model(**inputs)
            loss = loss_fn(logits.float(), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {i + 1} (lr {config.lr:.3g})")
            (loss / config.grad_accumulation).backward()
            if (i + 1) % config.grad_accumulation == 0 or i + 1 == n_batches:
                timer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                steps += 1
            running += value * len(targets)
            count += len(targets)
            callbacks.on_step(i + 1, value)
            if deadline is not None and time.time() > deadline and best_epoch > 0:
                stopped = "deadline"
                break
        if stopped == "deadline":
            break
        metrics = evaluate(model, val_batches, device, task, data.val.labels)
        record = {**epoch_record(epoch + 1, running / max(1, count), metrics, task),
                  "lr": scheduler.get_last_lr()[0], "seconds": time.time() - epoch_start}
        if n_batches < len(train_batches):
            record["data_fraction"] = round(n_batches / len(train_batches), 4)
        history.append(record)
        value = record["val_score"]
        # The kept checkpoint breaks ties of the primary metric by validation loss; patience counts epochs without
        # a better primary metric (a trial stuck at the majority class while its loss wobbles must still stop).
        improved = keep_last or best_value is None or task.better(value, best_value)
        if improved or (value == best_value and metrics["loss"] < _best_loss(history, best_epoch)):
            bad_epochs = 0 if improved else bad_epochs + 1
            best_value, best_epoch = value, epoch + 1
            save_file(trainable_state(model), str(workdir / MODEL_FILE))
            if config.adaptation == "lora":
                save_adapter(model, config, workdir / PEFT_DIR)
        else:
            bad_epochs += 1
        save_resume_point(workdir, model, optimizer, scheduler, {
            "epoch": epoch + 1, "history": history, "best_value": best_value, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs})
        (workdir / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
        callbacks.on_epoch_end(record)
        if report is not None:
            report(epoch + 1, value)
        if bad_epochs >= config.patience and epoch + 1 < config.epochs:  # on the last epoch it simply completed
            stopped = "early_stopping"
            break
        if deadline is not None and time.time() > deadline:
            stopped = "deadline"
            break
    (workdir / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    if installed is not None:  # image views are computed epoch by epoch
        adaptation["prefix_cache"] = installed.record()
    return TrainOutcome(best_value, best_epoch, len(history), stopped, history, time.time() - started, steps,
                        adaptation, resumed_from_epoch=start_epoch, kernel_time=timer.close())


def init_head_from_probe(backbone: Backbone, config: TrialConfig, data: LabeledData, pre: Any, caches: Caches,
                         device: torch.device, adaptation: dict[str, Any]) -> None:
    """Linear-probe-then-fine-tune: start the head at the probe's fit (recorded in ``adaptation``). A backbone
    without a single linear head keeps its random one (logged), the trial still runs."""
    from dataclasses import replace

    from automl_ft.norm_calibration import recalibrate
    from automl_ft.probe import probe_for, write_head

    if recalibrate(backbone, config, data, pre, caches, device):  # BatchNorm models only (no text encoder has one)
        # the features now depend on this trial's training images and depth: not the shared frozen-feature cache
        caches = replace(caches, features=FeatureCache())
        adaptation["norms_recalibrated"] = True
    try:
        fit = probe_for(backbone, config, data, pre, caches, device)
        write_head(backbone, fit)
    except ValueError as e:
        _log.warning("head_init probe skipped: %s", e)
        adaptation["head_init"] = f"random ({e})"
        return
    adaptation["head_init"] = "probe"
    adaptation["probe_strength"] = fit.strength
    adaptation["probe_val_score"] = data.fitted_task().primary(fit.val_metrics)


def save_adapter(model: nn.Module, config: TrialConfig, out_dir: Path) -> Path | None:
    """The LoRA adapter in PEFT's format beside our checkpoint (best epoch); a failure here never fails the trial."""
    from automl_ft.peft_format import save_peft_adapter

    try:
        return save_peft_adapter(model, config, out_dir)
    except ValueError as e:
        _log.warning("PEFT adapter not written to %s: %s", out_dir, e)
        return None


def _best_loss(history: list[dict[str, Any]], best_epoch: int) -> float:
    for r in history:
        if r["epoch"] == best_epoch:
            return r["val_loss"]
    return float("inf")


# ---------------------------------------------------------------------------------------------- resume points


def _split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested state by references, collecting them for safetensors (no pickle anywhere)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_state(k, f"{prefix}.k{i}", tensors), _split_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__":
                [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a resume point")


def _join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join_state(k, tensors): _join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join_state(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join_state(v, tensors) for v in obj["__tuple__"])
    return obj


def save_resume_point(workdir: Path, model: nn.Module, optimizer, scheduler, meta: dict[str, Any]) -> None:
    """Write the resume point atomically (weights first, then the JSON that makes it valid)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in trainable_state(model).items()}
    structure = {
        "optimizer": _split_state(optimizer.state_dict(), "optim", tensors),
        "scheduler": _split_state({k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
                                  "sched", tensors),
        "rng": _split_state({"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]},
                            "rng", tensors),
    }
    tmp_w, tmp_m = workdir / (RESUME_WEIGHTS + ".tmp"), workdir / (RESUME_META + ".tmp")
    save_file(tensors, str(tmp_w))
    tmp_m.write_text(json.dumps({**meta, "state": structure}) + "\n")
    tmp_w.replace(workdir / RESUME_WEIGHTS)
    tmp_m.replace(workdir / RESUME_META)


def load_resume_point(directory: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((directory / RESUME_META).read_text())
    tensors = load_file(str(directory / RESUME_WEIGHTS))
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_trainable_state(model, model_state)
    structure = meta.pop("state")
    optimizer.load_state_dict(_join_state(structure["optimizer"], tensors))
    sched = _join_state(structure["scheduler"], tensors)
    scheduler.load_state_dict({**scheduler.state_dict(), **sched})
    rng = _join_state(structure["rng"], tensors)
    torch.set_rng_state(rng["torch"])
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
    return meta


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a trial's delta into a freshly built model; every tensor must land somewhere."""
    _frozen_base, unexpected = model.load_state_dict(state, strict=False)  # the base weights come from the backbone
    if unexpected:
        raise RuntimeError(f"checkpoint has tensors the model lacks: {', '.join(unexpected[:5])}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    absent = sorted(trainable - set(state))
    if absent:
        raise RuntimeError(f"checkpoint lacks trainable tensors: {', '.join(absent[:5])}")


def clean_resume_point(workdir: Path) -> None:
    for name in (RESUME_WEIGHTS, RESUME_META):
        (workdir / name).unlink(missing_ok=True)


def load_trained_model(trial_dir: Path, *, device: torch.device | str = "cpu", backend: str = "torch"
                       ) -> tuple[Backbone, TrialConfig]:
    """Rebuild a trial's model from its ``config.json`` and best weights."""
    from safetensors.torch import load_file

    config = TrialConfig.load(trial_dir / CONFIG_FILE)
    backbone, _ = build_model(config, backend=backend)
    load_trainable_state(backbone.model, load_file(str(trial_dir / MODEL_FILE)))
    backbone.model.to(device).eval()
    return backbone, config
