"""Every task on both modalities end to end on tiny models: tune -> export (task.json, ONNX check) -> predict.

The data are real (scikit-learn's diabetes study as text regression, Banking77 queries with their intents' facets as
text multi-label, pairs of real handwritten digits as image regression and multi-label); the models are tiny and
random, so what is checked is the plumbing: the task's loss, metric, direction, export and predict fields, not
accuracy (the slow tests and the note measure that on real backbones).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from automl_ft.cli import main
from automl_ft.rundir import RunDir
from tests.conftest import banking_facet_records, diabetes_records, write_digit_pairs, write_table


def text_space(path: Path, bert: Path) -> Path:
    path.write_text(f"""
task: text
backbones:
  {bert}: {{max_length: 48, freeze_depth: 0}}
adaptation:
  full: {{lr: {{low: 1.0e-3, high: 3.0e-3, log: true}}}}
training: {{batch_size: 16, epochs: 2, head_lr_scale: 5.0}}
pruner: {{type: none}}
""")
    return path


def image_space(path: Path) -> Path:
    path.write_text("""
task: image
backbones:
  timm:test_efficientnet: {image_size: 32, freeze_depth: 0, augment: none, options: {pretrained: false}}
adaptation:
  full: {lr: {low: 1.0e-3, high: 3.0e-3, log: true}}
training: {batch_size: 16, epochs: 2}
pruner: {type: none}
""")
    return path


def study_of(run: Path) -> optuna.Study:
    record = json.loads((run / "run.json").read_text())
    return optuna.load_study(study_name=record["study"], storage=RunDir(run).storage_url(record["storage"]))


def tune_and_predict(data: Path, run: Path, space: Path, capsys, *extra: str) -> tuple[dict, list[dict], str, str]:
    assert main(["tune", str(data), "--out", str(run), "--space", str(space), "--trials", "2", *extra]) == 0
    tune_err = capsys.readouterr().err
    assert main(["predict", str(run / "best"), str(data)]) == 0
    out, err = capsys.readouterr()
    return json.loads((run / "best" / "metrics.json").read_text()), [json.loads(x) for x in out.splitlines()], \
        err, tune_err


def check_export(run: Path, task: str, problem: str, metric: str, direction: str) -> dict:
    state = json.loads((run / "best" / "task.json").read_text())
    assert state["task"] == task and state["state"]["problem"] == problem
    assert json.loads((run / "best" / "config.json").read_text())["task"] == task
    study = study_of(run)
    assert study.metric_names == [f"val_{metric}"] and study.directions[0].name.lower() == direction
    card = (run / "best" / "model_card.md").read_text()
    assert f"Primary metric: {metric} ({direction})" in card and "| Primary metric |" in card
    assert ("input_ids" if task.startswith("text") else "pixel_values") in card.split("## Data")[0]
    assert f"val_{metric}" in card  # the leaderboard's column names the metric
    return state


def test_text_regression_on_the_diabetes_study(tmp_path, tiny_bert_dir, capsys):
    records = diabetes_records()[:240]
    data = write_table(tmp_path / "diabetes.csv", records)
    metrics, rows, err, tune_err = tune_and_predict(data, tmp_path / "run", text_space(tmp_path / "s.yaml",
                                                                                        tiny_bert_dir), capsys)
    assert "Task text-regression" in tune_err and "--task text-classification or text-multilabel" in tune_err
    state = check_export(tmp_path / "run", "text-regression", "regression", "rmse", "minimize")
    test = metrics["test"]
    assert {"rmse", "mae", "r2", "spearman", "residuals"} <= set(test) and test["rmse"] > 0
    assert metrics["onnx"]["prediction_agreement"] == 1.0 and metrics["onnx"]["max_abs_logit_diff"] < 1e-3
    # predictions come back in the target's units (disease progression 25-346), not standardized
    values = [r["value"] for r in rows]
    assert len(values) == 240 and all(isinstance(v, float) for v in values)
    assert abs(sum(values) / len(values) - state["state"]["mean"]) < 3 * state["state"]["std"]
    assert "RMSE" in err and "on 240 labelled inputs" in err
    study = study_of(tmp_path / "run")
    assert all(t.value > 0 for t in study.trials if t.value is not None)
    # the report ranks by RMSE, lowest first, and plots what a regression has (no confusion matrix)
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "val_rmse" in page and "minimize" in page
    done = sorted(t.value for t in study.trials if t.value is not None)
    assert page.index(f"{done[0]:.4g}") < page.index(f"{done[-1]:.4g}") or len(set(done)) == 1


def test_text_multilabel_on_banking77_facets(tmp_path, tiny_bert_dir, shared_dir, capsys):
    data = write_table(tmp_path / "facets.jsonl", banking_facet_records(shared_dir, n=240))
    metrics, rows, err, _ = tune_and_predict(data, tmp_path / "run", text_space(tmp_path / "s.yaml", tiny_bert_dir),
                                             capsys)
    state = check_export(tmp_path / "run", "text-multilabel", "multilabel", "micro_f1", "maximize")
    classes = json.loads((tmp_path / "run" / "best" / "labels.json").read_text())
    assert len(state["state"]["thresholds"]) == len(classes) > 3  # tuned on val, saved for predict
    assert {"micro_f1", "macro_f1", "subset_accuracy", "per_label"} <= set(metrics["test"])
    assert metrics["onnx"]["prediction_agreement"] == 1.0
    for r in rows:
        assert set(r["labels"]) <= set(classes) and set(r["scores"]) == set(classes)
        assert all(0.0 <= p <= 1.0 for p in r["scores"].values())
    assert "micro F1" in err


@pytest.mark.parametrize("target,problem,metric,direction", [
    ("number", "regression", "rmse", "minimize"),
    ("digits", "multilabel", "micro_f1", "maximize"),
])
def test_image_tasks_from_a_table_of_digit_pairs(target, problem, metric, direction, tmp_path, capsys):
    data = write_digit_pairs(tmp_path / "pairs", target, n=160)
    metrics, rows, err, tune_err = tune_and_predict(data, tmp_path / "run", image_space(tmp_path / "s.yaml"), capsys)
    check_export(tmp_path / "run", f"image-{problem}", problem, metric, direction)
    assert metrics["onnx"]["prediction_agreement"] == 1.0 and metrics["onnx"]["max_abs_logit_diff"] < 1e-3
    assert len(rows) == 160 and "on 160 labelled inputs" in err
    field = "value" if problem == "regression" else "labels"
    assert all(field in r for r in rows)
    # the image column was found in the table and recorded, so predict reads the same paths
    assert json.loads((tmp_path / "run" / "best" / "preprocess.json").read_text())["image_column"] == "image"


def test_imbalanced_classification_searches_a_remedy_and_optimises_macro_f1(tmp_path, tiny_bert_dir, capsys):
    from tests.conftest import make_text_rows

    rows = make_text_rows(60)
    kept, seen = [], 0
    for text, label in rows:  # "food" keeps 10 of its 60 rows: under a third of the largest class
        if label == "food":
            seen += 1
            if seen > 10:
                continue
        kept.append((text, label))
    data = write_table(tmp_path / "skewed.csv", [{"text": t, "label": y} for t, y in kept])
    assert main(["tune", str(data), "--out", str(tmp_path / "run"), "--space",
                 str(text_space(tmp_path / "s.yaml", tiny_bert_dir)), "--trials", "3"]) == 0
    study = study_of(tmp_path / "run")
    assert study.metric_names == ["val_macro_f1"]
    remedies = {t.params["task.imbalance"] for t in study.trials if t.user_attrs.get("origin") != "probe"}
    assert remedies <= {"none", "weighted", "sampler"} and remedies
    card = (tmp_path / "run" / "best" / "model_card.md").read_text()
    assert "imbalanced" in card and "| imbalance |" in card
