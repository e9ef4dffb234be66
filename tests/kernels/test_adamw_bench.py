"""Smoke test of bench/bench_adamw.py: every case and provider runs on tiny sizes and the results are written; and
its correctness check compares ``FusedAdamW`` with ``torch.optim.AdamW``, so that it fails when our math is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from automl_ft.bench import bench_adamw

# bench_adamw.check_against_torch: fp32 rounding of the parameters bounds the update error at ~3e-4 (see there).
UPDATE_TOL, MOMENT_TOL = 1e-3, 1e-5


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
    errors = data["config"]["ours_vs_torch_adamw_max_rel_err"]
    assert set(errors) == set(bench_adamw.CASES)
    for case, err in errors.items():
        assert err["update"] < UPDATE_TOL and max(err["exp_avg"], err["exp_avg_sq"]) < MOMENT_TOL, (case, err)
    assert data["config"]["targets"]
    assert "results:" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA `ours` runs the Triton kernels, not the reference")
@pytest.mark.parametrize("case", ["single", "clip+lora448"])
def test_bench_check_fails_when_the_shared_reference_math_is_wrong(monkeypatch, case):
    """On a CPU `ours` is the PyTorch reference (backend auto); the check used to compare it with the reference
    itself, so an error in the reference showed as 0. A learning rate 1 % too high in the reference must show."""
    from automl_ft.kernels import optim, reference

    real = reference.adamw_step_reference

    def wrong(*args, lr, **kwargs):
        return real(*args, lr=lr * 1.01, **kwargs)

    monkeypatch.setattr(reference, "adamw_step_reference", wrong)
    monkeypatch.setattr(optim, "adamw_step_reference", wrong)
    s = bench_adamw.SIZES["quick"]
    shapes = bench_adamw.lora_shapes(s)[:20] if case.endswith("lora448") else [(s.single,)]
    err = bench_adamw.check_against_torch(case, "cpu", shapes, torch.float32)
    assert err["update"] > 5 * UPDATE_TOL, err  # 1 % of each update: ~1e-2
    monkeypatch.setattr(optim, "adamw_step_reference", real)
    assert bench_adamw.check_against_torch(case, "cpu", shapes, torch.float32)["update"] < UPDATE_TOL
