"""The prepared GPU run (issue 14): kernel tests, the AdamW and LoRA benchmarks at their target shapes, one real
``tune`` epoch; everything written to ``bench/results/`` with the device, versions, chosen configs and the command.

A GPU is lent for ~10-15 minutes in all, so this is one command that must finish in under 8 minutes on an
H100-class GPU, keep going past a failing step (each step is a subprocess with its own timeout) and end with a
short summary table. Without CUDA it runs the same steps under Triton's interpreter on small shapes, so CI keeps it
working (tests/test_gpu_script.py).

    bench/gpu.sh                        # = python -m automl_ft.bench.bench_gpu
    automl-ft bench gpu [--out DIR] [--steps tests,adamw,lora,tune]

Steps (GPU budget):
  tests  ``pytest tests/kernels -m "gpu and not slow"`` (LoRA in bf16) with ``AUTOML_FT_SINGLE_CONFIG=1`` (one
         autotune config per kernel: compiling every config of every specialisation would take the budget)  150 s
  adamw  ``bench_adamw.py`` at its CUDA sizes (100 M fp32, the 448 LoRA tensors of a 7B, bf16 master, clipping)
                                                                                                        60 s
  lora   ``bench_lora.py --preset target``: bf16 M=8192 K=N=4096 r=16, dropout 0 and 0.1, fused (Triton), fused-addmm
         (cuBLAS base), reference, PEFT, floor; ``AUTOML_FT_MAX_CONFIGS=3``                             150 s
  tune   ``automl-ft tune`` on ../shared/data/sms_spam (1 trial, 1 epoch, LoRA r=16 with dropout, bf16 autocast,
         Triton kernels via backend="auto") into a temporary run folder                                 105 s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "adamw", "lora", "tune")
# Seconds per step on a GPU (sum 465 s = 7.75 min, inside the 8-minute budget) and under the CPU interpreter.
TIMEOUTS = {"cuda": {"tests": 150, "adamw": 60, "lora": 150, "tune": 105},
            "cpu": {"tests": 300, "adamw": 120, "lora": 300, "tune": 600}}
SMS_SPAM = ROOT.parent / "shared" / "data" / "sms_spam" / "sms_spam.csv"

# One fixed configuration: the trial is a timing and plumbing check of the fused kernels in real training, not a
# search. LoRA with dropout exercises every LoRA kernel (pre-pass with mask, both GEMMs, the skinny dy pass).
TUNE_SPACE = """\
task: text-classification
description: bench/bench_gpu.py's single fixed trial (one epoch of LoRA on MiniLM).
backbones:
  minilm-l6:
    max_length: {max_length}
    freeze_depth: 0
adaptation:
  lora:
    rank: 16
    alpha: 32
    dropout: 0.1
    lr: 1.0e-3
training:
  weight_decay: 0.01
  label_smoothing: 0.0
  dropout: 0.1
  batch_size: 32
  epochs: 1
  warmup_ratio: 0.06
  max_grad_norm: 1.0
  patience: 1
  head_lr_scale: 10.0
sampler: {{type: random}}
pruner: {{type: none}}
"""


def _tiny_text_csv(path: Path) -> Path:
    """CPU mode's data: 3 classes x 12 short texts (an epoch of MiniLM on a CPU in seconds, not minutes)."""
    words = {"sports": "goal match team score league coach", "weather": "rain sunny storm cloud wind snow",
             "food": "pizza pasta salad bread cheese soup"}
    lines = ["text,label"]
    for label, vocab in words.items():
        v = vocab.split()
        for i in range(12):
            lines.append(f"the {v[i % 6]} and {v[(i + 2) % 6]} today {i},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _step_commands(step: str, on_cuda: bool, out: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    py = sys.executable
    env: dict[str, str] = {}
    if step == "tests":
        env["AUTOML_FT_SINGLE_CONFIG"] = "1"
        if on_cuda:
            # bf16 (the training dtype) of the LoRA tests, every AdamW GPU test: each LoRA shape x dtype is ~6 kernel
            # specialisations to compile, so fp16/fp32 would not fit the step's budget (they run in the full suite).
            return [py, "-m", "pytest", "tests/kernels", "-m", "gpu and not slow", "-q", "-p", "no:cacheprovider",
                    "-o", "addopts=-ra", "-k", "not TestCuda or bf16 or autocast or auto_picks"], env
        # Interpreter: one ragged shape of the LoRA kernels, every backend, with and without dropout.
        return [py, "-m", "pytest", "tests/kernels/test_lora.py", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                "-o", "addopts=-ra", "-k", "2x5-77-123-r3 and fp32 or same_mask and fp32 or counter"], env
    if step == "adamw":
        return [py, str(ROOT / "bench" / "bench_adamw.py"), "--out", str(out)] + ([] if on_cuda else ["--quick"]), env
    if step == "lora":
        if on_cuda:
            env["AUTOML_FT_MAX_CONFIGS"] = "3"
            return [py, str(ROOT / "bench" / "bench_lora.py"), "--preset", "target", "--dropout", "0,0.1",
                    "--warmup-ms", "10", "--rep-ms", "50", "--out", str(out)], env
        return [py, str(ROOT / "bench" / "bench_lora.py"), "--device", "cpu", "--shapes", "24,40,24", "--ranks", "3",
                "--dropout", "0,0.1", "--warmup-ms", "0", "--rep-ms", "0", "--out", str(out)], env
    if step == "tune":
        env["AUTOML_FT_SINGLE_CONFIG"] = "1"
        data = SMS_SPAM if on_cuda else _tiny_text_csv(tmp / "tiny.csv")
        space = tmp / "space.yaml"
        space.write_text(TUNE_SPACE.format(max_length=128 if on_cuda else 32))
        return [py, "-m", "automl_ft", "tune", str(data), "--out", str(tmp / "run"), "--trials", "1", "--space",
                str(space), "--device", "cuda" if on_cuda else "cpu", "--seed", "0"], env
    raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


def _newest(out: Path, prefix: str, since: float) -> Path | None:
    files = [p for p in out.glob(f"{prefix}-*.json") if p.stat().st_mtime >= since - 1]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def _figures(step: str, out: Path, since: float, log: str, tmp: Path) -> dict[str, Any]:
    """The few numbers of a step worth a line in the summary (the full results are in its own files)."""
    if step == "tests":
        m = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", log.splitlines()[-1] if log else "")
        return {k: int(v) for v, k in m}
    if step in ("adamw", "lora"):
        path = _newest(out, step, since)
        if path is None:
            return {}
        data = json.loads(path.read_text())
        rows = data.get("results", [])
        figs: dict[str, Any] = {"file": path.name}
        if step == "lora":
            for r in rows:
                if r.get("mode") == "fwd+bwd" and r.get("provider") in ("fused", "fused-addmm", "peft", "floor"):
                    figs[f"{r['provider']} p={r['dropout']:g}"] = (
                        f"{r['ms']:.3f} ms, {r.get('vs_peft') or 0:.2f}x PEFT, {r.get('x_floor') or 0:.2f}x floor")
            figs["auto_choice"] = data.get("config", {}).get("auto_choice")
            figs["chosen_configs"] = data.get("config", {}).get("chosen_configs")
        else:
            for r in rows:
                if r.get("provider") == "ours":
                    figs[r["case"]] = (f"{r['ms']:.3f} ms, {r.get('gbps') or 0:.0f} GB/s, "
                                       f"{r.get('pct_copy') or 0:.0f} % copy")
        return figs
    if step == "tune":
        figs = {}
        for rel in ("best/metrics.json", "trials/0000/history.json"):
            p = tmp / "run" / rel
            if p.is_file():
                try:
                    figs[rel] = json.loads(p.read_text())
                except ValueError:
                    figs[rel] = "unreadable"
        return figs
    return {}


def _summary_line(step: str, figs: dict[str, Any]) -> str:
    if step == "tests":
        return ", ".join(f"{v} {k}" for k, v in figs.items()) or "-"
    if step == "lora":
        keys = [k for k in figs if k.startswith("fused")]
        return "; ".join(f"{k}: {figs[k]}" for k in keys) or "-"
    if step == "adamw":
        return "; ".join(f"{k}: {v}" for k, v in figs.items() if k != "file") or "-"
    if step == "tune":
        hist = figs.get("trials/0000/history.json")
        if isinstance(hist, dict):
            hist = hist.get("epochs", hist)
        if isinstance(hist, list) and hist:
            last = hist[-1]
            return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()
                             if not isinstance(v, (dict, list)))[:160]
        return "run folder written" if figs else "-"
    return "-"


def main(argv: list[str] | None = None) -> int:
    import torch
    from automl_ft.bench.common import RESULTS_DIR, environment, slug

    parser = argparse.ArgumentParser(prog="automl-ft bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    for s in steps:
        if s not in STEPS:
            parser.error(f"unknown step {s!r}; choose from {', '.join(STEPS)}")
    on_cuda = torch.cuda.is_available()
    mode = "cuda" if on_cuda else "cpu"
    out = Path(args.out) if args.out else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    env_info = environment("cuda" if on_cuda else "cpu")
    env_info["command"] = " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    stem = f"gpu-{slug(env_info['device'])}-{env_info['date'][:10]}"
    print(f"bench gpu: {env_info['device']} ({mode} mode{'' if on_cuda else ': TRITON_INTERPRET=1, small shapes'})"
          f", results in {out}", flush=True)

    records = []
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="automl-ft-gpu-") as tmp_root:
        for step in steps:
            tmp = Path(tmp_root) / step
            tmp.mkdir()
            cmd, extra_env = _step_commands(step, on_cuda, out, tmp)
            env = {**os.environ, **extra_env, "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            if not on_cuda:
                env["TRITON_INTERPRET"] = "1"  # read at import by triton.jit: set before the step's python starts
            timeout = TIMEOUTS[mode][step]
            log_path = out / f"{stem}-{step}.log"
            print(f"[{step}] {' '.join(shlex.quote(c) for c in cmd)} (timeout {timeout} s)", flush=True)
            t0 = time.time()
            try:
                proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=timeout)
                rc, log = proc.returncode, proc.stdout + proc.stderr
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired as e:
                rc = None
                log = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                log += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
                status = "timeout"
            seconds = time.time() - t0
            log_path.write_text(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n{log}")
            try:
                figs = _figures(step, out, t0, log.strip(), tmp)
            except Exception as e:  # noqa: BLE001 - a step's odd output must not stop the run
                figs = {"error": f"{type(e).__name__}: {e}"}
            records.append({"step": step, "status": status, "rc": rc, "seconds": round(seconds, 1),
                            "timeout_s": timeout, "command": cmd, "env": extra_env, "log": log_path.name,
                            "figures": figs, "summary": _summary_line(step, figs)})
            print(f"[{step}] {status} in {seconds:.0f} s: {records[-1]['summary']}", flush=True)

    total = time.time() - t_all
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps({"benchmark": "gpu", "mode": mode, "environment": env_info,
                                     "total_seconds": round(total, 1), "steps": records}, indent=2, default=str)
                         + "\n")
    width = max(len(r["step"]) for r in records) if records else 5
    print("\nsummary")
    print(f"{'step':<{width}}  {'status':<7}  {'s':>5}  figures")
    for r in records:
        print(f"{r['step']:<{width}}  {r['status']:<7}  {r['seconds']:>5.0f}  {r['summary']}")
    print(f"total {total:.0f} s; results: {json_path}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
