"""Regression: parsing and detection, the standardising codec, metrics against scikit-learn / scipy, losses
against torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from automl_ft.errors import DataError
from automl_ft.tasks import detect_problem, get_task, load_task

Reg = get_task("regression")


def test_parse_numbers_and_numeric_strings_missing_cells_dropped():
    cells = ["3.5", " -2 ", 4, np.float32(1.25), np.int64(7), 1e3, "", None, float("nan"), "NaN", "1e-3"]
    p = Reg.parse_labels(cells, "|")
    assert p.classes == []
    assert p.labels == [3.5, -2.0, 4.0, 1.25, 7.0, 1000.0, 0.001]
    assert p.missing == [6, 7, 8, 9]
    assert any("4 row(s) with an empty or NaN target" in w for w in p.warnings)


def test_non_numeric_cells_are_one_line_data_error_naming_rows():
    cells = ["1", "two", "3", True, "inf", ["4"], "5", "x", "y", "z"]
    with pytest.raises(DataError) as err:
        Reg.parse_labels(cells, "|")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("label column: rows 2, 4, 5, 6, 8 ...")  # 1-based data rows, first five
    assert "'two', True, 'inf'" in msg


@pytest.mark.parametrize("distinct, problem", [(20, "classification"), (21, "regression")])
def test_detect_more_than_20_distinct_numbers(distinct, problem):
    cells = [f"{i / 4}" for i in range(distinct)] * 3 + ["", None]
    assert detect_problem(cells, "|")[0] == problem


@pytest.mark.parametrize("cells", [[str(i) for i in range(30)] + ["n/a"],  # one word: not all numbers
                                   [str(i) for i in range(30)] + ["inf"],
                                   [True, False] + list(range(30))])  # booleans are not numbers
def test_detect_refuses_anything_not_a_finite_number(cells):
    assert detect_problem(cells, "|")[0] == "classification"


def test_detect_and_fit_on_real_targets():
    """scikit-learn's bundled diabetes progression targets (442 rows, 214 distinct values), read as a CSV would."""
    y = load_diabetes().target
    cells = [f"{v:g}" for v in y]
    problem, reason = detect_problem(cells, "|")
    assert problem == "regression" and "214 distinct values" in reason
    p = Reg.parse_labels(cells, "|")
    task = Reg.fit([], p.labels[:300])
    assert task.mean == pytest.approx(y[:300].mean()) and task.std == pytest.approx(y[:300].std())
    # the mean predictor's RMSE is the val targets' spread around the train mean
    assert task.baseline(p.labels[:300], p.labels[300:]) == pytest.approx(
        math.sqrt(mean_squared_error(y[300:], np.full(142, y[:300].mean()))))


def test_codec_standardizes_and_decode_restores_original_units():
    task = Reg.fit([], [10.0, 20.0, 30.0])
    assert (task.mean, task.std) == pytest.approx((20.0, math.sqrt(200 / 3)))
    z = task.targets([10.0, 20.0, 50.0])
    assert z.dtype == np.float32 and z.shape == (3,)
    np.testing.assert_allclose(z, [-1.2247449, 0.0, 3.6742346], rtol=1e-6)
    assert [r["value"] for r in task.decode(z[:, None])] == pytest.approx([10.0, 20.0, 50.0], rel=1e-6)
    assert task.head_size == 1 and task.direction == "minimize" and task.primary_metric == "rmse"


def test_constant_target_gets_std_one():
    task = Reg.fit([], [5.0, 5.0, 5.0])
    assert (task.mean, task.std) == (5.0, 1.0)
    np.testing.assert_array_equal(task.targets([5.0, 6.0]), [0.0, 1.0])


def test_fit_refuses_classes_and_empty_train():
    with pytest.raises(ValueError, match="no classes"):
        Reg.fit(["a"], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        Reg.fit([], [])


@pytest.mark.parametrize("n, ties", [(2, False), (25, False), (200, True)])
def test_metrics_against_scikit_learn_and_scipy(n, ties):
    rng = np.random.default_rng(n)
    y = rng.normal(100.0, 15.0, size=n)
    if ties:
        y = y.round(-1)  # many equal targets: Spearman must average tied ranks
    task = Reg.fit([], (y + rng.normal(size=n)).tolist())
    yhat = y + rng.normal(0.0, 8.0, size=n)
    if ties:
        yhat[: n // 2] = yhat[: n // 2].round(-1)
    logits = ((yhat - task.mean) / task.std)[:, None]
    m = task.metrics(logits, y.tolist())
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, yhat)), rel=1e-9)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, yhat), rel=1e-9)
    assert m["r2"] == pytest.approx(r2_score(y, yhat), rel=1e-9)
    assert m["spearman"] == pytest.approx(spearmanr(y, yhat).statistic, rel=1e-9)
    res = y - yhat
    assert m["residuals"] == pytest.approx({"mean": res.mean(), "std": res.std(), "p5": np.percentile(res, 5),
                                            "p50": np.median(res), "p95": np.percentile(res, 95)})
    z_pred, z_true = torch.tensor(logits[:, 0]), torch.tensor((y - task.mean) / task.std)
    assert m["loss"] == pytest.approx(float(torch.nn.MSELoss()(z_pred, z_true)), rel=1e-9)
    assert m["huber"] == pytest.approx(float(torch.nn.HuberLoss(delta=1.0)(z_pred, z_true)), rel=1e-9)


def test_undefined_correlations_and_r2_stay_finite():
    task = Reg.fit([], [1.0, 2.0])
    m = task.metrics(np.zeros((3, 1)), [4.0, 4.0, 4.0])  # constant truth and constant prediction
    assert m["spearman"] == 0.0 and m["r2"] == 0.0  # scipy: NaN; scikit-learn: 0.0 when not exact
    assert r2_score([4.0, 4.0, 4.0], [1.5] * 3) == m["r2"]
    exact = task.metrics(np.full((2, 1), (4.0 - task.mean) / task.std), [4.0, 4.0])
    assert exact["r2"] == 1.0 == r2_score([4.0, 4.0], [4.0, 4.0])


@pytest.mark.parametrize("kind, ref", [(None, torch.nn.MSELoss()), ("mse", torch.nn.MSELoss()),
                                       ("huber", torch.nn.HuberLoss(delta=1.0))])
def test_loss_is_torch_mse_or_huber_on_standardized_targets(kind, ref):
    task = Reg.fit([], [0.0, 10.0, 20.0])
    rng = np.random.default_rng(5)
    logits = torch.from_numpy((rng.normal(size=(32, 1)) * 3).astype(np.float32))  # |error| > 1: Huber is linear
    t = torch.from_numpy(task.targets(rng.normal(10.0, 8.0, size=32).tolist()))
    torch.testing.assert_close(task.loss(kind=kind)(logits, t), ref(logits[:, 0], t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert task.loss(kind=kind)(logits.bfloat16(), t).dtype == torch.float32
    assert task.loss_choices() == ["mse", "huber"]


def test_loss_refuses_smoothing_and_class_weights():
    task = Reg.fit([], [0.0, 1.0])
    with pytest.raises(ValueError, match="label smoothing"):
        task.loss(label_smoothing=0.1)
    with pytest.raises(ValueError, match="class weights"):
        task.loss(class_weights=np.ones(1))


def test_agreement_tolerance_is_a_thousandth_of_the_std():
    task = Reg.fit([], [0.0, 200.0])  # std 100: tolerance 0.1 + 1e-6 in original units
    a = np.zeros((4, 1))
    b = np.array([[0.0], [0.0009], [-0.00099], [0.0011]])  # standardized: 0, 0.09, 0.099, 0.11 original units
    assert task.agreement(a, b) == 0.75


def test_strata_are_equal_count_bins_of_the_target():
    y = np.random.default_rng(0).exponential(size=105)
    s = Reg.strata(y.tolist())
    assert s.min() == 0 and s.max() == 9
    counts = np.bincount(s)
    assert counts.max() - counts.min() <= 1  # 10 bins of 10 or 11
    order = np.argsort(y)
    assert (np.diff(s[order]) >= 0).all()  # bins follow the target
    assert Reg.strata([1.0, 2.0, 3.0]).tolist() == [0, 0, 0]  # under 20 examples: one bin


def test_state_keeps_the_codec():
    task = Reg.fit([], [1.0, 4.0, 9.0])
    again = load_task(task.state_dict())
    assert (again.mean, again.std, again.train_count) == (task.mean, task.std, 3)


def test_summary_per_split():
    s = Reg.fit([], [1.0]).summary({"train": [1.0, 3.0], "test": []})
    assert s == {"target": {"train": {"n": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0},
                            "test": {"n": 0}}}


def test_describe():
    task = Reg.fit([], [1.0, 2.0])
    assert task.describe({"rmse": 0.51234, "mae": 0.4, "r2": 0.81, "spearman": 0.9}) == \
        "RMSE 0.5123 (MAE 0.4, R^2 0.81, Spearman 0.9)"
