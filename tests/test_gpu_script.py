"""bench/gpu.sh, the prepared GPU run, keeps working on a CPU: every step runs under Triton's interpreter on small
shapes, results and logs land in the given folder and a summary table is printed; a failing step does not stop the
others. (On a GPU the same script runs the real checks; nothing here can time those.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(out: pathlib.Path, *args: str, timeout: int = 900, extra_env: dict | None = None
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(extra_env or {})}
    env.pop("TRITON_INTERPRET", None)  # the script sets it for its steps itself
    return subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--out", str(out), *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summary(out: pathlib.Path) -> dict:
    [path] = out.glob("gpu-*.json")
    return json.loads(path.read_text())


@pytest.mark.slow  # 40-80 s on a loaded 2-core CPU (three interpreter/benchmark subprocesses)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode; on a GPU run bench/gpu.sh itself")
def test_kernel_steps_in_cpu_mode(tmp_path):
    proc = _run(tmp_path, "--steps", "tests,lora,adamw")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cpu mode" in proc.stdout and "\nsummary\n" in proc.stdout
    data = _summary(tmp_path)
    assert data["mode"] == "cpu" and data["environment"]["device"] and data["environment"]["torch"]
    steps = {s["step"]: s for s in data["steps"]}
    assert list(steps) == ["tests", "lora", "adamw"]
    assert all(s["status"] == "ok" and s["rc"] == 0 for s in steps.values()), steps
    assert steps["tests"]["figures"].get("passed", 0) >= 4 and not steps["tests"]["figures"].get("failed")
    assert steps["tests"]["env"] == {"AUTOML_FT_SINGLE_CONFIG": "1"}
    lora = steps["lora"]["figures"]
    assert (tmp_path / lora["file"]).is_file() and "fused p=0" in lora and "fused-addmm p=0.1" in lora
    assert lora["chosen_configs"]["_lora_fwd_kernel"], "the configs the figures ran with are recorded"
    assert (tmp_path / steps["adamw"]["figures"]["file"]).is_file()
    for s in steps.values():
        assert (tmp_path / s["log"]).read_text().startswith("$ ")
        assert f"\n{s['step']}" in proc.stdout.split("\nsummary\n", 1)[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode; on a GPU run bench/gpu.sh itself")
def test_a_failing_step_does_not_stop_the_others(tmp_path):
    # Make the adamw step's python exit 3 at start-up (a sitecustomize on its PYTHONPATH), then check that the
    # tests step after it still runs, the summary says which failed and the exit status is 1.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\nif sys.argv and sys.argv[0].endswith('bench_adamw.py'):\n    os._exit(3)\n")
    out = tmp_path / "out"
    proc = _run(out, "--steps", "adamw,tests", extra_env={"PYTHONPATH": str(hook)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["step"]: s for s in _summary(out)["steps"]}
    assert steps["adamw"]["status"] == "failed" and steps["adamw"]["rc"] == 3
    assert steps["tests"]["status"] == "ok" and steps["tests"]["figures"].get("passed", 0) >= 4
    table = proc.stdout.split("\nsummary\n", 1)[1]
    assert "adamw" in table and "failed" in table and "tests" in table
    # An unknown step is a usage error before anything runs or is written.
    proc = _run(tmp_path / "out2", "--steps", "adamw,nope")
    assert proc.returncode == 2 and "unknown step 'nope'" in proc.stderr and not (tmp_path / "out2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode; on a GPU run bench/gpu.sh itself")
def test_tune_step_in_cpu_mode(tmp_path):
    # One real `tune` epoch of MiniLM with LoRA (r=16, dropout 0.1) on 36 texts: ~20 s on a 2-core CPU.
    proc = _run(tmp_path, "--steps", "tune")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [step] = _summary(tmp_path)["steps"]
    assert step["status"] == "ok" and step["figures"].get("trials/0000/history.json"), step
    assert step["figures"]["best/metrics.json"]["test"]["num_examples"] > 0
    assert "--trials 1" in " ".join(step["command"]) and "--device cpu" in " ".join(step["command"])
    # tiny data is cross-validated: the trial's history.json is its folds' record (the refit's stays in refit.json)
    assert "val_score=" in step["summary"]
    # The temporary run folder is gone; only results, the summary and the log are left in --out.
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".log"]
