"""INT8 quantization of real exported models: dynamic for the transformer, static QDQ for the CNN, the accuracy
gate, what it records (metrics.json, model card) and how ``predict --int8`` honours it."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from automl_ft.cli import main
from automl_ft.data import Split
from automl_ft.errors import UsageError
from automl_ft.predict import Predictor
from automl_ft.quantize import INT8_FILE, card_section, quantize_model, write_card_section
from tests.test_predict import TEXTS, built_model

CARD = "# Model card\n\n## Test metrics\n\n- Accuracy: 90 %\n\n{int8}## Made with\n\n```\nonnx==1\n```\n"


@pytest.fixture(scope="session")
def text_built(tmp_path_factory):
    return built_model(tmp_path_factory, "text")


@pytest.fixture(scope="session")
def image_built(tmp_path_factory):
    return built_model(tmp_path_factory, "image")


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _acc(model: Path, split: Split, **kw) -> float:
    # batch 32 like quantize_model: dynamic INT8 scales activations per batch, so its outputs (unlike fp32's)
    # depend a little on which texts share a batch
    logits = Predictor(model, provider="cpu", **kw).predict_logits(split.inputs, batch_size=32)
    return float((logits.argmax(1) == np.asarray(split.labels)).mean())


def test_text_model_gets_dynamic_int8_that_keeps_accuracy(text_built, tmp_path, capsys):
    model, data = _copy(text_built[0], tmp_path), text_built[1]
    before = json.loads((model / "metrics.json").read_text())
    result = quantize_model(model, data)
    assert result["method"] == "dynamic" and result["file"] == INT8_FILE and result["reason"] is None
    assert result["metric"] == "accuracy"  # balanced classes: the task's primary metric is accuracy
    assert (model / INT8_FILE).is_file() and not list(model.glob(".*partial"))
    # Both accuracies are what predict's own pipeline gives on the test split.
    assert result["fp32_test_score"] == pytest.approx(_acc(model, data.test))
    assert result["test_score"] == pytest.approx(_acc(model, data.test, model_file=INT8_FILE))
    assert result["fp32_test_score"] > 0.9  # a working probe, so the comparison means something
    assert result["loss_points"] == pytest.approx(
        100 * (result["fp32_test_score"] - result["test_score"]), abs=1e-3)
    assert result["usable"] is (result["loss_points"] <= 1.0)
    assert result["usable"], result
    assert result["size_mb"] < result["fp32_size_mb"] / 3  # int8 weights, int8 embedding table
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["int8"] == json.loads(json.dumps(result)) and metrics["probe"] == before["probe"]
    # predict --int8 runs it, and agrees with fp32 on these messages.
    rc = main(["predict", str(model), "--int8", str(_table(tmp_path))])
    int8_rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    rc_fp32 = main(["predict", str(model), str(_table(tmp_path))])
    fp32_rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == rc_fp32 == 0
    assert [r["label"] for r in int8_rows] == [r["label"] for r in fp32_rows]


def _table(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


def test_image_model_gets_static_qdq_calibrated_on_val(image_built, tmp_path):
    import onnx

    model, data = _copy(image_built[0], tmp_path), image_built[1]
    result = quantize_model(model, data, calibration_limit=40)
    assert result["method"] == "static-qdq" and result["test_score"] is not None, result
    assert result["calibration_examples"] == 40 and result["calibration_split"] == "val"
    ops = {n.op_type for n in onnx.load(str(model / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = Predictor(model, provider="cpu").predict_logits(data.test.inputs)
    int8 = Predictor(model, provider="cpu", model_file=INT8_FILE).predict_logits(data.test.inputs)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9  # calibrated ranges: the classes rarely change
    assert result["test_score"] == pytest.approx(_acc(model, data.test, model_file=INT8_FILE))
    assert result["fp32_test_score"] == pytest.approx(_acc(model, data.test))
    assert result["usable"] is (result["loss_points"] <= 1.0)
    assert result["size_mb"] < result["fp32_size_mb"] / 2.5


def test_int8_over_the_loss_budget_is_kept_but_refused(text_built, tmp_path, capsys):
    model, data = _copy(text_built[0], tmp_path), text_built[1]
    (model / "model_card.md").write_text(CARD.format(int8="## INT8\n\n- dynamic: old text\n\n"))
    # A budget no model can meet (it must *gain* 1000 points) exercises the refusal with a real model.
    result = quantize_model(model, data, max_loss_points=-1000)
    assert result["usable"] is False and (model / INT8_FILE).is_file()
    assert "more than the -1000 allowed" in result["reason"]
    card = (model / "model_card.md").read_text()
    assert card.count("## INT8") == 1 and "old text" not in card and "**not usable**" in card
    assert result["reason"] in card
    assert card.index("## Test metrics") < card.index("## INT8") < card.index("## Made with")
    rc = main(["predict", str(model), "--int8", "-"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "not usable" in err and "more than the -1000 allowed" in err
    assert main(["predict", str(model), str(_table(tmp_path))]) == 0  # fp32 is unaffected


def test_failed_quantization_is_recorded_not_raised(image_built, tmp_path):
    model, data = _copy(image_built[0], tmp_path), copy.copy(image_built[1])
    data.val = Split([], [])
    result = quantize_model(model, data)
    assert result["usable"] is False and result["reason"].startswith("quantization failed: no validation")
    assert not (model / INT8_FILE).exists()
    assert json.loads((model / "metrics.json").read_text())["int8"]["usable"] is False


def test_data_of_another_task_or_classes_is_refused(text_built, image_built, tmp_path):
    with pytest.raises(UsageError, match="text model, but the data is image"):
        quantize_model(_copy(text_built[0], tmp_path), image_built[1])
    data = copy.copy(text_built[1])
    data.classes = list(reversed(data.classes))
    with pytest.raises(UsageError, match="labels differ"):
        quantize_model(text_built[0], data)


@pytest.mark.parametrize("existing", ["replace", "insert", "append"])
def test_card_section_replaces_inserts_or_appends(existing, tmp_path):
    result = {"method": "dynamic", "file": INT8_FILE, "usable": True, "reason": None, "metric": "accuracy",
              "test_score": 0.95,
              "fp32_test_score": 0.955, "loss_points": 0.5, "max_loss_points": 1.0, "size_mb": 22.3,
              "fp32_size_mb": 86.8}
    card = tmp_path / "model_card.md"
    text = {"replace": CARD.format(int8="## INT8\n\n- stale\n\n"), "insert": CARD.format(int8=""),
            "append": "# Model card\n\nbody\n"}[existing]
    card.write_text(text)
    write_card_section(card, result)
    write_card_section(card, result)  # idempotent
    new = card.read_text()
    assert new.count("## INT8") == 1 and "stale" not in new and "\n\n\n" not in new
    assert card_section(result).strip() in new
    assert "95.00%" in new and "loss 0.50 points" in new
    if existing != "append":
        assert new.index("## INT8") < new.index("## Made with") and "## Test metrics" in new
