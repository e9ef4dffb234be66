"""Behaviour every task shares, parametrized over the registry (a newly registered task is tested here too)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from automl_ft.errors import ModelDirError
from automl_ft.tasks import (
    FULL_TASKS,
    Task,
    detect_problem,
    get_task,
    list_tasks,
    load_task,
    register_task,
    split_task_name,
    task_name,
)
from tests.tasks.examples import make_example

# Tasks with one target per input; spatial ones (segmentation: a mask per input, read from files) have their own
# tests of the same behaviours in tests/tasks/test_segmentation.py.
TASKS = [t for t in list_tasks() if not get_task(t).spatial_targets]


def test_registry_names():
    assert list_tasks() == ["classification", "multilabel", "regression", "segmentation"]
    assert FULL_TASKS == ("image-classification", "image-multilabel", "image-regression", "image-segmentation",
                          "text-classification", "text-multilabel", "text-regression")
    for full in FULL_TASKS:
        modality, problem = split_task_name(full)
        assert task_name(modality, problem) == full
        assert get_task(problem).name == problem
    # the names of runs made before tasks existed still resolve
    assert split_task_name("text-classification") == ("text", "classification")
    assert split_task_name("image-classification") == ("image", "classification")


@pytest.mark.parametrize("bad", ["text", "text-", "audio-classification", "text-segmentation", "classification",
                                 "auto", ""])
def test_split_task_name_refuses_bad_names_listing_the_valid_ones(bad):
    with pytest.raises(ValueError, match="text-multilabel"):
        split_task_name(bad)


def test_get_task_and_task_name_fail_loudly():
    with pytest.raises(ValueError, match="known: classification, multilabel, regression, segmentation"):
        get_task("ranking")
    with pytest.raises(ValueError, match="known: image, text"):
        task_name("audio", "classification")
    with pytest.raises(ValueError, match="known: classification"):
        task_name("text", "ranking")
    with pytest.raises(ValueError, match="segmentation task takes image inputs, not text"):
        task_name("text", "segmentation")


def test_register_task_refuses_a_second_class_under_a_taken_name():
    class Impostor(get_task("regression")):  # type: ignore[misc,valid-type]
        name = "regression"

    with pytest.raises(ValueError, match="already registered"):
        register_task(Impostor)
    assert get_task("regression") is not Impostor

    class Bad(get_task("regression")):  # type: ignore[misc,valid-type]
        name = "Multi-Output"

    with pytest.raises(ValueError, match="lowercase"):
        register_task(Bad)


def test_import_is_torch_free():
    """predict and serve import the tasks; torch, scikit-learn and scipy must stay out (seconds of start-up)."""
    code = ("import sys, automl_ft.tasks as t; t.detect_problem(['a|b', 'c'], '|'); "
            "heavy = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("problem", TASKS)
def test_class_attributes(problem):
    cls = get_task(problem)
    assert issubclass(cls, Task) and cls.name == problem
    assert cls.description and isinstance(cls.detect_priority, int)


@pytest.mark.parametrize("problem", TASKS)
def test_detect_problem_recognises_each_example(problem):
    ex = make_example(problem)
    got, reason = detect_problem(ex.cells, "|")
    assert got == problem
    assert reason and "\n" not in reason


@pytest.mark.parametrize("problem", TASKS)
def test_parse_keeps_one_label_per_non_missing_row(problem):
    ex = make_example(problem)
    cells = [None, *ex.cells[:10], float("nan")]
    parsed = get_task(problem).parse_labels(cells, "|")
    assert parsed.missing == [0, 11]
    assert len(parsed.labels) == 10
    assert any("missing" in w for w in parsed.warnings)


@pytest.mark.parametrize("problem", TASKS)
def test_state_round_trips_through_json(problem):
    ex = make_example(problem)
    ex.task.calibrate(ex.val_logits, ex.val)  # a multilabel state then holds tuned thresholds
    state = json.loads(json.dumps(ex.task.state_dict(), allow_nan=False))
    assert state["problem"] == problem
    again = load_task(state)
    assert type(again) is type(ex.task)
    assert again.state_dict() == ex.task.state_dict()
    for attr in ("head_size", "primary_metric", "direction", "imbalanced", "classes"):
        assert getattr(again, attr) == getattr(ex.task, attr), attr
    assert again.decode(ex.val_logits) == ex.task.decode(ex.val_logits)
    assert again.metrics(ex.val_logits, ex.val) == ex.task.metrics(ex.val_logits, ex.val)
    np.testing.assert_array_equal(again.targets(ex.val), ex.task.targets(ex.val))


def test_load_task_refuses_malformed_states():
    with pytest.raises(ModelDirError, match="no task state"):
        load_task(["classification"])  # type: ignore[arg-type]
    with pytest.raises(ModelDirError, match="unknown problem type 'ranking'.*known: classification"):
        load_task({"problem": "ranking"})
    with pytest.raises(ModelDirError, match="regression state is malformed"):
        load_task({"problem": "regression", "classes": []})


@pytest.mark.parametrize("problem", TASKS)
def test_metrics_hold_loss_primary_and_count_and_are_json(problem):
    ex = make_example(problem)
    m = ex.task.metrics(ex.val_logits, ex.val)
    assert {"loss", ex.task.primary_metric, "num_examples"} <= set(m)
    assert m["num_examples"] == len(ex.val)
    assert ex.task.primary(m) == m[ex.task.primary_metric]
    json.dumps(m, allow_nan=False)
    empty = ex.task.metrics(ex.val_logits[:0], [])
    assert empty["num_examples"] == 0
    json.dumps(empty, allow_nan=False)


@pytest.mark.parametrize("problem", TASKS)
def test_a_better_model_scores_better_than_the_trivial_predictor(problem):
    ex = make_example(problem)
    good = ex.task.primary(ex.task.metrics(ex.val_logits, ex.val))
    trivial = ex.task.primary(ex.task.metrics(ex.trivial_logits, ex.val))
    assert ex.task.better(good, trivial) and not ex.task.better(trivial, good)
    assert not ex.task.better(good, good)


@pytest.mark.parametrize("problem", TASKS)
def test_baseline_is_the_trivial_predictors_primary_metric(problem):
    ex = make_example(problem)
    expected = ex.task.primary(ex.task.metrics(ex.trivial_logits, ex.val))
    assert ex.task.baseline(ex.train, ex.val) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("problem", TASKS)
def test_decode_fields(problem):
    ex = make_example(problem)
    rows = ex.task.decode(ex.val_logits)
    assert len(rows) == len(ex.val)
    assert all(set(r) == ex.decode_fields for r in rows)
    json.dumps(rows, allow_nan=False)
    assert ex.task.agreement(ex.val_logits, ex.val_logits) == 1.0
    assert ex.task.agreement(ex.val_logits, ex.trivial_logits) < 1.0


@pytest.mark.parametrize("problem", TASKS)
def test_targets_and_head_size_fit_the_logits(problem):
    ex = make_example(problem)
    assert ex.val_logits.shape == (len(ex.val), ex.task.head_size)
    assert len(ex.task.targets(ex.val)) == len(ex.val)


@pytest.mark.parametrize("problem", TASKS)
def test_torch_loss_matches_the_numpy_loss(problem):
    """The default loss on the training targets equals metrics()["loss"] (the same quantity, two code paths)."""
    ex = make_example(problem)
    fn = ex.task.loss()
    got = fn(torch.from_numpy(ex.val_logits), torch.from_numpy(ex.task.targets(ex.val)))
    assert got.ndim == 0
    assert float(got) == pytest.approx(ex.task.metrics(ex.val_logits, ex.val)["loss"], rel=1e-5)
    for kind in ex.task.loss_choices():
        assert ex.task.loss(kind=kind) is not None
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        ex.task.loss(kind="focal")


@pytest.mark.parametrize("problem", TASKS)
def test_loss_trains_through_autograd(problem):
    ex = make_example(problem)
    logits = torch.from_numpy(ex.val_logits).clone().requires_grad_(True)
    ex.task.loss()(logits, torch.from_numpy(ex.task.targets(ex.val))).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("problem", TASKS)
def test_describe_card_rows_and_summary(problem):
    ex = make_example(problem)
    m = ex.task.metrics(ex.val_logits, ex.val)
    text = ex.task.describe(m)
    assert isinstance(text, str) and "\n" not in text and text
    rows = ex.task.card_rows(m)
    assert rows and all(isinstance(k, str) and isinstance(v, str) for k, v in rows)
    assert "n/a" not in " ".join(v for _, v in rows)  # every row found its metric
    summary = ex.task.summary({"train": ex.train, "val": ex.val, "test": []})
    json.dumps(summary, allow_nan=False)
