"""bench/bench_onnx.py end to end on real exported models (short timing): what it measures and records.

Only the shape of the results is checked here; the speed targets are checked by the benchmark itself
(``--check``), on a quiet machine, not by unit tests on a shared CPU.
"""

from __future__ import annotations

import json

import pytest
from automl_ft.bench import bench_onnx

from automl_ft.cli import main as cli_main
from tests.test_predict import built_model


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return built_model(tmp_path_factory, "text")[0], built_model(tmp_path_factory, "image")[0]


def test_bench_records_every_provider_batch_and_target(models, tmp_path, capsys):
    text, image = models
    rc = bench_onnx.main(["--text-model", str(text), "--image-model", str(image), "--quick", "--rounds", "1",
                          "--batches", "1,3", "--seq", "24", "--out", str(tmp_path)])
    assert rc == 0
    (json_path,) = tmp_path.glob("onnx-*.json")
    assert len(list(tmp_path.glob("onnx-*.csv"))) == 1
    record = json.loads(json_path.read_text())
    env, config, rows = record["environment"], record["config"], record["results"]
    assert env["device"] and env["onnxruntime"] and env["torch_threads"] == env["ort_intra_op_threads"]
    assert config["threads"] == env["torch_threads"]
    seen = {(r["model"], r["provider"], r["batch"]) for r in rows}
    assert seen == {(m, p, b) for m in ("text", "image") for p in bench_onnx.PROVIDERS for b in (1, 3)
                    if m == "text" or p not in bench_onnx.FUSED}
    assert config["models"]["text"]["fused_export_ops"]["Attention"] == 6  # one fused attention per layer
    for r in rows:
        assert r["ms"] > 0 and r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert r["items_per_s"] == pytest.approx(1e3 * r["batch"] / r["ms"])
        assert r["shape"] == (f"{r['batch']}x24" if r["model"] == "text" else f"{r['batch']}x3x64x64")
        if r["provider"] != "torch-eager" and r["model"] == "text":
            # the torch model carries the exported weights: fp32 matches it, INT8 stays near it
            assert r["max_abs_logit_diff_vs_torch"] < (1e-3 if "fp32" in r["provider"] else 1.0)
    targets = config["targets"]
    assert {"text_fp32_speedup_b1", "text_int8_speedup_b1", "predict_first_output_s"} <= set(targets)
    first = config["models"]["text"]["predict_first_output_s"]
    assert len(first) == 2 and all(0 < s < 30 for s in first)
    assert "target text_fp32_speedup_b1" in capsys.readouterr().out


def test_torch_model_is_the_exported_architecture(models):
    import torch

    text, _ = models
    from automl_ft.predict import Predictor

    module, same_weights = bench_onnx.torch_model(text)
    assert same_weights
    feeds = bench_onnx.make_inputs("text", 2, 16, 0)
    with torch.inference_mode():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    ort_out = Predictor(text).session.run(["logits"], feeds)[0]
    assert abs(out - ort_out).max() < 1e-3


def test_cli_runs_the_benchmark_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "onnx", "--help"])
    assert exc.value.code == 0
    assert "--text-model" in capsys.readouterr().out


def test_unknown_provider_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_onnx.main(["--providers", "tensorrt"])
    assert exc.value.code == 2
