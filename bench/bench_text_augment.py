"""Text augmentation on few examples: the text space's first trial (LP-FT full fine-tune, lr 1e-4, stretched to 40+
optimizer steps by search/schedule.py) trained on all of bench_small.py's draw of 8 or 16 examples per class with
``augment`` none / token-dropout / span-drop, seeds 0 and 1; test accuracy on bench_small.py's fixed test sets.

Run: ``python bench/bench_text_augment.py [--sets sms,banking10]``; one JSON line per point on stdout and in
``bench/results/text-augment-<machine>-<date>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_small import _config, _labeled, _pool_and_test, draw  # noqa: E402
from bench.common import RESULTS_DIR, cpu_name, slug  # noqa: E402


def test_accuracy(config, data, work: Path, caches) -> float:
    import numpy as np
    import torch

    from automl_ft.train import fit, load_trained_model, make_batches, make_preprocess, predict_logits

    cpu = torch.device("cpu")
    fit(config, data, work, device=cpu, caches=caches, keep_last=True)
    backbone, trained = load_trained_model(work)
    logits = predict_logits(backbone.model, make_batches(trained, data.test, make_preprocess(backbone, trained),
                                                         caches, data.fitted_task(), train=False, batch_size=64), cpu)
    return float((logits.argmax(1) == np.asarray(data.test.labels)).mean())


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import numpy as np

    from automl_ft.search.schedule import fit_to_data
    from automl_ft.train import Caches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sms,banking10")
    ap.add_argument("--sizes", default="8,16")
    args = ap.parse_args(argv)
    out = RESULTS_DIR / f"text-augment-{slug(cpu_name())}-{time.strftime('%Y-%m-%d')}.jsonl"
    caches, work = Caches(), Path(tempfile.mkdtemp(prefix="bench-text-augment-"))
    with open(out, "w") as f:
        for name in args.sets.split(","):
            pool, test, modality = _pool_and_test(name)
            for k in map(int, args.sizes.split(",")):
                data = _labeled(draw(pool, k), test, modality)
                row: dict = {"set": name, "per_class": k}
                for augment in ("none", "token-dropout", "span-drop"):
                    accs = []
                    for seed in (0, 1):
                        config = fit_to_data(_config(data, modality, adaptation="full", freeze_depth=0, lr=1e-4,
                                                     epochs=3, batch_size=32, weight_decay=0.01, dropout=0.1,
                                                     head_init="probe", head_lr_scale=10.0, seed=seed,
                                                     augment=augment, patience=2), len(data.train))
                        accs.append(round(test_accuracy(config, data, work / f"{name}-{k}-{augment}-{seed}", caches),
                                          4))
                    row[augment] = {"seeds": accs, "mean": round(float(np.mean(accs)), 4)}
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
