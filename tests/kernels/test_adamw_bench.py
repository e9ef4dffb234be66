"""Smoke test of bench/bench_adamw.py: every case and provider runs on tiny sizes and the results are written."""

from __future__ import annotations

import json

import torch
from automl_ft.bench import bench_adamw


def test_bench_adamw_smoke(tmp_path, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--device", device, "--quick", "--warmup-ms", "0", "--rep-ms", "0", "--out", str(tmp_path)]
    assert bench_adamw.main(argv) == 0
    [json_path] = tmp_path.glob("adamw-*.json")
    assert json_path.with_suffix(".csv").is_file()
    data = json.loads(json_path.read_text())
    assert data["environment"]["device"] and data["environment"]["date"] and data["environment"]["torch"]
    rows = data["results"]
    assert {r["case"] for r in rows} == set(bench_adamw.CASES)
    assert {r["provider"] for r in rows if r["case"] == "single"} == {
        "ours", "torch default", "torch foreach", "torch fused", "reference"}
    assert {r["tensors"] for r in rows if r["case"] == "lora448"} == {448}
    assert all(r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 for r in rows)
    assert max(data["config"]["ours_vs_reference_max_rel_err"].values()) < 1e-5
    assert data["config"]["targets"]
    assert "results:" in capsys.readouterr().out
