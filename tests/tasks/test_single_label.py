"""Single-label classification against scikit-learn and torch, and the label rules of runs made before tasks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.utils.class_weight import compute_class_weight

from automl_ft.errors import DataError
from automl_ft.tasks import detect_problem, get_task, load_task

Cls = get_task("classification")


def fitted(counts: list[int]) -> tuple:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    return Cls.fit([f"c{i}" for i in range(len(counts))], labels), labels


def test_parse_keeps_the_rules_of_earlier_runs():
    """str(cell).strip(), sorted string classes; empty, 'nan', '<NA>' and None/NaN cells are missing rows, while
    'None', 'NA' and 'null' are class names (as data/cleaning.py decided before tasks)."""
    cells = [" spam ", "ham", "", "nan", " NaN", "<NA>", None, float("nan"), np.float32("nan"), "None", "NA", 10, 2,
             "10"]
    p = Cls.parse_labels(cells, "|")
    assert p.classes == ["10", "2", "NA", "None", "ham", "spam"]  # string order: "10" < "2"
    assert [p.classes[i] for i in p.labels] == ["spam", "ham", "None", "NA", "10", "2", "10"]
    assert p.missing == [2, 3, 4, 5, 6, 7, 8]
    assert p.warnings == ["7 row(s) with an empty or NaN label dropped as missing"]


def test_moved_label_helpers_are_shared_with_the_data_layer():
    """data/cleaning.py re-exports the rule from tasks/base.py: one definition, so both agree on 'missing'."""
    from automl_ft.data import cleaning
    from automl_ft.tasks import base

    assert cleaning.is_missing_label is base.is_missing_label
    assert cleaning.MISSING_LABELS is base.MISSING_LABELS
    assert cleaning.NUMERIC_TARGET_DISTINCT == base.NUMERIC_TARGET_DISTINCT == 20


def test_list_cells_are_refused_naming_rows():
    with pytest.raises(DataError, match=r"label column: rows 2, 4 hold lists .*--task text-multilabel"):
        Cls.parse_labels(["a", ["a", "b"], "b", ("c",)], "|")


def test_numeric_labels_forced_to_classes_warn():
    p = Cls.parse_labels([str(i) for i in range(25)], "|")
    assert any("numeric target (25 distinct numbers)" in w and "text-regression" in w for w in p.warnings)
    assert not any("numeric" in w for w in Cls.parse_labels([str(i) for i in range(20)], "|").warnings)


def test_detect_on_real_labels(shared_dir):
    """SMS spam's labels are two classes (and no '|' in them): classification."""
    with open(shared_dir / "data" / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        cells = [row["label"] for row in csv.DictReader(f)]
    problem, reason = detect_problem(cells, "|")
    assert problem == "classification" and reason.startswith("2 distinct")
    p = Cls.parse_labels(cells, "|")
    assert p.classes == ["ham", "spam"]
    task = Cls.fit(p.classes, p.labels)  # 13 % spam: under a third of ham
    assert task.imbalanced and task.primary_metric == "macro_f1"
    assert "imbalanced" in dict(task.card_rows(task.metrics(np.zeros((2, 2)), [0, 1])))["Primary metric"]


@pytest.mark.parametrize("counts, imbalanced", [([3, 9], False), ([3, 10], True), ([50, 50, 50], False),
                                                ([1, 2, 4], True), ([34, 100], False), ([33, 100], True)])
def test_imbalance_rule_smallest_under_a_third_of_largest(counts, imbalanced):
    task, _ = fitted(counts)
    assert task.imbalanced is imbalanced
    assert task.primary_metric == ("macro_f1" if imbalanced else "accuracy")
    assert load_task(task.state_dict()).primary_metric == task.primary_metric


def test_state_of_an_earlier_model_means_accuracy():
    task = load_task({"problem": "classification", "classes": ["a", "b"]})
    assert task.primary_metric == "accuracy" and not task.imbalanced


def test_class_and_sample_weights_against_scikit_learn():
    task, labels = fitted([5, 20, 75])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(labels))
    np.testing.assert_allclose(task.class_weights(labels), expected, rtol=1e-12)
    w = task.sample_weights(labels)
    totals = np.bincount(labels, weights=w)
    np.testing.assert_allclose(totals, [1.0, 1.0, 1.0])  # every class carries the same total weight
    # a class absent from the labels gets weight 1 instead of scikit-learn's ValueError
    np.testing.assert_allclose(task.class_weights([0, 0, 1])[2], 1.0)


@pytest.mark.parametrize("n, k", [(1, 2), (37, 3), (200, 7)])
def test_metrics_against_scikit_learn_and_torch(n, k):
    rng = np.random.default_rng(n)
    task = Cls.fit([f"c{i}" for i in range(k)], list(range(k)) * 3)
    y = rng.integers(0, k, size=n)
    logits = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    m = task.metrics(logits, y.tolist())
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    present = np.union1d(y, pred)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))
    pc, rc, fc, sc = precision_recall_fscore_support(y, pred, labels=np.arange(k), zero_division=0)
    for i in range(k):
        assert m["per_class"][f"c{i}"] == pytest.approx({"precision": pc[i], "recall": rc[i], "f1": fc[i],
                                                         "support": sc[i]})
    ce = torch.nn.CrossEntropyLoss()(torch.from_numpy(logits).double(), torch.from_numpy(y))
    assert m["loss"] == pytest.approx(float(ce), rel=1e-9)


def test_numpy_loss_is_stable_for_huge_logits():
    task = Cls.fit(["a", "b"], [0, 1])
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        m = task.metrics(logits, [1, 1])
    assert m["loss"] == pytest.approx(1000.0)  # one example 2000 nats off, one right


@pytest.mark.parametrize("smoothing, weighted", [(0.0, False), (0.1, False), (0.0, True), (0.2, True)])
def test_loss_is_torch_cross_entropy_with_weights_and_smoothing(smoothing, weighted):
    task, labels = fitted([4, 12, 30])
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(16, 3)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=16))
    w = task.class_weights(labels) if weighted else None
    ref = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(w, dtype=torch.float32),
                                    label_smoothing=smoothing)
    got = task.loss(label_smoothing=smoothing, class_weights=w)(logits, y)
    torch.testing.assert_close(got, ref(logits, y))
    with pytest.raises(ValueError, match="shape"):
        task.loss(class_weights=np.ones(2))


def test_baseline_is_majority_class_of_train_scored_by_the_primary_metric():
    balanced, _ = fitted([10, 12, 11])
    assert balanced.baseline([0, 1, 1, 2], [1, 1, 0, 2]) == 0.5  # predicts class 1: 2 of 4 right
    imbalanced, _ = fitted([2, 30])
    # majority class 1 everywhere on val [0, 1, 1, 1]: F1 0 for class 0, 6/7 for class 1 -> macro 3/7
    assert imbalanced.baseline([1, 1, 1, 0], [0, 1, 1, 1]) == pytest.approx(3 / 7)


def test_decode_matches_predicts_output_format():
    task = Cls.fit(["neg", "pos", "zzz"], [0, 1, 2])
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    rows = task.decode(logits)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert rows[0] == {"label": "pos", "score": round(float(p[1]), 6)}
    assert rows[1]["label"] == "neg"
    top = task.decode(logits, top_k=2)[0]
    assert [t["label"] for t in top["top_k"]] == ["pos", "zzz"]
    assert "top_k" not in task.decode(logits, top_k=1)[0]  # predict prints top_k only for k > 1


def test_describe_leads_with_the_primary_metric():
    m = {"accuracy": 0.981, "macro_f1": 0.97}
    assert fitted([10, 10])[0].describe(m) == "accuracy 98.10% (macro F1 97.00%)"
    assert fitted([1, 10])[0].describe(m) == "macro F1 97.00% (accuracy 98.10%)"


def test_summary_keeps_the_class_counts_format():
    task, _ = fitted([2, 2])
    assert task.summary({"train": [0, 1, 1], "val": [1], "test": []}) == {
        "class_counts": {"c0": {"train": 1, "val": 0, "test": 0}, "c1": {"train": 2, "val": 1, "test": 0}}}


def test_strata_are_class_indices():
    np.testing.assert_array_equal(Cls.strata([2, 0, 1]), [2, 0, 1])
