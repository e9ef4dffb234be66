"""SetFit-style contrastive fine-tuning (Tunstall et al. 2022): a trial of ``adaptation: setfit``.

On a handful of labelled examples a classification loss has little to learn from (16 examples: 16 gradients a
epoch), but pairs of examples are many: SetFit builds, for each of ``iterations`` rounds and each example, one
pair with an example of its own class (target cosine 1) and one with another class's (target 0), tunes the
sentence encoder on them with sentence-transformers' ``CosineSimilarityLoss``, and then fits a logistic
regression on the tuned encoder's embeddings. Here the embeddings are exactly what the model's linear head reads
(a forward hook on the head, as :func:`automl_ft.probe.pooled_features`), and the head is fitted by the probe's
own code (:func:`automl_ft.probe.fit_head`, the regularisation picked on validation or by the folds' mean), so the
trial's checkpoint is an ordinary full fine-tune: export, ONNX, predict, the card and the Hugging Face folder treat
it as any other.

Measured before it became a search choice (``minilm-l6``, 1,600 pairs at most, lr 2e-5, batch 16, against the
frozen probe with LogisticRegressionCV; test sets of bench_small.py): SMS 8 per class 93.2 -> 93.9 %, 16 per
class 93.4 -> 96.1 %; Banking77's first 10 intents 16 per class 98.0 -> 98.75 %, but 8 per class 96.75 -> 94.75 %.
Not a method that always wins, so the search picks it by cross-validation like any other.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from automl_ft.config import TrialConfig
    from automl_ft.data import LabeledData

# A contrastive trial's pair budget: 2 x 20 rounds x 80 examples would be 3,200 pairs (~95 s of MiniLM steps on
# this 2-core CPU, times the folds of a cross-validated trial); 1,600 pairs took 47 s and gained as much as more.
MAX_PAIRS = 1600


def contrastive_pairs(labels: Sequence[Any], iterations: int, seed: int,
                      max_pairs: int = MAX_PAIRS) -> list[tuple[int, int, float]]:
    """SetFit's pair sampling: per round and example, a positive (same class, target 1.0) and a negative (another
    class, target 0.0) partner, shuffled; at most ``max_pairs`` of them. Pairs are index triples into ``labels``.

    Raises:
        ValueError: fewer than two classes, or no class with two examples (no positive pair exists).
    """
    by_class: dict[Any, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    if len(by_class) < 2:
        raise ValueError("contrastive pairs need examples of at least two classes")
    if all(len(v) < 2 for v in by_class.values()):
        raise ValueError("contrastive pairs need a class with at least two examples")
    rng = random.Random(seed)
    classes = list(by_class)
    pairs: list[tuple[int, int, float]] = []
    for _ in range(max(1, iterations)):
        for i, y in enumerate(labels):
            same = [j for j in by_class[y] if j != i]
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            other = rng.choice([c for c in classes if c != y])
            pairs.append((i, rng.choice(by_class[other]), 0.0))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def contrastive_labels(data: LabeledData) -> list[Any]:
    """The class of each training example, or a ValueError where the task has no single class per example."""
    task = data.fitted_task()
    if not task.one_class_per_example:
        raise ValueError(f"setfit pairs examples by their class: single-label classification only, not {task.name}")
    return list(data.train.labels)


def tune_encoder(backbone: Any, config: TrialConfig, inputs: Sequence[str], labels: Sequence[Any], pre: Any,
                 caches: Any, device: torch.device) -> dict[str, Any]:
    """Tune the body below the linear head on contrastive pairs of ``inputs``; the head is left as it is.

    One pass over the pairs is the trial's one epoch, and like an epoch it is never cut by ``--timeout`` (a trial
    stops at an epoch boundary): a half-tuned body would be scored as if it were SetFit. Returns a record: pairs,
    steps, mean loss of the last tenth of the steps, seconds."""
    import torch
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    from automl_ft.modalities import get_modality
    from automl_ft.probe import head_module
    from automl_ft.train import TrainingDiverged, _autocast, make_optimizer, param_groups, warmup_cosine

    started = time.time()
    model = backbone.model
    head = head_module(backbone)
    pairs = contrastive_pairs(labels, config.setfit_iterations, config.seed)
    head_ids = {id(p) for p in head.parameters()}
    groups = [g for g in ({**g, "params": [p for p in g["params"] if id(p) not in head_ids]}
                          for g in param_groups(model, backbone, config)) if g["params"]]
    if not groups:
        raise ValueError("setfit needs trainable layers below the head (freeze_depth is the whole backbone)")
    optimizer = make_optimizer(groups, config)
    steps = math.ceil(len(pairs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, config.warmup_ratio))
    # the loss is sentence-transformers' own; it reads embeddings we compute, so it needs no SentenceTransformer
    loss_fn = CosineSimilarityLoss(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    modality = get_modality(config.modality)
    losses: list[float] = []
    model.train()
    try:
        for step in range(steps):
            batch = pairs[step * config.batch_size:(step + 1) * config.batch_size]
            # each distinct example once per step: its embedding serves every pair it is in
            order = list(dict.fromkeys(i for a, b, _ in batch for i in (a, b)))
            where = {i: k for k, i in enumerate(order)}
            (x, _, idx), = modality.make_batches(config, [inputs[i] for i in order],
                                                 np.zeros(len(order), dtype=np.float32), pre, caches, train=False,
                                                 batch_size=len(order))
            seen.clear()
            with _autocast(device):
                model(**{k: v.to(device, non_blocking=True) for k, v in x.items()})
            emb = torch.empty_like(seen[0].float())
            emb[torch.as_tensor(idx)] = seen[0].float()
            a = emb[[where[p[0]] for p in batch]]
            b = emb[[where[p[1]] for p in batch]]
            loss = loss_fn.compute_loss_from_embeddings([a, b], torch.tensor([p[2] for p in batch], device=device))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"contrastive loss became {value} at step {step + 1} (lr {config.lr:.3g})")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(value)
    finally:
        hook.remove()
        model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"pairs": len(pairs), "steps": len(losses), "loss": float(np.mean(tail)) if tail else None,
            "seconds": round(time.time() - started, 2)}


def fit_setfit_trial(config: TrialConfig, data: LabeledData, workdir: Path, *, device: torch.device, caches: Any,
                     backend: str = "auto") -> Any:
    """A trial of ``adaptation: setfit``: contrastive pairs tune the body, then the probe's head is fitted on the
    tuned embeddings. Written as a one-epoch trial whose checkpoint holds the tuned layers and the head."""
    from safetensors.torch import save_file

    from automl_ft.adapt import trainable_state
    from automl_ft.probe import FeatureCache, fit_head, pooled_features, write_head
    from automl_ft.search.objective import TrialFailed
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
    try:
        labels = contrastive_labels(data)
        backbone, adaptation = build_model(config, backend=backend)
        backbone.model.to(device)
        pre = make_preprocess(backbone, config)
        tuned = tune_encoder(backbone, config, data.train.inputs, labels, pre, caches, device)
        # the tuned body's features: never the process's cache of pretrained ones
        own = replace(caches, features=FeatureCache())
        x_train = pooled_features(backbone, config, data.train.inputs, pre, own, device)
        x_val = pooled_features(backbone, config, data.val.inputs, pre, own, device)
        fit = fit_head(task, x_train, data.train.labels, x_val, data.val.labels,
                       balanced=config.imbalance in ("weighted", "sampler"),
                       grid=None if config.probe_strength is None else (config.probe_strength,))
    except ValueError as e:
        raise TrialFailed(str(e)) from None
    write_head(backbone, fit)
    train_loss = float(task.metrics(x_train.astype(np.float64) @ fit.weight.T + fit.bias,
                                    data.train.labels)["loss"])
    record = {**epoch_record(1, train_loss, fit.val_metrics, task), "lr": config.lr,
              "probe_strength": fit.strength, "contrastive": tuned, "seconds": time.time() - started}
    save_file(trainable_state(backbone.model), str(workdir / MODEL_FILE))
    (workdir / HISTORY_FILE).write_text(json.dumps([record], indent=2) + "\n")
    adaptation = {**adaptation, "setfit": tuned, "probe_strength": fit.strength,
                  "probe_scores": {str(k): list(v) for k, v in fit.scores.items()}}
    return TrainOutcome(record["val_score"], 1, 1, "completed", [record], time.time() - started, tuned["steps"],
                        adaptation)
