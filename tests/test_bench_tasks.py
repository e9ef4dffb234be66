"""``automl-ft bench tasks``: the frozen-feature probe each task is measured against, and the tables it writes.

The probe runs on small real sets (the diabetes study, SMS spam, Banking77 facets, digit pairs) in seconds; one slow
test runs a whole case (tune + predict + probe) with a tiny budget.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from automl_ft.bench import bench_tasks as bt

from automl_ft.data import load_dataset


def case_data(tmp_path, name: str, rows: int):
    case = bt.CASES[name]
    table = bt.build_table(case, tmp_path / name, rows)
    return table, load_dataset(table, task=case.task, seed=0)


def names(data, label) -> tuple:
    if data.problem == "regression":
        return (round(float(label), 6),)
    if data.problem == "multilabel":
        return tuple(sorted(data.classes[k] for k in label))
    return (data.classes[label],)


def pairs(data, split) -> set:
    return {(x, names(data, y)) for x, y in zip(split.inputs, split.labels)}


def test_regression_probe_is_scored_on_standardised_predictions(tmp_path, shared_dir):
    """RidgeCV on standardised targets, its prediction passed as the 1-column logit: the task de-standardises it.
    Passing original units (or forgetting the codec) would give an RMSE of hundreds and a negative R^2."""
    _, data = case_data(tmp_path, "text-regression", 442)
    probe = bt.fit_probe(data, bt.probe_features(data))
    test = probe["test"]
    y = np.asarray(data.test.labels, dtype=float)
    assert probe["model"].startswith("RidgeCV")
    # the measured probe: R^2 0.27, RMSE 69 of a target std ~77 (a real, weak signal from sentences of numbers)
    assert 0.0 < test["r2"] < 1.0 and test["rmse"] < float(y.std())
    assert test["rmse"] == pytest.approx(np.sqrt(test["loss"]) * data.fitted_task().std, rel=1e-6)


def test_imbalanced_probe_is_class_weighted_and_scored_by_macro_f1(tmp_path, shared_dir):
    _, data = case_data(tmp_path, "text-imbalanced", 300)
    task = data.fitted_task()
    assert task.imbalanced and task.primary_metric == "macro_f1"
    probe = bt.fit_probe(data, bt.probe_features(data))
    assert probe["model"] == "LogisticRegression (class_weight=balanced)"
    assert probe["choice"]["C"] in bt.PROBE_C
    assert probe["test"]["macro_f1"] > 0.8  # measured 0.92: MiniLM features separate spam well


def test_multilabel_probe_uses_the_tasks_thresholds(tmp_path, shared_dir):
    _, data = case_data(tmp_path, "text-multilabel", 200)
    probe = bt.fit_probe(data, bt.probe_features(data))
    task = data.fitted_task()
    assert task.calibrated and not np.allclose(task.thresholds, 0.5)  # tuned on val by the task's rule
    assert probe["test"]["micro_f1"] > 0.5  # measured 0.68 on 20 test queries


def test_sms_sample_is_stratified_and_seeded(shared_dir):
    a, b = bt.sms_sample(1500, seed=0), bt.sms_sample(1500, seed=0)
    assert a == b and len(a) == 1500
    spam = sum(r["label"] == "spam" for r in a) / len(a)
    assert spam == pytest.approx(747 / 5574, abs=0.002)


@pytest.mark.parametrize("name,rows", [("text-multilabel", 200), ("image-multilabel", 200), ("image-regression", 200),
                                       ("text-imbalanced", 300)])
def test_test_table_reads_back_as_the_test_split(tmp_path, shared_dir, name, rows):
    """What predict is given holds exactly the test split: the same inputs (absolute image paths) and labels,
    empty label sets included."""
    table, data = case_data(tmp_path, name, rows)
    out = bt.write_test_table(data, tmp_path / f"test{table.suffix}")
    if data.modality == "image":
        assert all(line.startswith("/") for line in out.read_text().splitlines()[1:])
    back = load_dataset(out, task=bt.CASES[name].task, seed=0)  # re-split: compare the union of its splits
    got = pairs(back, back.train) | pairs(back, back.val) | pairs(back, back.test)
    assert got == pairs(data, data.test)


def test_unknown_case_is_a_usage_error(capsys):
    from automl_ft.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "tasks", "--cases", "text-regression,nope"])
    assert exc.value.code == 2
    assert "unknown case(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_case_end_to_end(tmp_path, shared_dir):
    """One case with a tiny budget: tune (default space) + predict + probe, recorded in the results file."""
    rc = bt.main(["--quick", "--cases", "text-regression", "--out", str(tmp_path)])
    (result,) = tmp_path.glob("tasks-quick-*.json")
    row = json.loads(result.read_text())["results"][0]
    assert rc == 0 and row["status"] == "ok", row
    assert row["trials_done"] >= 1 and row["predict_rc"] == 0 and "labelled inputs" in row["predict_stderr"]
    assert isinstance(row["test_primary"], float) and isinstance(row["probe_test"], float)
    assert row["beats_probe"] == (row["test_primary"] < row["probe_test"])  # RMSE: lower is better


def test_probe_ignores_a_feature_constant_on_train(tmp_path):
    """A pooled dimension almost constant on train but not at test (EfficientNet on digit pairs: spreads down to 1e-7
    of the median) must not be divided by its spread: that blew test features up to 900 sigma and the
    image-regression probe's RMSE to 78 for a target std of 29. Features here: the diabetes study's own ten
    measurements read back from the sentences, plus one such dimension."""
    import re

    _, data = case_data(tmp_path, "text-regression", 442)
    rng = np.random.default_rng(0)

    def feats(split, constant):
        x = np.array([[float(v) for v in re.findall(r" (-?[\d.]+)(?=[,.])", t)] for t in split.inputs])
        assert x.shape[1] == 10
        col = rng.normal(0, 1e-7, len(x)) if constant else np.full(len(x), 1.0)
        return np.column_stack([x, col])

    probe = bt.fit_probe(data, {"train": feats(data.train, True), "val": feats(data.val, True),
                                "test": feats(data.test, False)})
    assert probe["test"]["r2"] > 0.2  # the ten measurements explain ~0.5 of the variance


def test_a_tune_is_reused_only_for_the_same_data(tmp_path):
    """--reuse-tunes takes an earlier run of a case only when run.json's data fingerprint is this data's."""
    from types import SimpleNamespace

    folder = tmp_path / "case"
    (folder / "run").mkdir(parents=True)
    record = {"tune_command": "automl-ft tune ...", "tune_minutes": 4.1, "trials": {"COMPLETE": 6},
              "trials_done": 6, "tune_rc": 0, "tune_date": "2026-12-03T22:56:09+00:00", "data_fingerprint": "abc"}
    (folder / bt.TUNE_RECORD).write_text(json.dumps(record))
    (folder / "run" / "run.json").write_text(json.dumps({"data_fingerprint": "abc"}))
    assert bt.reusable_tune(folder, SimpleNamespace(fingerprint="abc")) == {**record, "reused": True}
    assert bt.reusable_tune(folder, SimpleNamespace(fingerprint="other")) is None
    (folder / "run" / "run.json").write_text(json.dumps({"data_fingerprint": "changed"}))
    assert bt.reusable_tune(folder, SimpleNamespace(fingerprint="abc")) is None
    assert bt.reusable_tune(tmp_path / "missing", SimpleNamespace(fingerprint="abc")) is None
