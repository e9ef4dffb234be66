"""Frozen-prefix caching: per-epoch and whole-study time of trials with a frozen prefix, with and without the
cache (issue 13).

Text (default): ``--trials`` full fine-tunes of MiniLM with 3 of its 6 layers frozen on a sample of the shared SMS
set. Images (``--modality image``): EfficientNet-Lite0 at 160 px with 8 of its 16 blocks frozen, crop-flip
augmentation, on the CIFAR subset (1,000 train / 250 validation images, bench_search's split); the cache holds
image_prefix.VIEWS fixed augmented views per image instead of a fresh one every epoch, so the validation scores
also say what the fixed views cost. No pruning and no probe trial, so both runs sample the very same configurations
with the same seed; each is run through ``automl-ft tune``, once as is, once with ``--no-prefix-cache``. Reported:
each study's wall time, the mean epoch time of its trials (``history.json``), the cache's fill time, the
validation scores (equal for text: the cache changes no result).

Run: ``python bench/bench_prefix.py [--modality text|image] [--rows 2000] [--trials 4]``; results in
``bench/results/prefix[-image]-<machine>-<date>.{csv,json}``.
"""

from __future__ import annotations

import argparse
import csv
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

from bench.common import RESULTS_DIR, cpu_name, environment, slug  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPACE = """task: text
backbones:
  minilm-l6: {max_length: 128, freeze_depth: 3}
adaptation:
  full: {lr: {low: 5.0e-5, high: 2.0e-4, log: true}}
training: {batch_size: 32, epochs: 2, patience: 2, dropout: 0.1, weight_decay: 0.01}
pruner: {type: none}
probe: false
"""
IMAGE_SPACE = """task: image
backbones:
  efficientnet-lite0: {image_size: 160, freeze_depth: 8, augment: crop-flip}
adaptation:
  full: {lr: {low: 3.0e-4, high: 3.0e-3, log: true}}
training: {batch_size: 32, epochs: 4, patience: 4, dropout: 0.2, weight_decay: 1.0e-4, head_init: random}
pruner: {type: none}
probe: false
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("text", "image"), default="text")
    ap.add_argument("--rows", type=int, default=2000, help="text: SMS messages to sample")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prefix-"))
    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    if args.modality == "image":
        from bench.bench_search import make_split, write_split

        split, _ = make_split("cifar")
        split["test"] = split["test"][:100]  # only the study's final report reads it
        data = write_split(split, work / "cifar", "image")
        space.write_text(IMAGE_SPACE)
    else:
        with open(SHARED / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        random.Random(0).shuffle(rows)
        data = work / "sms.csv"
        with open(data, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows({"text": r["text"], "label": r["label"]} for r in rows[:args.rows])
        space.write_text(SPACE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out: list[dict[str, Any]] = []
    for cached in (False, True):
        run = work / ("cached" if cached else "uncached")
        cmd = [sys.executable, "-m", "automl_ft", "tune", str(data), "--out", str(run), "--space", str(space),
               "--trials", str(args.trials), "--seed", "0", "--cv", "off"] + ([] if cached else ["--no-prefix-cache"])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        epochs, scores, cache_seconds, views = [], [], 0.0, None
        for trial in sorted((run / "trials").iterdir()):
            history = json.loads((trial / "history.json").read_text())
            epochs += [r["seconds"] for r in history]
            scores.append(max(r["val_score"] for r in history))
        import optuna

        study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")
        for t in study.trials:
            record = (t.user_attrs.get("adaptation") or {}).get("prefix_cache") or {}
            cache_seconds += record.get("seconds", 0.0)
            views = record.get("views", views)
        out.append({"prefix_cache": cached, "study_seconds": round(seconds, 1), "trials": len(scores),
                    "mean_epoch_seconds": round(sum(epochs) / len(epochs), 2),
                    "first_epochs_seconds": [round(e, 1) for e in epochs],
                    "cache_fill_seconds": round(cache_seconds, 1), "views": views, "val_scores": scores,
                    "command": "automl-ft " + " ".join(cmd[3:]).replace(str(work), "$WORK")})
        print(json.dumps(out[-1]), flush=True)
    kind = "prefix-image" if args.modality == "image" else "prefix"
    base = RESULTS_DIR / f"{kind}-{slug(cpu_name())}-{time.strftime('%Y-%m-%d')}"
    base.with_suffix(".json").write_text(json.dumps({"environment": environment("cpu"), "rows": out,
                                                     "command": " ".join(["python", "bench/bench_prefix.py",
                                                                          *(argv or sys.argv[1:])])}, indent=2) + "\n")
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
