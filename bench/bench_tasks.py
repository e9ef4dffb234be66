"""Every new task end to end (``automl-ft tune`` + ``predict``) against a frozen-feature probe on the same split.

For each case it builds a table of real offline data (``bench/task_data.py``: scikit-learn's diabetes study and
digits, ../shared Banking77 and SMS spam) in a temporary folder, then, in one run with one seed:

1. ``automl-ft tune TABLE --out RUN --task T --trials N --timeout S --seed 0`` with the DEFAULT search space (a
   subprocess, timed); the test metrics come from ``RUN/best/metrics.json`` ("test": the task's metrics on the
   held-out test split, which tune evaluates once, after the search);
2. ``automl-ft predict RUN/best TEST_TABLE`` on a table of that test split (from ``load_dataset`` with the same
   options and seed; image paths absolute), keeping the metrics line it prints on stderr;
3. the probe: the same default backbone frozen (MiniLM-L6 mean-pooled, max length 128; EfficientNet-Lite0 globally
   pooled at 224 px, its pretrained size, with its own normalisation; 160 px, the largest size the fine-tunes
   search, before 2026-12-04 evening; the default image space's own probe reads Lite0 and Lite2 side by side at
   224 px since 2026-12-04 night, this baseline stays on Lite0), features of
   train / val / test, then scikit-learn: RidgeCV on standardised targets (regression), one-vs-rest logistic
   regression (multilabel; per-label thresholds tuned on val by the task's own ``calibrate``), logistic regression
   (single-label; ``class_weight='balanced'`` when the task marks the data imbalanced). The regularisation C is
   picked on val by the task's primary metric. Outputs are turned into the logits the task expects (standardised
   prediction; log-odds; log-probabilities) and scored by the SAME ``data.fitted_task().metrics``.

    python bench/bench_tasks.py                              # all five cases, 30 min on a 2-core CPU
    python bench/bench_tasks.py --keep DIR --reuse-tunes     # redo probe + predict on DIR's earlier tunes
    python bench/bench_tasks.py --cases text-regression --timeout 120 --trials 2
    python bench/bench_tasks.py --quick                      # smoke run: few rows, one short trial per case
    automl-ft bench tasks [same flags]

Results: ``bench/results/tasks-<device>-<date>.{json,csv}`` (``--out`` elsewhere) and a rich table; a case whose tune
fails is recorded with its command and stderr tail, and the other cases still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_ft.bench.common import environment, print_table, write_results

SHARED = Path(__file__).resolve().parents[2] / "shared"
PROBE_IMAGE_SIZE = 224  # probe.image_size of search_spaces/image-classification.yaml (the backbone's pretrained size)
PROBE_MAX_LENGTH = 128  # max_length of search_spaces/text-classification.yaml
PROBE_C = (0.01, 0.1, 1.0, 10.0)  # logistic-regression C, picked on val by the task's primary metric
SCALE_FLOOR = 0.1  # of the median feature spread: the smallest spread a probe feature is divided by
TUNE_RECORD = "tune.json"  # per case in --keep: what its tune measured, for --reuse-tunes
TUNE_FIELDS = ("tune_command", "tune_minutes", "trials", "trials_done", "tune_rc", "tune_stderr_tail",
               "tune_date", "data_fingerprint")
STDERR_TAIL = 3000


@dataclass(frozen=True)
class Case:
    name: str
    task: str
    rows: int  # rows of the full bench; --quick uses quick_rows
    quick_rows: int
    description: str


CASES = {
    "text-regression": Case("text-regression", "text-regression", 442, 150,
                            "scikit-learn diabetes study as sentences -> disease progression (25-346)"),
    "text-multilabel": Case("text-multilabel", "text-multilabel", 1500, 200,
                            "Banking77 train queries -> intent-name facets (10 labels, some empty)"),
    "image-regression": Case("image-regression", "image-regression", 600, 120,
                             "two scikit-learn digits side by side -> the two-digit number (0-99)"),
    "image-multilabel": Case("image-multilabel", "image-multilabel", 600, 120,
                             "two scikit-learn digits side by side -> the set of digits shown"),
    "text-imbalanced": Case("text-imbalanced", "text-classification", 1500, 300,
                            "SMS spam, stratified sample (ham 87 % / spam 13 %): imbalanced, macro F1"),
}


# ------------------------------------------------------------------------------------------------- data


def build_table(case: Case, folder: Path, rows: int, seed: int = 0) -> Path:
    """The case's data table under ``folder`` (real offline data; see bench/task_data.py)."""
    from automl_ft.bench.task_data import banking_facet_records, diabetes_records, write_digit_pairs, write_table

    folder.mkdir(parents=True, exist_ok=True)
    if case.name == "text-regression":
        records = diabetes_records()
        if rows < len(records):
            import random

            records = random.Random(seed).sample(records, rows)
        return write_table(folder / "diabetes.csv", records)
    if case.name == "text-multilabel":
        # JSONL keeps label lists as lists, so an intent with no facet is an empty set rather than an empty cell
        return write_table(folder / "facets.jsonl", banking_facet_records(SHARED, n=rows, seed=seed))
    if case.name in ("image-regression", "image-multilabel"):
        target = "number" if case.name == "image-regression" else "digits"
        return write_digit_pairs(folder / "pairs", target, n=rows, seed=seed)
    if case.name == "text-imbalanced":
        return write_table(folder / "sms.csv", sms_sample(rows, seed))
    raise ValueError(f"unknown case {case.name!r}")


def sms_sample(rows: int, seed: int = 0) -> list[dict]:
    """A seeded stratified sample of ``rows`` SMS messages (keeps the 4827 ham / 747 spam proportion)."""
    import pandas as pd

    df = pd.read_csv(SHARED / "data" / "sms_spam" / "sms_spam.csv")
    frac = min(1.0, rows / len(df))
    parts = [g.sample(n=max(1, round(len(g) * frac)), random_state=seed) for _, g in df.groupby("label")]
    sample = pd.concat(parts).sample(frac=1.0, random_state=seed)
    return [{"text": t, "label": y} for t, y in zip(sample["text"], sample["label"])]


def write_test_table(data: Any, path: Path) -> Path:
    """The test split of ``data`` as a table ``predict`` reads: the input column (absolute image paths) and the
    true label as the training table holds it (class name; names as a list in JSONL/Parquet, else ``|``-joined,
    so that an empty label set stays a set and not a missing cell; a number)."""
    from automl_ft.bench.task_data import write_table

    column = "image" if data.modality == "image" else "text"
    records = []
    for x, y in zip(data.test.inputs, data.test.labels):
        if data.problem == "regression":
            label: Any = float(y)
        elif data.problem == "multilabel":
            names = [data.classes[k] for k in y]
            label = names if path.suffix in (".jsonl", ".parquet") else "|".join(names)
        else:
            label = data.classes[y]
        records.append({column: str(Path(x).resolve()) if column == "image" else x, "label": label})
    return write_table(path, records)


# ------------------------------------------------------------------------------------------------ probe


def probe_features(data: Any, *, batch_size: int = 32, image_size: int = PROBE_IMAGE_SIZE,
                   max_length: int = PROBE_MAX_LENGTH) -> dict[str, Any]:
    """Frozen pooled features of the default backbone for train / val / test (what its head would see)."""
    import numpy as np
    import torch

    from automl_ft.backbones import load_backbone
    from automl_ft.config import TrialConfig
    from automl_ft.train import make_preprocess

    image = data.modality == "image"
    name = "efficientnet-lite0" if image else "minilm-l6"
    head_size = data.fitted_task().head_size
    config = TrialConfig(task=data.task, backbone=name, num_classes=head_size,
                         image_size=image_size if image else None, max_length=None if image else max_length)
    torch.manual_seed(0)
    backbone = load_backbone(name, head_size, task=data.modality)
    pre = make_preprocess(backbone, config)
    model = backbone.model.eval()
    head = model.head if hasattr(model, "head") else model.net.get_classifier()
    feats: list[np.ndarray] = []
    hook = head.register_forward_hook(lambda _m, args, _out: feats.append(args[0].detach().float().numpy().copy()))
    out: dict[str, Any] = {"backbone": name, "image_size": config.image_size, "max_length": config.max_length}
    try:
        with torch.inference_mode():
            for split in ("train", "val", "test"):
                inputs = getattr(data, split).inputs
                feats.clear()
                for i in range(0, len(inputs), batch_size):
                    chunk = inputs[i: i + batch_size]
                    feeds = pre.batch([pre.load(p) for p in chunk]) if image else pre.pad(pre.encode(chunk))
                    model(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
                out[split] = np.concatenate(feats).astype(np.float64)
    finally:
        hook.remove()
    return out


def fit_probe(data: Any, feats: dict[str, Any]) -> dict[str, Any]:
    """Fit the linear probe on train features, pick its regularisation on val, score test with the task's metrics.

    Returns ``{"model", "choice", "val", "test"}`` (val / test: the task's metrics dicts)."""
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    task = data.fitted_task()
    scaler = StandardScaler().fit(feats["train"])
    # A pooled dimension almost constant on train (EfficientNet on digit pairs: spreads down to 1e-7 of the median
    # one) says nothing the probe can learn, and dividing by its spread blew test features up to 900 sigma and the
    # image-regression probe's RMSE to 78 (target std 29); so no dimension is scaled up by more than 10x the median.
    scaler.scale_ = np.maximum(scaler.scale_, SCALE_FLOOR * np.median(scaler.scale_))
    x = {s: scaler.transform(feats[s]) for s in ("train", "val", "test")}
    labels = {s: getattr(data, s).labels for s in ("train", "val", "test")}

    if data.problem == "regression":
        from sklearn.linear_model import RidgeCV

        # standardised targets, as the fine-tune trains on: the prediction is then the task's 1-column logit
        reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x["train"], task.targets(labels["train"]))
        logits = {s: reg.predict(x[s]).reshape(-1, 1) for s in ("val", "test")}
        return {"model": "RidgeCV (standardised features and targets)", "choice": {"alpha": float(reg.alpha_)},
                "val": task.metrics(logits["val"], labels["val"]),
                "test": task.metrics(logits["test"], labels["test"])}

    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, dict[str, Any]] | None = None
    if data.problem == "multilabel":
        from sklearn.multiclass import OneVsRestClassifier

        def hot(ys: list) -> np.ndarray:
            m = np.zeros((len(ys), data.num_classes), dtype=int)
            for i, y in enumerate(ys):
                m[i, list(y)] = 1
            return m

        y_train = hot(labels["train"])
        for c in PROBE_C:
            clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000)).fit(x["train"], y_train)
            # log-odds per label (sigmoid of them is the probability); a label constant in train gets +-30
            proba = np.clip(clf.predict_proba(x["val"]), 1e-13, 1 - 1e-13), np.clip(clf.predict_proba(x["test"]),
                                                                                    1e-13, 1 - 1e-13)
            logits = {"val": np.log(proba[0] / (1 - proba[0])), "test": np.log(proba[1] / (1 - proba[1]))}
            task.calibrate(logits["val"], labels["val"])  # the task's own per-label threshold rule, on val
            score = task.primary(task.metrics(logits["val"], labels["val"]))
            if best is None or task.better(score, best[1]):
                best = (c, score, logits)
        c, _, logits = best
        task.calibrate(logits["val"], labels["val"])
        model = "OneVsRest(LogisticRegression), thresholds tuned on val by the task"
    else:
        balanced = bool(task.imbalanced)
        for c in PROBE_C:
            clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
            clf.fit(x["train"], labels["train"])
            logits = {}
            for s in ("val", "test"):
                full = np.full((len(x[s]), data.num_classes), -1e4)  # a class absent from train is never chosen
                full[:, clf.classes_] = clf.predict_log_proba(x[s])
                logits[s] = full
            score = task.primary(task.metrics(logits["val"], labels["val"]))
            if best is None or task.better(score, best[1]):
                best = (c, score, logits)
        c, _, logits = best
        model = "LogisticRegression" + (" (class_weight=balanced)" if balanced else "")
    return {"model": model, "choice": {"C": c}, "val": task.metrics(logits["val"], labels["val"]),
            "test": task.metrics(logits["test"], labels["test"])}


# ------------------------------------------------------------------------------------------------- runs


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "automl_ft", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def trial_states(run_dir: Path) -> dict[str, int]:
    """Trials per state in the run's own study database (COMPLETE, PRUNED, FAIL...)."""
    db = run_dir / "study.db"
    if not db.is_file():
        return {}
    with sqlite3.connect(str(db)) as con:
        return {str(s): int(n) for s, n in con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of a task's metrics dict (per-class tables and residual summaries left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def best_config(best_dir: Path) -> dict[str, Any]:
    keys = ("backbone", "adaptation", "freeze_depth", "lr", "lora_rank", "epochs", "batch_size", "image_size",
            "max_length", "loss", "imbalance", "augment")
    try:
        config = json.loads((best_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: config[k] for k in keys if config.get(k) is not None}


def run_tune(case: Case, table: Path, run_dir: Path, work: Path, *, trials: int, timeout: float, seed: int,
             log=print) -> dict[str, Any]:
    """``automl-ft tune`` with the default search space, as a timed subprocess; returns its record."""
    import datetime as dt

    cmd = _cli("tune", str(table), "--out", str(run_dir), "--task", case.task, "--trials", str(trials),
               "--timeout", f"{timeout:g}", "--seed", str(seed))
    record: dict[str, Any] = {"tune_command": "automl-ft " + " ".join(cmd[3:]).replace(str(work), "$WORK"),
                              "tune_date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    log(f"[{case.name}] tune: {record['tune_command']}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env())
    record["tune_minutes"] = round((time.perf_counter() - t0) / 60.0, 2)
    record["trials"] = trial_states(run_dir)
    record["trials_done"] = sum(n for s, n in record["trials"].items() if s in ("COMPLETE", "PRUNED"))
    record["tune_rc"] = proc.returncode
    if proc.returncode != 0:
        record["tune_stderr_tail"] = proc.stderr[-STDERR_TAIL:]
    return record


def reusable_tune(folder: Path, data: Any) -> dict[str, Any] | None:
    """The record of an earlier tune of this case in ``folder`` (``--keep``) when its run was made from the very
    same data (run.json's fingerprint); None otherwise (then the case is tuned again)."""
    try:
        record = json.loads((folder / TUNE_RECORD).read_text())
        run = json.loads((folder / "run" / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if run.get("data_fingerprint") != data.fingerprint or record.get("data_fingerprint") != data.fingerprint:
        return None
    return {**{k: record[k] for k in TUNE_FIELDS if k in record}, "reused": True}


def run_case(case: Case, work: Path, *, rows: int, trials: int, timeout: float, seed: int,
             reuse_tunes: bool = False, log=print) -> dict[str, Any]:
    from automl_ft.data import load_dataset

    folder = work / case.name
    table = build_table(case, folder / "data", rows, seed)
    data = load_dataset(table, task=case.task, seed=seed)
    task = data.fitted_task()
    row: dict[str, Any] = {
        "case": case.name, "task": data.task, "data": case.description, "rows": len(data.train) + len(data.val)
        + len(data.test), "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "classes": len(data.classes), "primary_metric": task.primary_metric, "direction": task.direction,
        "imbalanced": bool(getattr(task, "imbalanced", False)), "trials_budget": trials, "timeout_s": timeout,
    }
    log(f"[{case.name}] {data.task}: {row['rows']} rows ({len(data.train)}/{len(data.val)}/{len(data.test)}), "
        f"primary {task.primary_metric} ({task.direction})")

    # the probe first: its numbers stand even when tune fails
    t0 = time.perf_counter()
    feats = probe_features(data)
    probe = fit_probe(data, feats)
    row.update(probe_model=probe["model"], probe_backbone=feats["backbone"], probe_choice=probe["choice"],
               probe_seconds=round(time.perf_counter() - t0, 1),
               probe_test=task.primary(probe["test"]), probe_val=task.primary(probe["val"]),
               probe_test_metrics=scalar_metrics(probe["test"]))
    log(f"[{case.name}] probe ({probe['model']}, {probe['choice']}): test {task.primary_metric} "
        f"{row['probe_test']:.4f} ({row['probe_seconds']} s)")

    run_dir = folder / "run"
    record = reusable_tune(folder, data) if reuse_tunes else None
    if record is not None:
        log(f"[{case.name}] tune: reusing the run of {record['tune_date']} in {run_dir} (same data fingerprint "
            f"{record['data_fingerprint']}): {record['tune_command']}")
    else:
        if run_dir.exists():  # tune would resume it: a fresh search is what is measured
            import shutil

            shutil.rmtree(run_dir)
        record = run_tune(case, table, run_dir, work, trials=trials, timeout=timeout, seed=seed, log=log)
        record["data_fingerprint"] = data.fingerprint
        (folder / TUNE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    reused = bool(record.pop("reused", False))
    row.update(record, tune_reused=reused)
    metrics_file = run_dir / "best" / "metrics.json"
    if record.get("tune_rc") != 0 or not metrics_file.is_file():
        row["status"] = "tune-failed"
        log(f"[{case.name}] TUNE FAILED (rc {record.get('tune_rc')}) after {row['tune_minutes']} min:\n"
            f"{record.get('tune_stderr_tail', '')}")
        return row
    metrics = json.loads(metrics_file.read_text())
    test = metrics.get("test", {})
    row.update(status="ok", best_trial=metrics.get("trial"), val_score=metrics.get("val_score"),
               best_config=best_config(run_dir / "best"), test_primary=task.primary(test) if test else None,
               test_metrics=scalar_metrics(test))
    row["beats_probe"] = bool(row["test_primary"] is not None
                              and task.better(row["test_primary"], row["probe_test"]))
    log(f"[{case.name}] tune: {row['trials_done']} trials in {row['tune_minutes']} min, best {row['best_config']}; "
        f"test {task.primary_metric} {row['test_primary']:.4f} vs probe {row['probe_test']:.4f} -> "
        f"{'beats' if row['beats_probe'] else 'DOES NOT beat'} the probe")

    test_table = write_test_table(data, folder / f"test{table.suffix}")
    cmd = _cli("predict", str(run_dir / "best"), str(test_table))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env())
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    row.update(predict_rc=proc.returncode, predict_seconds=round(time.perf_counter() - t0, 1),
               predict_outputs=sum(1 for ln in proc.stdout.splitlines() if ln.strip()),
               predict_stderr=next((ln for ln in lines if "labelled inputs" in ln), lines[-1] if lines else ""))
    if proc.returncode != 0:
        row["predict_stderr_tail"] = proc.stderr[-STDERR_TAIL:]
    log(f"[{case.name}] predict (rc {proc.returncode}, {row['predict_outputs']} outputs): {row['predict_stderr']}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="automl-ft bench tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--trials", type=int, help="trials per tune (default 6; --quick 1)")
    parser.add_argument("--timeout", type=float, help="seconds per tune (default 300; --quick 30)")
    parser.add_argument("--rows", type=int, help="rows per case (default: the case's own; --quick: a few hundred)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, one short trial per case")
    parser.add_argument("--out", type=Path, help="folder for the result files (default bench/results)")
    parser.add_argument("--keep", type=Path, help="keep the tables and runs in this folder (default: a temp folder); a case's earlier run there is "
                             "replaced unless --reuse-tunes")
    parser.add_argument("--reuse-tunes", action="store_true",
                        help="with --keep: reuse a case's earlier tune there (same data fingerprint) and redo the "
                             "probe and predict only; the rows say tune_reused")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        parser.error(f"unknown case(s) {', '.join(unknown) or '(none)'}; use {', '.join(CASES)}")
    if args.reuse_tunes and not args.keep:
        parser.error("--reuse-tunes needs --keep DIR, the folder of the earlier run")
    trials = args.trials or (1 if args.quick else 6)
    timeout = args.timeout or (30.0 if args.quick else 300.0)
    if not (SHARED / "data").is_dir() and any(n in ("text-multilabel", "text-imbalanced") for n in names):
        parser.error(f"{SHARED / 'data'} not found (Banking77 and SMS spam come from it); pass --cases without them")

    import torch

    torch.set_num_threads(int(os.environ.get("AUTOML_FT_THREADS", torch.get_num_threads())))
    env = environment("cpu")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        for name in names:
            case = CASES[name]
            n = args.rows or (case.quick_rows if args.quick else case.rows)
            t0 = time.perf_counter()
            try:
                rows.append(run_case(case, work, rows=n, trials=trials, timeout=timeout, seed=args.seed,
                                     reuse_tunes=args.reuse_tunes))
            except Exception as e:  # noqa: BLE001  (one broken case must not cost the others their numbers)
                import traceback

                rows.append({"case": name, "status": "error", "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-STDERR_TAIL:]})
                print(f"[{name}] ERROR {type(e).__name__}: {e}", flush=True)
            print(f"[{name}] case done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    config = {"cases": names, "trials": trials, "timeout_s": timeout, "seed": args.seed, "quick": args.quick,
              "probe": {"text": f"minilm-l6 mean-pooled, max_length {PROBE_MAX_LENGTH}",
                        "image": f"efficientnet-lite0 pooled, {PROBE_IMAGE_SIZE} px", "C_grid": list(PROBE_C)}}
    name = "tasks-quick" if args.quick else "tasks"
    json_path, csv_path = write_results(name, rows, env, config, out_dir=args.out)
    print_table("automl-ft tune vs frozen-feature probe (test split)", rows,
                ["case", "task", "rows", "tune_minutes", "trials_done", "primary_metric", "test_primary", "probe_test",
                 "beats_probe", "status"])
    print(f"results: {json_path} and {csv_path}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
