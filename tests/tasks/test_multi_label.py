"""Multi-label classification: parsing, detection, metrics against scikit-learn, loss against torch, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from automl_ft.errors import DataError, UsageError
from automl_ft.tasks import detect_problem, get_task, load_task
from automl_ft.tasks.base import sigmoid

ML = get_task("multilabel")


def test_parse_strings_lists_arrays_empty_and_missing():
    cells = ["b| a ", "", "  ", None, float("nan"), "nan", ["c", " a", "a"], ("b",), np.array(["d", "c"]), [],
             "a||b|", 7]
    p = ML.parse_labels(cells, "|")
    assert p.classes == ["7", "a", "b", "c", "d"]
    names = [[p.classes[j] for j in ys] for ys in p.labels]
    assert names == [["a", "b"], [], [], ["a", "c"], ["b"], ["c", "d"], [], ["a", "b"], ["7"]]
    assert all(ys == sorted(ys) for ys in p.labels)
    assert p.missing == [3, 4, 5]  # None, NaN and a printed NaN; "" and [] are examples with no label
    assert any("3 example(s) have no label" in w for w in p.warnings)


def test_parse_with_another_separator():
    p = ML.parse_labels(["x;y", "a|b"], ";")
    assert p.classes == ["a|b", "x", "y"]


def test_empty_separator_is_a_usage_error():
    with pytest.raises(UsageError, match="--label-sep"):
        ML.parse_labels(["a"], "")
    with pytest.raises(UsageError, match="--label-sep"):
        detect_problem(["a"], "")


def test_all_rows_without_labels_is_a_data_error():
    with pytest.raises(DataError, match="all 2 labeled rows have an empty label set"):
        ML.parse_labels(["", []], "|")


@pytest.mark.parametrize("joined, plain, problem", [(1, 99, "multilabel"), (1, 100, "classification"),
                                                    (2, 150, "multilabel"), (0, 50, "classification")])
def test_detect_needs_one_percent_of_labels_joined(joined, plain, problem):
    cells = ["a|b"] * joined + ["a"] * plain + ["", None]  # missing cells do not count
    got, reason = detect_problem(cells, "|")
    assert got == problem
    if problem == "multilabel":
        assert f"{joined} of {joined + plain} labels" in reason and "'|'" in reason


def test_detect_any_list_cell():
    got, reason = detect_problem(["a", ["a", "b"], "c"], "|")
    assert got == "multilabel" and reason.startswith("1 label cell(s) hold lists")


def test_strata_are_multi_hot():
    s = ML.strata([[0, 2], [], [1]])
    np.testing.assert_array_equal(s, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert ML.strata([[], []]).shape == (2, 0)


def random_case(n: int, k: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    y = rng.random((n, k)) < rng.uniform(0.05, 0.6, size=k)
    logits = (rng.normal(size=(n, k)) + 1.5 * (2 * y - 1)).astype(np.float32)
    labels = [list(np.flatnonzero(row)) for row in y]
    task = ML.fit([f"l{j}" for j in range(k)], labels)
    return task, logits, labels, y


@pytest.mark.parametrize("n, k, seed", [(1, 3, 0), (40, 5, 1), (300, 12, 2)])
def test_metrics_against_scikit_learn_and_torch(n, k, seed):
    task, logits, labels, y = random_case(n, k, seed)
    task.thresholds = np.random.default_rng(seed).uniform(0.2, 0.8, size=k)  # non-default thresholds
    m = task.metrics(logits, labels)
    prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    pred = prob >= task.thresholds
    for avg in ("micro",):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert (m["micro_precision"], m["micro_recall"], m["micro_f1"]) == pytest.approx((p, r, f))
    present = np.flatnonzero(y.any(0) | pred.any(0))
    if len(present):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
        assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))
    pl, rl, fl, sl = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for j in range(k):
        assert m["per_label"][f"l{j}"] == pytest.approx({"precision": pl[j], "recall": rl[j], "f1": fl[j],
                                                         "support": sl[j], "threshold": task.thresholds[j]})
    assert m["subset_accuracy"] == pytest.approx(float((pred == y).all(1).mean()))
    bce = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(logits).double(), torch.from_numpy(y).double())
    assert m["loss"] == pytest.approx(float(bce), rel=1e-9)


def test_sigmoid_matches_torch_and_is_stable():
    x = np.array([-1000.0, -40.0, -3.0, 0.0, 1e-8, 3.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = sigmoid(x)
    np.testing.assert_allclose(got, torch.sigmoid(torch.tensor(x)).numpy(), rtol=1e-14, atol=0)


def test_numpy_loss_and_sigmoid_are_stable_for_huge_logits():
    task = ML.fit(["a", "b"], [[0]])
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        m = task.metrics(logits, [[0], [0]])
    ref = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert m["loss"] == pytest.approx(float(ref))  # 2 of 4 decisions 1000 nats off -> 500


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_torch_bce_with_logits(smoothing):
    task, logits, labels, _ = random_case(32, 4, 3)
    t = torch.from_numpy(task.targets(labels))
    ref = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(logits), t * (1 - smoothing) + smoothing / 2)
    torch.testing.assert_close(task.loss(label_smoothing=smoothing)(torch.from_numpy(logits), t), ref)
    with pytest.raises(ValueError, match="no class weights"):
        task.loss(class_weights=np.ones(4))


def f1_at(prob: np.ndarray, y: np.ndarray, t: float) -> float:
    return f1_score(y, prob >= t, zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrate_maximizes_each_labels_f1_on_val(seed):
    task, logits, labels, y = random_case(60, 4, seed)
    task.calibrate(logits, labels)
    assert task.calibrated
    prob = sigmoid(logits)  # the task's own probabilities, so a threshold equal to one compares equal
    for j in range(4):
        if not y[:, j].any():
            assert task.thresholds[j] == 0.5
            continue
        # brute force over a fine grid and over every probability: nothing beats the chosen threshold
        grid = np.r_[np.linspace(0.0, 1.0, 101), prob[:, j]]
        best = max(f1_at(prob[:, j], y[:, j], t) for t in grid)
        assert f1_at(prob[:, j], y[:, j], task.thresholds[j]) == pytest.approx(best)
        assert task.thresholds[j] in set(prob[:, j])
    saved = load_task(task.state_dict())
    np.testing.assert_array_equal(saved.thresholds, task.thresholds)


def test_calibrate_breaks_ties_toward_one_half_and_skips_labels_without_positives():
    task = ML.fit(["a", "b"], [[0], [1]])
    # label a: positives at p = 0.9 and 0.8, negatives at 0.3 and 0.1: thresholds 0.8 .. 0.31 all give F1 1; only
    # the probabilities themselves are candidates, so 0.8 (the closest to 0.5 with F1 1) wins
    p = np.array([0.9, 0.8, 0.3, 0.1])
    logits = np.stack([np.log(p / (1 - p)), np.zeros(4)], axis=1)
    task.calibrate(logits, [[0], [0], [], []])
    assert task.thresholds[0] == pytest.approx(0.8)
    assert task.thresholds[1] == 0.5  # no positive of b on val: kept


def test_thresholds_change_decode_and_default_is_one_half():
    task = ML.fit(["a", "b", "c"], [[0]])
    assert task.thresholds.tolist() == [0.5, 0.5, 0.5] and not task.calibrated
    logits = np.array([[2.0, 0.0, -1.0]])  # p = 0.881, 0.5, 0.269
    row = task.decode(logits)[0]
    assert row["labels"] == ["a", "b"]  # p >= threshold: exactly 0.5 is positive; most probable first
    assert list(row["scores"]) == ["a", "b", "c"] and row["scores"]["c"] == pytest.approx(0.268941, abs=1e-6)
    task.thresholds = np.array([0.9, 0.5, 0.2])
    assert task.decode(logits)[0]["labels"] == ["b", "c"]
    assert list(task.decode(logits, top_k=2)[0]["scores"]) == ["a", "b"]


def test_baseline_is_per_label_majority_of_train():
    task = ML.fit(["a", "b", "c"], [[0, 1], [0], [0, 2], [1]])
    # train: a in 3 of 4 (> half), b in 2 of 4 (not > half), c in 1 -> predict {a} for every val example
    val = [[0], [0, 1], [2], []]
    pred = np.array([[1, 0, 0]] * 4, dtype=bool)
    expected = f1_score(task.targets(val).astype(bool), pred, average="micro", zero_division=0)
    assert task.baseline([[0, 1], [0], [0, 2], [1]], val) == pytest.approx(expected)  # 2 tp, 2 fp, 2 fn -> 0.5
    assert task.baseline([[1], [2], []], val) == 0.0


def test_agreement_compares_label_sets():
    task = ML.fit(["a", "b"], [[0]])
    a = np.array([[2.0, -2.0], [2.0, 2.0]])
    b = np.array([[3.0, -1.0], [2.0, -2.0]])
    assert task.agreement(a, b) == 0.5


def test_summary_counts_positives_sizes_and_empty_sets():
    task = ML.fit(["a", "b"], [[0]])
    s = task.summary({"train": [[0, 1], [0], []], "val": [[], []]})
    assert s == {"label_counts": {"a": {"train": 2, "val": 0}, "b": {"train": 1, "val": 0}},
                 "label_set_sizes": {"train": {"0": 1, "1": 1, "2": 1}, "val": {"0": 2}},
                 "no_label": {"train": 1, "val": 2}}


def test_card_rows_hold_per_label_scores():
    task, logits, labels, _ = random_case(50, 3, 4)
    rows = dict(task.card_rows(task.metrics(logits, labels)))
    assert "l2: P / R / F1 (support, threshold)" in rows
    assert rows["Thresholds"] == "0.5 (not tuned)"
