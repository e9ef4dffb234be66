"""The real thing, small: the README's demo and a default-space search on real SMS spam with MiniLM."""

from __future__ import annotations

import json

import pytest

from automl_ft.cli import main

pytestmark = pytest.mark.slow


def test_readme_demo_runs_offline(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["tune", "--out", str(run), "--trials", "1"]) == 0
    err = capsys.readouterr().err
    assert "For your own data: automl-ft tune PATH" in err
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.8 and metrics["onnx"]["prediction_agreement"] == 1.0
    assert (run / "demo-data" / "7").is_dir()


def test_default_text_space_on_real_sms_spam(tmp_path, shared_dir, capsys):
    import pandas as pd

    df = pd.read_csv(shared_dir / "data" / "sms_spam" / "sms_spam.csv")
    subset = pd.concat([df[df.label == "ham"].head(300), df[df.label == "spam"].head(100)])
    data = tmp_path / "sms.csv"
    subset.to_csv(data, index=False)
    run = tmp_path / "run"
    assert main(["tune", str(data), "--out", str(run), "--trials", "2", "--int8"]) == 0
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9
    assert metrics["onnx"]["exporter"] == "torchscript+ort-fusion" and metrics["onnx"]["prediction_agreement"] == 1.0
    assert metrics["int8"]["usable"] in (True, False) and metrics["int8"]["test_score"] is not None
    capsys.readouterr()
    assert main(["predict", str(run / "best"), str(data)]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 400 and "accuracy" in out.err
