"""``automl-ft serve`` under load: a real HTTP client (httpx, async) against the server on loopback.

For each ``--max-batch`` (default 1 = no micro-batching, and 32) it starts ``automl-ft serve MODEL`` in a
subprocess, then at each concurrency level (default 1, 8 and 64 clients) every client sends single-input
``POST /v1/predict`` requests back to back until ``--requests`` answers or ``--seconds`` have passed, whichever
comes first. Rows give requests/s and p50/p99 latency (client side, whole HTTP round trip), and the server's model
calls per request (below 1 when requests were batched together). The reference rows are ``Predictor`` in-process
(no HTTP): one input per call (latency), and ``--max-batch`` inputs per call (the throughput ceiling).

Inputs are real: the SMS spam test split for a text model, CIFAR-10 subset test images (base64) for an image model.
The server and the client share the machine, so on a small CPU the client's own cost is part of the figures.

    python bench/bench_serve.py --model RUN/best
    python bench/bench_serve.py                       # builds the MiniLM probe model of bench_onnx first
    python bench/bench_serve.py --quick               # smoke run: few requests, 1 and 8 clients
    automl-ft bench serve [same flags]

Results: ``bench/results/serve-<device>-<date>.{json,csv}`` (``--out`` elsewhere) and a rich table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from automl_ft.bench.common import environment, print_table, write_results

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# This file's own results folder: automl_ft.bench.common's default is that of the installed copy of bench/.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def load_inputs(model_dir: Path, limit: int) -> tuple[list[str], list[Any], bool]:
    """(JSON inputs for the server, the same inputs for ``Predictor``, is_image) from ../shared."""
    pre = json.loads((model_dir / "preprocess.json").read_text())
    if pre.get("kind") == "image":
        files = sorted((SHARED / "cifar10_subset" / "test").rglob("*.png"))[:limit]
        if not files:
            raise SystemExit(f"error: no images under {SHARED / 'cifar10_subset'}")
        return [base64.b64encode(p.read_bytes()).decode() for p in files], [str(p) for p in files], True
    import pandas as pd

    path = SHARED / "sms_spam" / "sms_spam.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found")
    texts = [t for t in pd.read_csv(path)["text"].astype(str).tolist() if t.strip()][-limit:]  # tail: test-like
    return texts, texts, False


class ServerProcess:
    def __init__(self, model: Path, max_batch: int, threads: int | None, log: Path):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "automl_ft", "serve", str(model), "--port", str(self.port), "--max-batch",
               str(max_batch)] + (["--threads", str(threads)] if threads else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the server exited ({log.read_text()[-500:]})")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("error: the server did not start in 120 s")

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load_level(url: str, inputs: list[str], clients: int, requests: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent clients, single-input requests back to back; bounded by count and time."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal counter, errors
            while counter < requests and time.perf_counter() < stop_at:
                text = inputs[counter % len(inputs)]
                counter += 1
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", json={"inputs": [text]})
                latencies.append((time.perf_counter() - t0) * 1e3)
                if r.status_code != 200:
                    errors += 1

        for _ in range(min(clients, 4)):  # warm connections and the model's shapes
            await client.post("/v1/predict", json={"inputs": [inputs[0]]})
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "p50_ms": statistics.median(latencies),
            "p99_ms": _percentile(latencies, 99)}


def in_process(model: Path, inputs: list[Any], batch: int, requests: int, seconds: float,
               threads: int | None) -> dict[str, Any]:
    """``Predictor.predict_logits`` on ``batch`` inputs per call, no HTTP; bounded by count and time."""
    from automl_ft.predict import Predictor

    predictor = Predictor(model, threads=threads)
    predictor.predict_logits(inputs[:batch], batch_size=batch)  # warm-up
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds
    start = time.perf_counter()
    while done < requests and time.perf_counter() < stop_at:
        chunk = [inputs[(done + i) % len(inputs)] for i in range(batch)]
        t0 = time.perf_counter()
        predictor.predict_logits(chunk, batch_size=batch)
        latencies.append((time.perf_counter() - t0) * 1e3)
        done += batch
    elapsed = time.perf_counter() - start
    return {"requests": done, "errors": 0, "seconds": elapsed, "requests_per_s": done / elapsed,
            "p50_ms": statistics.median(latencies), "p99_ms": _percentile(latencies, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="DIR", help="an exported model folder (default: build the MiniLM probe "
                        "model of bench_onnx)")
    parser.add_argument("--clients", default="1,8,64", help="comma-separated concurrency levels (default 1,8,64)")
    parser.add_argument("--max-batch", default="1,32", help="comma-separated server --max-batch (default 1,32)")
    parser.add_argument("--requests", type=int, default=400, help="most requests per level (default 400)")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: physical cores)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 requests or 5 s per level, 1 and 8 "
                        "clients")
    parser.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.clients = min(args.requests, 40), min(args.seconds, 5.0), "1,8"
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    batches = [int(b) for b in args.max_batch.split(",") if b.strip()]
    if not clients or min(clients) < 1 or not batches or min(batches) < 1 or args.requests < 1:
        raise SystemExit("error: --clients, --max-batch and --requests take positive integers")
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    if args.model:
        model = Path(args.model).expanduser()
    else:
        from automl_ft.bench import bench_onnx

        model = Path(tmp.name) / "text"
        bench_onnx.build_model(model, bench_onnx.load_shared("text", limit_test=200), train_limit=256)
    server_inputs, local_inputs, is_image = load_inputs(model, 200)
    rows: list[dict[str, Any]] = []
    for batch in (1, max(batches)):
        row = in_process(model, local_inputs, batch, args.requests, args.seconds, args.threads)
        rows.append({"mode": "in-process", "max_batch": batch, "clients": 1, **row, "model_calls_per_request": 1 / batch})
        print(f"in-process batch {batch}: {row['requests_per_s']:.1f} inputs/s", flush=True)
    for batch in batches:
        server = ServerProcess(model, batch, args.threads, Path(tmp.name) / f"server-{batch}.log")
        try:
            for c in clients:
                before = server.health()
                row = asyncio.run(load_level(server.url, server_inputs, c, args.requests, args.seconds))
                after = server.health()
                served = max(1, after["inputs_served"] - before["inputs_served"])
                rows.append({"mode": "http", "max_batch": batch, "clients": c, **row,
                             "model_calls_per_request": (after["model_calls"] - before["model_calls"]) / served})
                print(f"http max-batch {batch}, {c} clients: {row['requests_per_s']:.1f} req/s, p50 "
                      f"{row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms", flush=True)
        finally:
            server.stop()
    env = environment("cpu")
    env["model"] = str(model)
    config = {"clients": clients, "max_batch": batches, "requests": args.requests, "seconds": args.seconds,
              "threads": args.threads, "inputs": "image" if is_image else "text", "model_dir": str(model)}
    json_path, _ = write_results("serve", rows, env, config, Path(args.out) if args.out else RESULTS_DIR)
    print_table("automl-ft serve under load", rows, ["mode", "max_batch", "clients", "requests", "errors",
                                                     "requests_per_s", "p50_ms", "p99_ms", "model_calls_per_request"])
    print(f"results: {json_path}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
