"""Smoke test of bench/bench_lora.py: every provider and mode runs on tiny shapes and the results are written."""

from __future__ import annotations

import json

import torch
from automl_ft.bench import bench_lora

from automl_ft.kernels import TRITON_INTERPRETER


def test_bench_lora_smoke(tmp_path, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--device", device, "--shapes", "24,40,24", "--ranks", "3", "--dropout", "0,0.1",
            "--warmup-ms", "0", "--rep-ms", "0", "--out", str(tmp_path)]
    assert bench_lora.main(argv) == 0
    [json_path] = tmp_path.glob("lora-*.json")
    assert json_path.with_suffix(".csv").is_file()
    data = json.loads(json_path.read_text())
    assert data["environment"]["device"] and data["environment"]["date"] and data["environment"]["torch"]
    rows = data["results"]
    providers = {r["provider"] for r in rows}
    expected = {"reference", "peft", "floor"} | ({"fused", "fused-addmm"} if device == "cuda" or TRITON_INTERPRETER
                                                else set())
    assert providers == expected
    assert {r["mode"] for r in rows} == set(bench_lora.MODES) and {r["dropout"] for r in rows} == {0.0, 0.1}
    assert all(r["ms"] > 0 and r["x_floor"] > 0 and r["vs_peft"] > 0 for r in rows)
    if "fused" in providers:
        assert max(data["config"]["fused_vs_reference_max_rel_err"].values()) < 1e-4
    assert "results:" in capsys.readouterr().out
