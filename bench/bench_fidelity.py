"""Lower-fidelity first rungs, measured at equal budget (issue 13).

One split per data set (bench_search's: same train / val / test, seed 0), then ``automl-ft tune --timeout BUDGET``
twice with the default search space: as shipped, and with ``pruner.subset_fraction: F``, which trains the epochs of
Hyperband's lowest rung (``min_resource``, 1 epoch by default) on that fraction of each epoch's shuffled batches.
A trial pruned at the rung then costs F of an epoch instead of one; a trial that survives it has trained on less.

Reported per run: trials started / completed / pruned, the mean time of a pruned trial, the best validation score,
the test accuracy of the model the run ends with, and the test accuracy of the best-on-val trial finished within
25 / 50 / 100 % of the budget.

Run: ``python bench/bench_fidelity.py [--sets sms] [--budget 300] [--fraction 0.33]``. Results:
``bench/results/fidelity-<machine>-<date>.{csv,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_search import at_fraction, automl_ft_run, make_split, write_split  # noqa: E402
from bench.common import RESULTS_DIR, cpu_name, environment, slug, write_rows  # noqa: E402


def space_with_subset(modality: str, fraction: float, folder: Path) -> Path:
    """The default space of ``modality``'s classification, with ``pruner.subset_fraction`` set."""
    import importlib.resources

    import yaml

    raw = yaml.safe_load((importlib.resources.files("search_spaces") / f"{modality}-classification.yaml")
                         .read_text())
    raw["pruner"] = {**(raw.get("pruner") or {}), "subset_fraction": fraction}
    path = folder / f"{modality}-classification-subset.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_stats(run_dir: Path) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run_dir / 'study.db'}")
    state = optuna.trial.TrialState
    pruned = [t for t in study.trials if t.state == state.PRUNED]
    done = [t for t in study.trials if t.state == state.COMPLETE]
    return {"trials": len(study.trials), "completed": len(done), "pruned": len(pruned),
            "pruned_mean_s": round(sum(t.user_attrs.get("seconds", 0.0) for t in pruned) / len(pruned), 1)
            if pruned else None,
            "best_val": max((t.value for t in done), default=None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sms")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per search")
    ap.add_argument("--fraction", type=float, default=0.33, help="pruner.subset_fraction of the second run")
    ap.add_argument("--work", default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    stamp = time.strftime("%Y-%m-%d")
    base = RESULTS_DIR / f"fidelity{'-' + args.tag if args.tag else ''}-{slug(cpu_name())}-{stamp}"
    work_root = Path(args.work or tempfile.mkdtemp(prefix="bench-fidelity-"))
    header = {"environment": environment("cpu"), "budget_s": args.budget, "fraction": args.fraction,
              "command": " ".join(["python", "bench/bench_fidelity.py", *(argv or sys.argv[1:])])}
    rows: list[dict[str, Any]] = []
    for name in args.sets.split(","):
        split, modality = make_split(name)
        folder = write_split(split, work_root / name / "data", modality)
        space = space_with_subset(modality, args.fraction, work_root / name)
        for label, extra in (("whole epochs", []), (f"first rung on {args.fraction:.0%}", ["--space", str(space)])):
            work = work_root / name / ("subset" if extra else "whole")
            r = automl_ft_run(folder, modality, work, budget=args.budget, extra=extra)
            r = {"set": name, "variant": label,
                 "train/val/test": "/".join(str(len(split[k])) for k in ("train", "val", "test")), **r}
            if "error" not in r:
                r.update(trial_stats(work / "run"))
                for frac in (0.25, 0.5, 1.0):
                    r[f"test_at_{int(frac * 100)}pct"] = at_fraction(r["timeline"], frac * args.budget)
            rows.append(r)
            print(json.dumps({k: r.get(k) for k in ("set", "variant", "test_accuracy", "best_val", "trials", "pruned",
                                                     "pruned_mean_s", "seconds", "test_at_50pct", "error")}),
                  flush=True)
            write_rows(base, header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
