"""BatchNorm recalibration before an LP-FT head (automl_ft/norm_calibration.py) on photos: does it cost accuracy
where the images look like ImageNet? (On digit pairs it is what lets a fine-tune beat the probe: bench_tasks.)

The CIFAR subset (bench_search's split: 1,000 train / 250 validation images), EfficientNet-Lite0 at 160 px with 8 of
16 blocks frozen, the image space's first trial (full fine-tune, LP-FT head, lr 1e-3, crop-flip) for 4 epochs, two
seeds, with and without the recalibration. Reported: the best validation accuracy and the LP-FT head's own
validation accuracy (on the features it was fitted on).

Run: ``python bench/bench_norm_calibration.py``; results in
``bench/results/norm-calibration-<machine>-<date>.jsonl``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, cpu_name, slug  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    import automl_ft.norm_calibration as nc
    from automl_ft.config import TrialConfig
    from automl_ft.data import load_dataset
    from automl_ft.train import Caches, fit
    from bench.bench_search import make_split, write_split

    work = Path(tempfile.mkdtemp(prefix="bench-norm-"))
    split, _ = make_split("cifar")
    split["test"] = split["test"][:100]
    data = load_dataset(write_split(split, work / "data", "image"), seed=0)
    caches = Caches()  # the image prefix cache: the recalibration leaves the frozen blocks alone
    original = nc.recalibrate
    out = RESULTS_DIR / f"norm-calibration-{slug(cpu_name())}-{time.strftime('%Y-%m-%d')}.jsonl"
    rows = []
    for recalibrate in (True, False):
        nc.recalibrate = original if recalibrate else (lambda *a, **k: 0)
        for seed in (0, 1):
            cfg = TrialConfig(task="image-classification", backbone="efficientnet-lite0", num_classes=10,
                              adaptation="full", head_init="probe", freeze_depth=8, lr=1e-3, image_size=160,
                              augment="crop-flip", batch_size=32, epochs=4, weight_decay=1e-4, label_smoothing=0.1,
                              dropout=0.2, head_lr_scale=3.0, seed=seed)
            t0 = time.time()
            res = fit(cfg, data, work / f"{recalibrate}-{seed}", device=torch.device("cpu"), caches=caches)
            rows.append({"recalibrate": recalibrate, "seed": seed, "best_val_accuracy": res.best_value,
                         "val_by_epoch": [round(h["val_score"], 3) for h in res.history],
                         "lpft_head_val_accuracy": res.adaptation.get("probe_val_score"),
                         "seconds": round(time.time() - t0, 1), "command": "python bench/bench_norm_calibration.py"})
            print(json.dumps(rows[-1]), flush=True)
    nc.recalibrate = original
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
