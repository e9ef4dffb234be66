"""automl-ft's search against the peers' way, side by side at one wall-clock budget (issue 13).

For each data set one split (train / val / test, seed 0) is written as train.csv / val.csv / test.csv and every
method gets the same examples, the same backbone (MiniLM-L6 for text, EfficientNet-Lite0 for images), the same
seed and, for the two searches, the same wall-clock budget:

- ``automl-ft tune DIR --timeout BUDGET`` with the default search space (probe floor, LP-FT, frozen-prefix cache);
- Hugging Face ``Trainer.hyperparameter_search(backend="optuna")`` with its documented default space
  (``default_hp_space_optuna``: lr 1e-6..1e-4 log, 1..5 epochs, seed 1..40, batch 4..64), ``model_init`` =
  ``AutoModelForSequenceClassification`` (text) or the timm model with a loss (images), evaluated every epoch on
  val, Optuna's ``timeout`` = BUDGET; the best run's model is the one its search kept (each run's test accuracy is
  measured by a callback at the end of the run, and that time is left out of its clock);
- a default fine-tune: ``TrainingArguments`` defaults (lr 5e-5, 3 epochs, batch 8, full fine-tune), one run;
- the frozen-feature probe (pooled features, standardised, ``LogisticRegressionCV``).

Reported per method: the test accuracy of the model it ends with, wall time, and the test accuracy of the best
model so far (picked on val) at 25 / 50 / 100 % of the budget, with a curve PNG.

Run: ``python bench/bench_search.py [--sets sms,banking77,cifar] [--budget 240]``. Results:
``bench/results/search-<machine>-<date>.{csv,json,png}``.
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

from bench.common import RESULTS_DIR, cpu_name, environment, slug, write_rows  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# train / val / test: sized so that the four methods of all three sets fit in an hour of this 2-core CPU
SIZES = {"sms": (800, 200, 1000), "banking77": (1540, 385, 1000), "cifar": (1000, 250, 1000)}


# ------------------------------------------------------------------------------------------------------ data


def make_split(name: str, seed: int = 0, scale: float = 1.0) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """{train, val, test}: (input, label) rows; inputs are texts or image paths."""
    rng = random.Random(seed)
    n_train, n_val, n_test = (max(20, int(n * scale)) for n in SIZES[name])
    if name == "sms":
        with open(SHARED / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
            rows = list(dict.fromkeys((r["text"], r["label"]) for r in csv.DictReader(f)))
        rng.shuffle(rows)
        return {"test": rows[:n_test], "val": rows[n_test:n_test + n_val],
                "train": rows[n_test + n_val:n_test + n_val + n_train]}, "text"
    if name == "banking77":
        def read(file: str) -> list[tuple[str, str]]:
            with open(SHARED / "banking77" / file, newline="", encoding="utf-8") as f:
                return [(r["text"], r["category"]) for r in csv.DictReader(f)]

        train, test = read("train.csv"), read("test.csv")
        rng.shuffle(train)
        rng.shuffle(test)
        return {"train": train[:n_train], "val": train[n_train:n_train + n_val], "test": test[:n_test]}, "text"
    root = SHARED / "cifar10_subset"
    pool = [(str(p), c.name) for c in sorted((root / "train").iterdir()) for p in sorted(c.glob("*.png"))]
    test = [(str(p), c.name) for c in sorted((root / "test").iterdir()) for p in sorted(c.glob("*.png"))]
    rng.shuffle(pool)
    return {"train": pool[:n_train], "val": pool[n_train:n_train + n_val], "test": test[:n_test]}, "image"


def write_split(split: dict[str, list[tuple[str, str]]], folder: Path, modality: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image" if modality == "image" else "text", "label"])
            w.writerows(rows)
    return folder


def _backbone(modality: str) -> str:
    return "efficientnet-lite0" if modality == "image" else "minilm-l6"


# ------------------------------------------------------------------------------------------------ methods


def probe(split, modality: str) -> dict[str, Any]:
    from bench.bench_small import probe as small_probe  # one probe for both benchmarks

    t0 = time.perf_counter()
    out = small_probe(split["train"] + split["val"], split["test"], modality)
    return {"method": "probe", "test_accuracy": out["probe_test_accuracy"], "seconds": time.perf_counter() - t0,
            "detail": f"LogisticRegressionCV C={out['probe_C']:g}"}


class _TimmForTrainer:
    """A timm classifier that returns what Trainer expects (loss, logits)."""

    @staticmethod
    def build(num_classes: int):
        import torch
        from torch import nn

        from automl_ft.backbones import load_backbone

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = load_backbone("efficientnet-lite0", num_classes, task="image").model

            def forward(self, pixel_values, labels=None):
                logits = self.net(pixel_values)
                loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
                return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}

        return Wrapped()


def _hf_datasets(split, modality: str, classes: list[str]):
    """Torch datasets of the three splits as Trainer feeds them, plus the collator and model_init."""
    import torch

    index = {c: i for i, c in enumerate(classes)}
    if modality == "text":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

        from automl_ft.backbones import minilm_dir

        tok = AutoTokenizer.from_pretrained(str(minilm_dir()))

        def encode(rows):
            enc = tok([x for x, _ in rows], truncation=True, max_length=128)
            return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "labels": index[y]} for i, (_, y) in enumerate(rows)]

        def model_init(trial=None):
            return AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=len(classes))

        return {k: encode(v) for k, v in split.items()}, DataCollatorWithPadding(tok), model_init
    from automl_ft.backbones import load_backbone
    from automl_ft.config import TrialConfig
    from automl_ft.train import make_preprocess

    backbone = load_backbone("efficientnet-lite0", len(classes), task="image")
    pre = make_preprocess(backbone, TrialConfig(task="image-classification", backbone="efficientnet-lite0",
                                                num_classes=len(classes), image_size=160, augment="none"))

    def encode(rows):
        out = []
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            pixels = torch.from_numpy(pre.batch([pre.load(x) for x, _ in chunk])["pixel_values"])
            out += [{"pixel_values": pixels[j], "labels": index[y]} for j, (_, y) in enumerate(chunk)]
        return out

    return {k: encode(v) for k, v in split.items()}, None, lambda trial=None: _TimmForTrainer.build(len(classes))


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def hf_runs(split, modality: str, work: Path, *, budget: float | None) -> dict[str, Any]:
    """budget None: one default fine-tune; else Trainer.hyperparameter_search(backend="optuna", timeout=budget)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    classes = sorted({y for _, y in split["train"]})
    data, collator, model_init = _hf_datasets(split, modality, classes)
    timeline: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    spent_on_test = [0.0]

    class TestAtEnd(TrainerCallback):
        """Each run's test and val accuracy at its end (its clock time excluded from the search's)."""

        def on_train_end(self, args, state, control, model=None, **kwargs):
            s = time.perf_counter()
            elapsed = s - t0 - spent_on_test[0]  # the search's own clock: this scoring is not part of it
            scored = {part: trainer.predict(data[part]).metrics["test_accuracy"] for part in ("val", "test")}
            spent_on_test[0] += time.perf_counter() - s
            timeline.append({"seconds": elapsed, "val": scored["val"], "test": scored["test"]})

    args = TrainingArguments(output_dir=str(work), eval_strategy="epoch" if budget else "no", save_strategy="no",
                             report_to="none", disable_tqdm=True, logging_strategy="no", use_cpu=True, seed=0)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=data["train"], eval_dataset=data["val"],
                      data_collator=collator, compute_metrics=_accuracy, callbacks=[TestAtEnd()])
    if budget is None:
        trainer.train()
        return {"method": "default fine-tune (TrainingArguments defaults)", "test_accuracy": timeline[-1]["test"],
                "seconds": timeline[-1]["seconds"], "timeline": timeline, "detail": "lr 5e-5, 3 epochs, batch 8"}
    best = trainer.hyperparameter_search(direction="maximize", backend="optuna", n_trials=1000,
                                         compute_objective=lambda m: m["eval_accuracy"], timeout=budget)
    final = max(timeline, key=lambda r: r["val"])  # the run the search reports as best
    return {"method": "HF Trainer.hyperparameter_search (optuna, default space)", "test_accuracy": final["test"],
            "seconds": time.perf_counter() - t0 - spent_on_test[0], "timeline": timeline,
            "detail": f"{len(timeline)} runs; best {json.dumps(best.hyperparameters)}"}


def automl_ft_run(folder: Path, modality: str, work: Path, *, budget: float,
                  extra: list[str] | None = None) -> dict[str, Any]:
    """``automl-ft tune`` on the split folder with --timeout; each completed trial's test accuracy afterwards."""
    import numpy as np
    import optuna
    import torch

    from automl_ft.data import load_dataset
    from automl_ft.train import Caches, load_trained_model, make_batches, make_preprocess, predict_logits

    cmd = [sys.executable, "-m", "automl_ft", "tune", str(folder), "--out", str(work / "run"), "--timeout",
           f"{budget:g}", "--trials", "1000", "--seed", "0", *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"method": "automl-ft tune", "error": proc.stderr[-600:], "seconds": seconds}
    metrics = json.loads((work / "run" / "best" / "metrics.json").read_text())
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{work / 'run' / 'study.db'}")
    data = load_dataset(folder, seed=0)
    task = data.fitted_task()
    start = min(t.datetime_start for t in study.trials if t.datetime_start)
    timeline = []
    caches = Caches()
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        trial_dir = work / "run" / "trials" / f"{t.number:04d}"
        if not (trial_dir / "model.safetensors").is_file():
            continue
        backbone, config = load_trained_model(trial_dir)
        pre = make_preprocess(backbone, config)
        logits = predict_logits(backbone.model, make_batches(config, data.test, pre, caches, task, train=False,
                                                             batch_size=64), torch.device("cpu"))
        timeline.append({"seconds": (t.datetime_complete - start).total_seconds(), "val": t.value,
                         "test": float((logits.argmax(1) == np.asarray(data.test.labels)).mean())})
    timeline.sort(key=lambda r: r["seconds"])
    return {"method": "automl-ft tune (defaults)", "test_accuracy": metrics["test"]["accuracy"], "seconds": seconds,
            "timeline": timeline, "command": "automl-ft " + " ".join(cmd[3:]).replace(str(work), "$WORK"),
            "detail": f"{len(study.trials)} trials, best {metrics['trial']}"}


def at_fraction(timeline: list[dict[str, Any]], seconds: float) -> float | None:
    """Test accuracy of the best-on-val model finished within ``seconds`` (None before the first one)."""
    done = [r for r in timeline if r["seconds"] <= seconds]
    return max(done, key=lambda r: r["val"])["test"] if done else None


def plot(rows: list[dict[str, Any]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in rows})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for r in (r for r in rows if r["set"] == name):
            if r.get("timeline"):
                xs = sorted({p["seconds"] for p in r["timeline"]})
                ax.step([x / 60 for x in xs], [at_fraction(r["timeline"], x) for x in xs], where="post",
                        label=r["method"][:40])
            elif r.get("test_accuracy") is not None:
                ax.axhline(r["test_accuracy"], linestyle=":", label=r["method"][:40])
        ax.axvline(budget / 60, color="grey", linewidth=0.5)
        ax.set_title(name)
        ax.set_xlabel("minutes")
        ax.set_ylabel("test accuracy (best on val so far)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sms,banking77,cifar")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds per search")
    ap.add_argument("--work", default=None)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every split (a quick check of the script)")
    ap.add_argument("--tag", default="", help="a name part that keeps a partial run from overwriting a full one")
    args = ap.parse_args(argv)
    stamp = time.strftime("%Y-%m-%d")
    base = RESULTS_DIR / f"search{'-' + args.tag if args.tag else ''}-{slug(cpu_name())}-{stamp}"
    work_root = Path(args.work or tempfile.mkdtemp(prefix="bench-search-"))
    env = environment("cpu")
    rows: list[dict[str, Any]] = []
    for name in args.sets.split(","):
        split, modality = make_split(name, scale=args.scale)
        folder = write_split(split, work_root / name / "data", modality)
        for run in (lambda: probe(split, modality),
                    lambda: hf_runs(split, modality, work_root / name / "default", budget=None),
                    lambda: hf_runs(split, modality, work_root / name / "hf-search", budget=args.budget),
                    lambda: automl_ft_run(folder, modality, work_root / name / "automl-ft", budget=args.budget)):
            r = {"set": name, "train/val/test": "/".join(str(len(split[k])) for k in ("train", "val", "test")),
                 **run()}
            for frac in (0.25, 0.5, 1.0):
                if r.get("timeline"):
                    r[f"test_at_{int(frac * 100)}pct"] = at_fraction(r["timeline"], frac * args.budget)
            rows.append(r)
            print(json.dumps({k: r.get(k) for k in ("set", "method", "test_accuracy", "seconds", "test_at_25pct",
                                                     "test_at_50pct", "test_at_100pct")}), flush=True)
            write_rows(base, {"environment": env, "budget_s": args.budget, "command": " ".join(
                ["python", "bench/bench_search.py", *(argv or sys.argv[1:])])}, rows)
            plot(rows, args.budget, base.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
