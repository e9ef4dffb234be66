"""The frozen-feature probe on each offline image backbone and on them side by side (concat_backbone.py).

On bench_small.py's CIFAR draws (8 / 16 / 32 / 64 per class, nested; the 1,000 test images fixed), each backbone's
pooled features at one input size go through the product's own feature path (bench_small's ``frozen_features``),
then bench_small's probe classifier (``probe_accuracy``: standardised ``LogisticRegressionCV``). A pair ``a+b`` is
scored on the two feature tables side by side, which is what ``ConcatImageClassifier`` computes
(tests/test_concat_backbone.py checks that equality), so every network is run once.

Run: ``python bench/bench_probe_backbones.py [--backbones efficientnet-lite0,efficientnet-lite2] [--size 224]``;
results in ``bench/results/probe-backbones-<machine>-<date>.{csv,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_small import SIZES, _labeled, _pool_and_test, draw, frozen_features, probe_accuracy
from bench.common import RESULTS_DIR, cpu_name, environment, slug, write_rows


def features(name: str, data, size: int):
    """(train, test) pooled features of ``name`` at ``size`` px, and the seconds they took."""
    from automl_ft.config import TrialConfig

    t0 = time.perf_counter()
    config = TrialConfig(task=data.task, backbone=name, num_classes=data.num_classes, image_size=size,
                         augment="none", adaptation="probe")
    x, xt = frozen_features(data, config)
    return x, xt, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite2")
    ap.add_argument("--size", type=int, default=224, help="input size of every network (px)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="examples per class")
    args = ap.parse_args(argv)
    names = args.backbones.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    pool, test_rows, _ = _pool_and_test("cifar")
    rows = draw(pool, max(sizes))  # class by class, each class's first k rows are draw(pool, k)
    data = _labeled(rows, test_rows, "image")
    y, yt = np.asarray(data.train.labels), np.asarray(data.test.labels)
    base = RESULTS_DIR / f"probe-backbones-{slug(cpu_name())}-{time.strftime('%Y-%m-%d')}"
    header = environment("cpu")
    table = {name: features(name, data, args.size) for name in names}
    out: list[dict] = []
    combos = [(n,) for n in names] + [c for r in range(2, len(names) + 1) for c in itertools.combinations(names, r)]
    for per_class in sizes:
        pick = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(data.num_classes)])
        for combo in combos:
            x = np.concatenate([table[n][0][pick] for n in combo], 1)
            xt = np.concatenate([table[n][1] for n in combo], 1)
            acc, _ = probe_accuracy(x, y[pick], xt, yt)
            row = {"set": "cifar", "per_class": per_class, "backbone": "+".join(combo), "image_size": args.size,
                   "features": int(x.shape[1]), "test_accuracy": round(acc, 4),
                   "feature_seconds": round(sum(table[n][2] for n in combo), 1)}
            print(row, flush=True)
            out.append(row)
            write_rows(base, header, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
