"""Learning curve on small data: test accuracy at 8, 16, 32 and 64 labelled examples per class.

For each data set and size, the same examples (drawn with one seed from the training pool; the test set fixed
and never drawn from) go to three methods, side by side in one run:

- ``automl-ft tune`` with the default search space (probe floor, LP-FT, k-fold scoring on small data) and
  ``--test-fraction 0`` (the bench's test set is its own, so tune trains on every drawn example as the probe does;
  curves before 2026-12-04 night let tune hold 10 % out where that averaged one example per class), then the
  exported model's test accuracy through ``automl_ft.load(...).evaluate``;
- the frozen-feature probe: pooled features of the same default backbone, standardised, scikit-learn's
  ``LogisticRegressionCV`` (C in 0.01..10, stratified k-fold on the examples), scored on test. Images enter at the
  backbone's pretrained size (224 px, timm's data config for EfficientNet-Lite0), as a user's probe would take
  them: at the fine-tunes' 160 px this baseline scored 71.5 / 77.3 / 81.8 / 83.0 % on CIFAR (curves before
  2026-12-04 evening) against 76.8 / 80.9 / 83.4 / 84.6 % at 224;
- a default fine-tune: Hugging Face ``TrainingArguments`` defaults (full fine-tune, lr 5e-5, 3 epochs, batch 8,
  no augmentation, no search) through the engine's own training loop.

Data: the shared SMS spam (test: 1,000 messages held out with seed 0), the shared Banking77 restricted to its
first 10 intents (the 77-way set at 64 per class is 4,874 examples: more than this 2-core CPU can tune 12 times in
an hour; test: those intents' rows of test.csv), ``banking77`` with all 77 intents on request (test: all 3,080 rows;
4 intents have fewer than 64 training rows: 35, 41, 59, 61) and the CIFAR-10 subset (test: its 1,000 test images).

Run: ``python bench/bench_small.py [--sets sms,banking10,cifar] [--sizes 8,16,32,64] [--timeout 150]``; results in
``bench/results/small-<machine>-<date>.{csv,json}``, a row written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, cpu_name, environment, slug, write_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZES = (8, 16, 32, 64)
SETS = ("sms", "banking10", "cifar")  # and banking77: all 77 intents (--sets banking77)


def _pool_and_test(name: str, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """(pool, test, modality): (input, label) pairs; inputs are texts or image paths."""
    import csv

    if name == "sms":
        with open(SHARED / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
            rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
        random.Random(seed).shuffle(rows)
        return rows[1000:], rows[:1000], "text"
    if name in ("banking10", "banking77"):
        def read(file: str) -> list[tuple[str, str]]:
            with open(SHARED / "banking77" / file, newline="", encoding="utf-8") as f:
                return [(r["text"], r["category"]) for r in csv.DictReader(f)]

        train, test = read("train.csv"), read("test.csv")
        keep = sorted({y for _, y in train})[:10 if name == "banking10" else None]
        return [r for r in train if r[1] in keep], [r for r in test if r[1] in keep], "text"
    if name == "cifar":
        def folder(split: str) -> list[tuple[str, str]]:
            root = SHARED / "cifar10_subset" / split
            return [(str(p), c.name) for c in sorted(root.iterdir()) if c.is_dir() for p in sorted(c.glob("*.png"))]

        return folder("train"), folder("test"), "image"
    raise SystemExit(f"unknown set {name!r}; use {', '.join(SETS)}")


def draw(pool: list[tuple[str, str]], per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """``per_class`` examples of every class; smaller sizes are prefixes of larger ones (a nested curve)."""
    rng = random.Random(seed)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for row in pool:
        by_class.setdefault(row[1], []).append(row)
    out = []
    for label in sorted(by_class):
        rows = by_class[label][:]
        rng.shuffle(rows)
        out += rows[:per_class]
    return out


def write_examples(rows: list[tuple[str, str]], folder: Path, modality: str) -> Path:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "examples.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image" if modality == "image" else "text", "label"])
        w.writerows(rows)
    return path


def _labeled(rows, test_rows, modality: str):
    from automl_ft.data.types import LabeledData, Split

    classes = sorted({y for _, y in rows})
    index = {c: i for i, c in enumerate(classes)}
    split = Split([x for x, _ in rows], [index[y] for _, y in rows])
    test = Split([x for x, y in test_rows if y in index], [index[y] for _, y in test_rows if y in index])
    return LabeledData(f"{modality}-classification", classes, split, split, test, "bench", {}, "bench")


def _config(data, modality: str, **extra):
    from automl_ft.config import TrialConfig

    name = "efficientnet-lite0" if modality == "image" else "minilm-l6"
    size = {"image_size": 160, "augment": "none"} if modality == "image" else {"max_length": 128}
    return TrialConfig(task=data.task, backbone=name, num_classes=data.num_classes, **{**size, **extra})


PROBE_IMAGE_SIZE = 224  # EfficientNet-Lite0's pretrained input size


def frozen_features(data, config) -> tuple[Any, Any]:
    """Pooled frozen features of ``data``'s train and test inputs for ``config``'s backbone and input size, through
    the product's own feature path."""
    import torch

    from automl_ft.probe import pooled_features
    from automl_ft.train import Caches, build_model, make_preprocess

    backbone, _ = build_model(config)
    pre, caches, cpu = make_preprocess(backbone, config), Caches(), torch.device("cpu")
    return (pooled_features(backbone, config, data.train.inputs, pre, caches, cpu),
            pooled_features(backbone, config, data.test.inputs, pre, caches, cpu))


def probe_accuracy(x, y, xt, yt) -> tuple[float, float]:
    """(test accuracy, C) of standardised features + LogisticRegressionCV (C in 0.01..10, stratified k-fold)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    per_class = min(np.bincount(y))
    clf = LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=StratifiedKFold(min(5, per_class), shuffle=True,
                                                                             random_state=0), max_iter=3000)
    clf.fit(scaler.transform(x), y)
    return float((clf.predict(scaler.transform(xt)) == np.asarray(yt)).mean()), float(clf.C_[0])


def probe(rows, test_rows, modality: str) -> dict[str, Any]:
    """Standardised frozen features + LogisticRegressionCV, scored on test."""
    t0 = time.perf_counter()
    data = _labeled(rows, test_rows, modality)
    config = _config(data, modality, adaptation="probe",
                     **({"image_size": PROBE_IMAGE_SIZE} if modality == "image" else {}))
    x, xt = frozen_features(data, config)
    acc, c = probe_accuracy(x, data.train.labels, xt, data.test.labels)
    return {"probe_test_accuracy": acc, "probe_C": c, "probe_seconds": time.perf_counter() - t0}


def default_finetune(rows, test_rows, modality: str, work: Path) -> dict[str, Any]:
    """TrainingArguments' defaults: full fine-tune, lr 5e-5, 3 epochs, batch 8, linear head at random."""
    import numpy as np
    import torch

    from automl_ft.train import Caches, fit, load_trained_model, make_batches, make_preprocess, predict_logits

    t0 = time.perf_counter()
    data = _labeled(rows, test_rows, modality)
    config = _config(data, modality, adaptation="full", freeze_depth=0, lr=5e-5, epochs=3, batch_size=8,
                     weight_decay=0.0, warmup_ratio=0.0, head_lr_scale=1.0, patience=3, seed=0)
    cpu, caches = torch.device("cpu"), Caches()
    fit(config, data, work, device=cpu, caches=caches, keep_last=True)
    backbone, config = load_trained_model(work)
    pre = make_preprocess(backbone, config)
    task = data.fitted_task()
    logits = predict_logits(backbone.model, make_batches(config, data.test, pre, caches, task, train=False,
                                                         batch_size=64), cpu)
    acc = float((logits.argmax(1) == np.asarray(data.test.labels)).mean())
    return {"default_test_accuracy": acc, "default_seconds": time.perf_counter() - t0}


def tune(rows, test_rows, modality: str, work: Path, *, trials: int, timeout: float, keep_test: bool = False
         ) -> dict[str, Any]:
    """``automl-ft tune`` (defaults) as a subprocess, then the exported model on the fixed test set."""
    import pandas as pd

    import automl_ft

    table = write_examples(rows, work / "data", modality)
    # --test-fraction 0: the bench holds its own test set, so every drawn example trains tune's model as it trains
    # the probe's; by default tune held 10 % out (Banking77 at 16 per class: 154 of 1,232) for its own test score
    cmd = [sys.executable, "-m", "automl_ft", "tune", str(table), "--out", str(work / "run"), "--trials",
           str(trials), "--timeout", f"{timeout:g}", "--seed", "0", *([] if keep_test else ["--test-fraction", "0"])]
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    out: dict[str, Any] = {"tune_command": "automl-ft " + " ".join(cmd[3:]).replace(str(work), "$WORK"),
                           "tune_minutes": round((time.perf_counter() - t0) / 60, 2), "tune_rc": proc.returncode}
    if proc.returncode != 0:
        out["tune_stderr"] = proc.stderr[-800:]
        return out
    metrics = json.loads((work / "run" / "best" / "metrics.json").read_text())
    config = json.loads((work / "run" / "best" / "config.json").read_text())
    column = "image" if modality == "image" else "text"
    test = pd.DataFrame({column: [x for x, _ in test_rows], "label": [y for _, y in test_rows]})
    scored = automl_ft.load(work / "run" / "best").evaluate(test)
    out.update({"tune_test_accuracy": scored["accuracy"], "tune_cv": (metrics.get("cv") or {}).get("mean"),
                "tune_cv_std": (metrics.get("cv") or {}).get("std"),
                "tune_best": f"{config['adaptation']}" + (" lp-ft" if config.get("head_init") == "probe" else ""),
                "tune_backbone": config["backbone"],
                "tune_trials": metrics.get("trial")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=150.0, help="tune's --timeout per point, seconds")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--no-default", action="store_true", help="skip the default fine-tune (its figures do not "
                    "change with the search's code)")
    ap.add_argument("--keep-test-split", action="store_true", help="let tune hold its default 10 %% test split out "
                    "of the drawn examples (every curve before 2026-12-04 night did)")
    ap.add_argument("--tag", default="", help="results as small-<tag>-<machine>-<date>: a partial rerun keeps the "
                    "full curve's files")
    args = ap.parse_args(argv)
    env = environment("cpu")
    stamp = time.strftime("%Y-%m-%d")
    base = RESULTS_DIR / f"small-{args.tag + '-' if args.tag else ''}{slug(cpu_name())}-{stamp}"
    rows_out: list[dict[str, Any]] = []
    work_root = Path(args.work or tempfile.mkdtemp(prefix="bench-small-"))
    for name in args.sets.split(","):
        pool, test_rows, modality = _pool_and_test(name)
        for k in map(int, args.sizes.split(",")):
            rows = draw(pool, k)
            work = work_root / name / str(k)
            record: dict[str, Any] = {"set": name, "per_class": k, "examples": len(rows), "test": len(test_rows),
                                      "date": stamp}
            record.update(probe(rows, test_rows, modality))
            if not args.no_default:
                record.update(default_finetune(rows, test_rows, modality, work / "default"))
            record.update(tune(rows, test_rows, modality, work, trials=args.trials, timeout=args.timeout,
                               keep_test=args.keep_test_split))
            acc = record.get("tune_test_accuracy")
            record["tune_beats_probe"] = acc is not None and acc > record["probe_test_accuracy"]
            rows_out.append(record)
            print(json.dumps({k2: record.get(k2) for k2 in ("set", "per_class", "probe_test_accuracy",
                                                             "default_test_accuracy", "tune_test_accuracy",
                                                             "tune_best", "tune_minutes")}), flush=True)
            write_rows(base, {"environment": env, "command": " ".join(
                ["python", "bench/bench_small.py", *(argv or sys.argv[1:])])}, rows_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
