"""bench/bench_serve.py: a short real run (HTTP server in a subprocess, async httpx client) writes its figures."""

from __future__ import annotations

import json

from automl_ft.cli import BENCHES
from tests.test_predict import built_model


def test_bench_serve_writes_rows_for_every_level(tmp_path_factory, tmp_path):
    from bench import bench_serve  # this checkout's bench/ (automl_ft.bench is the installed copy)

    model = built_model(tmp_path_factory, "text")[0]
    rc = bench_serve.main(["--model", str(model), "--clients", "1,4", "--max-batch", "1,8", "--requests", "12",
                           "--seconds", "10", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("serve-*.json")
    result = json.loads(path.read_text())
    rows = result["results"]
    http = [(r["max_batch"], r["clients"]) for r in rows if r["mode"] == "http"]
    assert http == [(1, 1), (1, 4), (8, 1), (8, 4)]
    assert [r["max_batch"] for r in rows if r["mode"] == "in-process"] == [1, 8]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] >= 12 and r["requests_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    # without micro-batching every request is its own model call
    assert all(r["model_calls_per_request"] == 1 for r in rows if r["mode"] == "http" and r["max_batch"] == 1)
    assert result["config"]["clients"] == [1, 4] and "device" in result["environment"]
    assert "serve" in BENCHES
