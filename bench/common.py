"""What every benchmark shares: the machine description, timing, peak memory, result files and a rich table.

Results land in ``bench/results/<name>-<device>-<date>.{json,csv}`` with the device name, date, versions and the
exact command, so every figure quoted anywhere can be traced to a run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """Human name of the device a benchmark ran on, e.g. 'NVIDIA H100 80GB HBM3' or 'AMD EPYC ... (2 threads)'."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    import torch

    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def environment(device: str) -> dict[str, Any]:
    """Everything needed to trace a figure: device, date, versions, command line."""
    import torch

    env: dict[str, Any] = {
        "device": device_name(device),
        "device_type": "cuda" if device.startswith("cuda") else "cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    for pkg in ("triton", "peft", "onnxruntime", "transformers"):
        try:
            mod = __import__(pkg)
            env[pkg] = getattr(mod, "__version__", "?")
        except Exception:
            env[pkg] = None
    return env


def bench_ms(fn: Callable[[], Any], device: str, *, warmup_ms: float = 25, rep_ms: float = 100,
             min_reps: int = 5) -> float:
    """Median milliseconds of ``fn()``.

    On CUDA this is ``triton.testing.do_bench`` (it flushes the L2 cache between runs and times with CUDA
    events); on the CPU, a perf_counter loop with the same warm-up / repetition budget in milliseconds.
    """
    if device.startswith("cuda"):
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory allocated by torch during one call of ``fn`` above what was allocated before, in MiB (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def write_results(name: str, rows: list[dict[str, Any]], env: dict[str, Any], config: dict[str, Any] | None = None,
                  out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``rows`` as JSON (with the environment and config) and CSV; returns both paths."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{slug(env['device'])}-{env['date'][:10]}"
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    json_path.write_text(json.dumps({"benchmark": name, "environment": env, "config": config or {}, "results": rows},
                                    indent=2, default=str) + "\n")
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Show ``rows`` as a rich table; floats get 3 significant decimals."""
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    columns = columns or list(rows[0])
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if isinstance(rows[0].get(col), (int, float)) else "left")
    for row in rows:
        cells = []
        for col in columns:
            v = row.get(col)
            cells.append("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        table.add_row(*cells)
    Console().print(table)


def write_rows(base: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``base``.json (``header`` and every row) and ``base``.csv (the rows without their timelines), rewritten after
    each row so a cut run keeps what it measured."""
    base.with_suffix(".json").write_text(json.dumps({**header, "rows": rows}, indent=2, default=str) + "\n")
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "timeline"]
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
