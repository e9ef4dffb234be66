"""``automl-ft serve``: the real server in a subprocess on a free loopback port, spoken to over HTTP with httpx.

The models are test_predict.py's probe models (pretrained backbones, linear-probe heads, exported as tune exports).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl_ft.cli import main
from automl_ft.predict import run_predict
from tests.test_predict import TEXTS, built_model

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m automl_ft serve MODEL_DIR ...`` in a subprocess; stderr (the request log) goes to a file."""

    def __init__(self, model: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's automl_ft, not the installed one
        self.proc = subprocess.Popen([sys.executable, "-m", "automl_ft", "serve", str(model), "--port",
                                      str(self.port), "--threads", "1", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def health(self) -> dict:
        r = httpx.get(self.url + "/health", timeout=10)
        assert r.status_code == 200
        return r.json()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return built_model(tmp_path_factory, "text")[0]


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    return built_model(tmp_path_factory, "image")[0]


@pytest.fixture(scope="module")
def text_server(text_model, tmp_path_factory):
    # A long batching wait and a small body limit: the batching and the 413 are observable in tests.
    server = Server(text_model, tmp_path_factory.mktemp("serve") / "text.log", "--max-batch", "8",
                    "--max-wait-ms", "50", "--max-body-mb", "0.05", "--max-inputs", "12")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image_server(image_model, tmp_path_factory):
    server = Server(image_model, tmp_path_factory.mktemp("serve") / "image.log")
    yield server
    server.stop()


def cli_predict(model: Path, inputs: list[str], stdin_text: str = "", **kw) -> list[dict]:
    """What ``automl-ft predict`` prints, minus the fields naming the input."""
    out = io.StringIO()
    rc = run_predict(str(model), inputs, stdout=out, stdin=io.StringIO(stdin_text), stderr=io.StringIO(), **kw)
    assert rc == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("input", "source")} for r in rows]


def assert_same(got: list[dict], want: list[dict]) -> None:
    """Same labels exactly; scores equal up to float noise (a different batch pads texts differently)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w), (g, w)
        assert g["label"] == w["label"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        if "top_k" in w:
            assert [k["label"] for k in g["top_k"]] == [k["label"] for k in w["top_k"]]


def test_text_answers_equal_cli_predict(text_server, text_model):
    r = httpx.post(text_server.url + "/v1/predict", json={"inputs": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    assert_same(r.json()["predictions"], cli_predict(text_model, ["-"], "\n".join(TEXTS) + "\n"))
    r = httpx.post(text_server.url + "/v1/predict", json={"inputs": TEXTS[:3], "top_k": 2}, timeout=30)
    assert_same(r.json()["predictions"], cli_predict(text_model, ["-"], "\n".join(TEXTS[:3]) + "\n", top_k=2))


def test_image_answers_equal_cli_predict_json_and_multipart(image_server, image_model):
    from automl_ft.bench.bench_onnx import SHARED

    files = sorted((SHARED / "cifar10_subset" / "test").rglob("*.png"))[::97][:5]
    want = cli_predict(image_model, [str(p) for p in files])
    inputs = [base64.b64encode(p.read_bytes()).decode() for p in files]
    r = httpx.post(image_server.url + "/v1/predict", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    assert_same(r.json()["predictions"], want)
    upload = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
    r = httpx.post(image_server.url + "/v1/predict/upload", files=upload, timeout=30)
    assert r.status_code == 200, r.text
    assert_same(r.json()["predictions"], want)


def test_server_process_never_imports_torch(text_server, image_server):
    for server in (text_server, image_server):
        health = server.health()
        assert health["torch_imported"] is False
        assert health["pid"] == server.proc.pid
        maps = Path(f"/proc/{server.proc.pid}/maps")
        if maps.exists():
            assert "libtorch" not in maps.read_text()
            assert "onnxruntime" in maps.read_text()  # the check would see a library if it were loaded


def test_metadata_and_docs(text_server, text_model):
    meta = httpx.get(text_server.url + "/v1/metadata").json()
    assert meta["labels"] == json.loads((text_model / "labels.json").read_text())
    assert meta["task"] == "text-classification" and meta["inputs"]["kind"] == "text"
    assert meta["inputs"]["max_length"] > 0
    assert httpx.get(text_server.url + "/docs").status_code == 200
    spec = httpx.get(text_server.url + "/openapi.json").json()
    assert {"/health", "/v1/metadata", "/v1/predict", "/v1/predict/upload"} <= set(spec["paths"])


def test_concurrent_requests_are_micro_batched(text_server, text_model):
    before = text_server.health()["model_calls"]

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=text_server.url, timeout=30) as client:
            replies = await asyncio.gather(*(client.post("/v1/predict", json={"inputs": [t]}) for t in TEXTS[:8]))
        return [r.json()["predictions"][0] for r in replies]

    got = asyncio.run(burst())
    calls = text_server.health()["model_calls"] - before
    # 8 single-input requests within the 50 ms window, --max-batch 8: far fewer model calls than requests
    assert calls <= 3, calls
    assert_same(got, cli_predict(text_model, ["-"], "\n".join(TEXTS[:8]) + "\n"))


MALFORMED = [
    ("POST", "/v1/predict", {"content": b"{not json", "headers": {"content-type": "application/json"}}, (400, 422)),
    ("POST", "/v1/predict", {"content": b"", "headers": {"content-type": "application/json"}}, (400, 422)),
    ("POST", "/v1/predict", {"json": {}}, (422,)),
    ("POST", "/v1/predict", {"json": []}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": "a string, not a list"}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": [1, 2]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": [None]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": [["nested"]]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": []}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": ["   "]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": ["ok"], "top_k": 0}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": ["ok"], "top_k": "many"}}, (422,)),
    ("POST", "/v1/predict", {"json": {"texts": ["wrong key"]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": ["x\x00\x01binary"]}}, (422,)),
    ("POST", "/v1/predict", {"json": {"inputs": ["iVBORw0KGgo" + "A" * 400]}}, (422,)),  # an image to a text model
    ("POST", "/v1/predict", {"json": {"inputs": ["hi"] * 13}}, (413,)),  # --max-inputs 12
    ("POST", "/v1/predict", {"json": {"inputs": ["x" * 60_000]}}, (413,)),  # --max-body-mb 0.05
    ("POST", "/v1/predict", {"content": b"inputs=hello", "headers": {"content-type": "text/plain"}}, (400, 415, 422)),
    ("POST", "/v1/predict/upload", {"files": [("files", ("a.png", b"\x89PNG", "image/png"))]}, (422,)),
    ("POST", "/v1/predict/upload", {"json": {"inputs": ["x"]}}, (422,)),
    ("GET", "/v1/predict", {}, (405,)),
    ("GET", "/v1/nothing-here", {}, (404,)),
    ("DELETE", "/health", {}, (405,)),
    ("POST", "/v1/predict", {"content": b'{"inputs": ["a"]', "headers": {"content-type": "application/json"}},
     (400, 422)),
]


def test_malformed_requests_get_4xx_json_and_the_server_stays_up(text_server):
    assert len(MALFORMED) >= 20
    with httpx.Client(base_url=text_server.url, timeout=30) as client:
        for method, path, kwargs, statuses in MALFORMED:
            r = client.request(method, path, **kwargs)
            assert r.status_code in statuses, (method, path, kwargs, r.status_code, r.text)
            body = r.json()
            assert isinstance(body.get("error") or body.get("detail"), (str, list)), r.text
            assert text_server.proc.poll() is None
        # a chunked body (no Content-Length) over the limit is refused while streaming
        r = client.post("/v1/predict", content=iter([b'{"inputs": ["', b"y" * 70_000, b'"]}']),
                        headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = client.post("/v1/predict", json={"inputs": ["still serving"]})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"]
    assert text_server.health()["status"] == "ok"


def test_image_server_refuses_texts_and_broken_images(image_server):
    r = httpx.post(image_server.url + "/v1/predict", json={"inputs": ["a sentence, not base64!"]})
    assert r.status_code == 422 and "base64" in r.json()["error"]
    r = httpx.post(image_server.url + "/v1/predict", json={"inputs": [base64.b64encode(b"not an image").decode()]})
    assert r.status_code == 422 and "not a readable image" in r.json()["error"]
    assert image_server.health()["status"] == "ok"


def test_one_log_line_per_request(text_server):
    before = text_server.log.read_text().count("/v1/metadata")
    for _ in range(3):
        httpx.get(text_server.url + "/v1/metadata")
    httpx.post(text_server.url + "/v1/predict", json={"inputs": ["hi"] * 13})
    time.sleep(0.3)
    log = text_server.log.read_text()
    assert log.count("/v1/metadata") - before == 3
    assert any(" 413 " in line and "POST /v1/predict" in line for line in log.splitlines())


def test_cli_serve_bad_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "no such model folder" in err and "--max-batch must be at least 1" in err


def test_workers_each_load_the_model_without_torch(text_model, tmp_path):
    server = Server(text_model, tmp_path / "workers.log", "--workers", "2")
    try:
        r = httpx.post(server.url + "/v1/predict", json={"inputs": TEXTS[:2]}, timeout=30)
        assert r.status_code == 200
        assert_same(r.json()["predictions"], cli_predict(text_model, ["-"], "\n".join(TEXTS[:2]) + "\n"))
        deadline = time.time() + 30
        while time.time() < deadline and server.log.read_text().count(" serving ") < 2:
            time.sleep(0.2)
        serving = [line for line in server.log.read_text().splitlines() if " serving " in line]
        assert len({line.split()[2] for line in serving}) == 2  # two worker pids
        assert all("torch imported: False" in line for line in serving)
    finally:
        server.stop()
