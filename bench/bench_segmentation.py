"""Segmentation on EfficientNet-Lite0: the searched model against the frozen-encoder baseline, same split.

Data: handwritten digits pasted onto scikit-learn's bundled photographs, their silhouettes as masks
(tests/segmentation_data.py; 3 classes: background, "0", "1"; stroke borders ignored). Both runs read the same
folder with the same seed, so train/val/test are identical (the data fingerprint in the output proves it).

- searched: ``automl-ft tune`` over U-Net / FPN / DeepLabV3+ on the offline Lite0 weights (the bundled
  image-segmentation space, epochs and size cut to fit a CPU: see ``searched_space``), best trial by val mIoU;
- baseline: a 1x1 conv on the frozen encoder's deepest features (``linear:efficientnet-lite0``, every stage frozen),
  trained with the same budget.

Reported: test mIoU, mean Dice, pixel accuracy and per-class IoU of both, from each export's metrics.json.

    python bench/bench_segmentation.py --n 200 --size 128 --trials 4 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import environment, write_results


def searched_space(size: int, epochs: int) -> str:
    return f"""
task: image-segmentation
backbones:
  unet:efficientnet-lite0: {{image_size: {size}, freeze_depth: {{low: 0, high: 4}}, augment: crop-flip}}
  fpn:efficientnet-lite0: {{image_size: {size}, freeze_depth: {{low: 0, high: 4}}, augment: crop-flip}}
  deeplabv3plus:efficientnet-lite0: {{image_size: {size}, freeze_depth: {{low: 0, high: 4}}, augment: crop-flip}}
adaptation:
  full: {{lr: {{low: 5.0e-4, high: 3.0e-3, log: true}}}}
  lora: {{rank: [8, 16], alpha: [16, 32], dropout: 0.0, lr: {{low: 1.0e-3, high: 4.0e-3, log: true}}}}
training: {{weight_decay: 1.0e-4, batch_size: 8, epochs: {epochs}, patience: {epochs}, head_lr_scale: 3.0}}
sampler: {{type: tpe, n_startup_trials: 2}}
pruner: {{type: none}}
first_trial: {{backbone: unet:efficientnet-lite0, adaptation: full, freeze_depth: 2, lr: 1.0e-3}}
"""


def baseline_space(size: int, epochs: int) -> str:
    return f"""
task: image-segmentation
backbones:
  linear:efficientnet-lite0: {{image_size: {size}, freeze_depth: 7, augment: crop-flip}}
adaptation:
  full: {{lr: 1.0e-2}}
training: {{weight_decay: 1.0e-4, batch_size: 8, epochs: {epochs}, patience: {epochs}, head_lr_scale: 1.0}}
pruner: {{type: none}}
"""


def run(name: str, data: Path, space: str, trials: int, work: Path) -> dict:
    from automl_ft.cli import main

    (work / f"{name}.yaml").write_text(space)
    started = time.time()
    rc = main(["tune", str(data), "--out", str(work / name), "--space", str(work / f"{name}.yaml"),
               "--trials", str(trials), "--seed", "0"])
    if rc != 0:
        raise SystemExit(f"{name}: tune exited {rc}")
    metrics = json.loads((work / name / "best" / "metrics.json").read_text())
    config = json.loads((work / name / "best" / "config.json").read_text())
    summary = json.loads((work / name / "data_summary.json").read_text())
    test = metrics["test"]
    return {"run": name, "backbone": config["backbone"], "adaptation": config["adaptation"],
            "freeze_depth": config["freeze_depth"], "loss": config["loss"], "lr": config["lr"], "trials": trials,
            "test_miou": test["miou"], "test_mean_dice": test["mean_dice"],
            "test_pixel_accuracy": test["pixel_accuracy"],
            "test_iou_per_class": {c: v["iou"] for c, v in test["per_class"].items()},
            "onnx_agreement": metrics["onnx"]["prediction_agreement"],
            "split_sizes": summary["split_sizes"], "minutes": round((time.time() - started) / 60, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images (80/10/10 split)")
    parser.add_argument("--size", type=int, default=128, help="image side (also the training size)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out-dir", help="results folder (default bench/results)")
    args = parser.parse_args()
    from tests.segmentation_data import build

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = build(work / "digits-on-photos", n=args.n, size=args.size, seed=0)
        rows = [run("searched", data, searched_space(args.size, args.epochs), args.trials, work),
                run("frozen-baseline", data, baseline_space(args.size, args.epochs), 1, work)]
    for r in rows:
        print(f"{r['run']:>16}: {r['backbone']:<34} test mIoU {100 * r['test_miou']:.2f}%  mean Dice "
              f"{100 * r['test_mean_dice']:.2f}%  pixel acc {100 * r['test_pixel_accuracy']:.2f}%  "
              f"({r['minutes']} min)")
    paths = write_results("segmentation", rows, environment("cpu"), vars(args), args.out_dir)
    print(f"results: {paths[0]}")


if __name__ == "__main__":
    main()
