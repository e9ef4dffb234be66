"""The frozen-feature probe: scikit-learn fits as oracles, the feature cache, the probe trial and LP-FT end to end."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from automl_ft.probe import FeatureCache, fit_head
from automl_ft.tasks import get_task


def _split(x, y, n_train):
    return x[:n_train], list(y[:n_train]), x[n_train:], list(y[n_train:])


def test_single_label_head_reproduces_scikit_learns_logistic_regression():
    """The folded head gives the same class for every input as StandardScaler + LogisticRegression at the
    chosen C (scikit-learn's bundled breast-cancer data: 30 features without a constant one)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x) * np.linspace(0.5, 3.0, x.shape[1])  # spreads within the 10x floor
    xt, yt, xv, yv = _split(x, y, 400)
    task = get_task("classification").fit(["benign", "malignant"], yt)
    fit = fit_head(task, xt, yt, xv, yv)
    assert fit.strength in task.probe_grid()
    oracle = make_pipeline(StandardScaler(), LogisticRegression(C=fit.strength, max_iter=2000)).fit(xt, yt)
    ours = (xv @ fit.weight.T + fit.bias).argmax(1)
    np.testing.assert_array_equal(ours, oracle.predict(xv))
    # its log-odds, not just its argmax: logit[1] - logit[0] is the decision function
    np.testing.assert_allclose(xv @ fit.weight[1] + fit.bias[1] - (xv @ fit.weight[0] + fit.bias[0]),
                               oracle.decision_function(xv), rtol=1e-6, atol=1e-6)
    assert fit.val_metrics["accuracy"] > 0.9


def test_regression_head_reproduces_ridge_in_original_units():
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_diabetes(return_X_y=True)
    x = x * np.linspace(1.0, 5.0, x.shape[1]) + 3.0  # shifted and spread: the fold must undo both
    xt, yt, xv, yv = _split(x, y, 350)
    task = get_task("regression").fit([], yt)
    fit = fit_head(task, xt, yt, xv, yv)
    oracle = make_pipeline(StandardScaler(), Ridge(alpha=fit.strength)).fit(xt, task.targets(yt))
    ours = task.values(xv @ fit.weight.T + fit.bias)
    np.testing.assert_allclose(ours, task.values(oracle.predict(xv).reshape(-1, 1)), rtol=1e-5)
    # the floor of every search: a useful model, far better than predicting the mean (RMSE ~ target std 77)
    assert fit.val_metrics["rmse"] < 0.8 * np.std(yv)


def test_the_chosen_strength_is_the_best_on_validation():
    """The kept head scores what the best single-strength fit scores (the grid is searched, not its first point)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt, yt, xv, yv = _split(x, y, 1200)
    classes = [str(i) for i in range(10)]
    fit = fit_head(get_task("classification").fit(classes, yt), xt, yt, xv, yv)
    scores = []
    for c in get_task("classification").fit(classes, yt).probe_grid():
        one = get_task("classification").fit(classes, yt)
        one.probe_grid = lambda c=c: (c,)  # type: ignore[method-assign]
        scores.append(fit_head(one, xt, yt, xv, yv).val_metrics["accuracy"])
    assert len(set(scores)) > 1  # the strength matters here, so picking it is tested
    assert fit.val_metrics["accuracy"] == max(scores)


def test_multilabel_head_gives_a_constant_label_a_fixed_probability():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    labels = [sorted({int(d % 2 == 0)} | ({2} if d > 4 else set())) for d in y]  # label 3 never on
    xt, yt, xv, yv = _split(x, np.array(labels, dtype=object), 1200)
    task = get_task("multilabel").fit(["odd", "even", "big", "never"], yt)
    fit = fit_head(task, xt, yt, xv, yv)
    assert fit.bias[3] == -6.0 and not fit.weight[3].any()
    assert fit.val_metrics["micro_f1"] > 0.8


def test_segmentation_has_no_probe():
    assert get_task("segmentation").probe_grid(None) == ()  # the base class's: no grid, so no probe trial


def test_feature_cache_computes_each_input_once():
    calls: list[list[str]] = []

    def compute(todo):
        calls.append(list(todo))
        return np.array([[len(t), 1.0] for t in todo], dtype=np.float32)

    cache = FeatureCache()
    a = cache.get(("k",), ["x", "yy", "x"], compute)
    b = cache.get(("k",), ["zzz", "yy"], compute)
    assert calls == [["x", "yy"], ["zzz"]]
    np.testing.assert_array_equal(a[:, 0], [1, 2, 1])
    np.testing.assert_array_equal(b[:, 0], [3, 2])
    cache.get(("other",), ["x"], compute)  # another backbone or input size: computed again
    assert calls[-1] == ["x"]


def test_probe_trial_then_lp_ft_end_to_end(tmp_path, tiny_text_space):
    """A study starts with the probe (trial 0: closed form, no learning rate, exported and predicted like any
    trial); the next trial fine-tunes from the probe's head (LP-FT)."""
    from automl_ft.api import load, tune
    from tests.conftest import make_text_rows, write_csv

    data = write_csv(tmp_path / "texts.csv", make_text_rows(30))
    space = tiny_text_space.read_text()
    assert "  patience: 2\n" in space
    tiny_text_space.write_text(space.replace("  patience: 2\n", "  patience: 2\n  head_init: probe\n")
                               .replace("probe: false", "probe: true"))
    result = tune(data, tmp_path / "run", trials=2, space=str(tiny_text_space), seed=0, cv="off")
    trials = sorted(result.study.get_trials(), key=lambda t: t.number)
    assert trials[0].user_attrs["origin"] == "probe" and trials[0].params == {}
    assert trials[0].user_attrs["config"]["adaptation"] == "probe"
    assert trials[0].user_attrs["adaptation"]["probe_strength"] > 0
    assert trials[0].user_attrs["adaptation"]["trainable_params"] == 32 * 3 + 3  # the head alone (3 classes)
    assert trials[1].user_attrs["config"]["head_init"] == "probe"
    assert trials[1].user_attrs["adaptation"]["head_init"] == "probe"
    # the LP-FT trial started from the probe: its probe score on val is the probe trial's
    assert trials[1].user_attrs["adaptation"]["probe_val_score"] == pytest.approx(trials[0].value)
    history = json.loads((result.run_dir / "trials" / "0000" / "history.json").read_text())
    assert history[0]["val_score"] == pytest.approx(trials[0].value)
    model = load(result.model_dir)
    assert len(model.predict(["great product, works well", "terrible, broke after a day"])) == 2


def test_a_winning_probe_is_refit_on_train_and_validation(tmp_path, tiny_text_space):
    """Without CV, a probe that wins is refit on train + validation at the strength validation picked (the
    closed-form head costs seconds), and metrics.json and the card say so."""
    from automl_ft.api import tune
    from automl_ft.data import load_dataset
    from automl_ft.search.crossval import REFIT_FILE
    from tests.conftest import make_text_rows, write_csv

    data = write_csv(tmp_path / "texts.csv", make_text_rows(30))
    tiny_text_space.write_text(tiny_text_space.read_text().replace("probe: false", "probe: true"))
    result = tune(data, tmp_path / "run", trials=1, space=str(tiny_text_space), seed=0, cv="off")
    probe = result.study.trials[0]
    assert probe.user_attrs["config"]["adaptation"] == "probe" and result.best_trial == 0
    refit = json.loads((result.run_dir / "trials" / "0000" / REFIT_FILE).read_text())
    split = load_dataset(data, seed=0)
    assert refit["examples"] == len(split.train) + len(split.val)
    assert refit["probe_strength"] == probe.user_attrs["adaptation"]["probe_strength"]
    metrics = json.loads((result.model_dir / "metrics.json").read_text())
    assert metrics["refit"] == refit and "cv" not in metrics
    assert "refit on train + validation" in (result.model_dir / "model_card.md").read_text()


def _sms_table(tmp_path: pathlib.Path, per_class: int) -> pathlib.Path:
    """The first ``per_class`` spam and ``per_class`` ham messages of the shared SMS set, as a text/label CSV."""
    import csv

    shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "sms_spam" / "sms_spam.csv"
    if not shared.is_file():
        pytest.skip("the shared SMS data is not here")
    with open(shared, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked = [r for label in ("spam", "ham") for r in [r for r in rows if r["label"] == label][:per_class]]
    data = tmp_path / f"sms{2 * per_class}.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(picked)
    return data


def test_tiny_data_is_cross_validated_refit_exported_and_predicted(tmp_path, tiny_text_space):
    """8 real SMS messages per class: no 2-example test split, trials scored by repeated stratified k-fold
    (folds as intermediate values), the best refit on all 16, exported, its card stating the CV estimate."""
    from automl_ft.api import load, tune
    from automl_ft.search.crossval import REFIT_FILE

    data = _sms_table(tmp_path, 8)
    result = tune(data, tmp_path / "run", trials=2, space=str(tiny_text_space), seed=0)
    trials = sorted(result.study.get_trials(), key=lambda t: t.number)
    cv = trials[0].user_attrs["cv"]
    assert cv["folds"] == cv["folds_done"] == len(trials[0].intermediate_values) >= 6  # repeated k-fold
    assert trials[0].value == pytest.approx(np.mean(cv["scores"]))
    metrics = json.loads((result.model_dir / "metrics.json").read_text())
    assert metrics["test"] is None and metrics["onnx"]["split"] == "val"
    assert metrics["cv"]["refit"]["examples"] == 16
    best_dir = result.run_dir / "trials" / f"{result.best_trial:04d}"
    assert json.loads((best_dir / REFIT_FILE).read_text())["examples"] == 16
    card = (result.model_dir / "model_card.md").read_text()
    assert "Cross-validated estimate" in card and "+-" in card
    summary = json.loads((result.run_dir / "data_summary.json").read_text())
    assert summary["split_sizes"]["test"] == 0 and "cross-validation" in summary["validation"]
    out = load(result.model_dir).predict(["WINNER! Claim your free prize now, text WIN to 80086",
                                          "ok see you at lunch"])
    assert set(out["label"]) <= {"ham", "spam"}


def test_test_fraction_0_trains_the_refit_on_every_example(tmp_path, tiny_text_space):
    """``--test-fraction 0``: 16 real SMS messages per class would hold 3 out as test (10 %); with the option
    none is held out, the refit trains on all 32 and the card reports the cross-validated estimate; the run
    records the option, so export reloads the same split."""
    from automl_ft.api import tune
    from automl_ft.data import load_dataset
    from automl_ft.runs import load_run_data

    data = _sms_table(tmp_path, 16)
    assert len(load_dataset(data).test) > 0  # the default holds a test split out
    result = tune(data, tmp_path / "run", trials=1, space=str(tiny_text_space), seed=0, test_fraction=0)
    metrics = json.loads((result.model_dir / "metrics.json").read_text())
    assert metrics["test"] is None and metrics["cv"]["refit"]["examples"] == 32
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["data_options"]["test_fraction"] == 0
    assert len(load_run_data(record).test) == 0
    summary = json.loads((result.run_dir / "data_summary.json").read_text())
    assert summary["split_sizes"]["test"] == 0
    assert any("--test-fraction 0" in w for w in summary.get("warnings", []))
