"""``automl-ft serve``: an exported model over HTTP (FastAPI + uvicorn on onnxruntime; torch is never imported).

Endpoints::

    GET  /health               {"status": "ok", "torch_imported": false, ...}
    GET  /v1/metadata          task, labels, inputs, metrics and the model card's summary
    POST /v1/predict           JSON {"inputs": [texts or base64 images], "top_k": K} -> {"predictions": [...]}
    POST /v1/predict/upload    multipart image files (field "files") -> {"predictions": [...]}
    GET  /docs                 OpenAPI docs

Each prediction carries the fields ``automl-ft predict`` prints for an input (the task's decode: ``label``/
``score``, ``labels``/``scores`` or ``value``, and ``top_k``), without the input itself.

Micro-batching: requests go to an asyncio queue; one batching task per worker process takes the first waiting
request, gathers whatever else arrives within ``max_wait_ms`` (up to ``max_batch`` inputs) and runs them as one
onnxruntime call in a worker thread, so the event loop keeps accepting requests meanwhile. Concurrent clients
then share a forward pass instead of queueing for one each (bench/bench_serve.py measures it).

Bad requests get a 4xx JSON ``{"error": "..."}`` and never reach the model: malformed JSON or a wrong shape 422
(FastAPI's validation), the wrong kind of input 422, a body over ``max_body_mb`` 413, more than ``max_inputs``
inputs 413. One log line per request on stderr.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and the request
# models are defined inside create_app (fastapi and pydantic are imported only when serving).
import asyncio
import base64
import binascii
import io
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from automl_ft.errors import UsageError

LOG = logging.getLogger("automl_ft.serve")
# uvicorn --workers starts fresh processes that import the app by name: they read their settings from here.
CONFIG_ENV = "AUTOML_FT_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """What ``automl-ft serve`` was asked for (validated in ``__post_init__``)."""

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_mb: float = 10.0
    max_inputs: int = 256
    provider: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "max_batch", "max_inputs"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise UsageError(f"--max-wait-ms must be between 0 and 1000, got {self.max_wait_ms}")
        if not self.max_body_mb > 0:
            raise UsageError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")


class RequestError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Batcher:
    """Gathers the inputs of concurrent requests into one model call (see the module docstring).

    ``submit`` takes already-preprocessed payloads (token id lists or image arrays) and returns their logits.
    """

    def __init__(self, predictor: Any, max_batch: int, max_wait_ms: float):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[list[Any], asyncio.Future]] = asyncio.Queue()
        # One thread: onnxruntime parallelises inside a call (intra-op threads); two calls at once only compete.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.task: asyncio.Task | None = None
        self.calls = 0
        self.batched_inputs = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=False)

    async def submit(self, payloads: list[Any]) -> np.ndarray:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((payloads, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job[0])
            payloads = [p for job, _ in jobs for p in job]
            try:
                logits = await loop.run_in_executor(self.pool, self._logits, payloads)
            except Exception as e:  # a model failure answers these requests with 500; the server goes on
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for job, future in jobs:
                if not future.done():  # the client may have gone away (cancelled)
                    future.set_result(logits[start: start + len(job)])
                start += len(job)

    def _logits(self, payloads: list[Any]) -> np.ndarray:
        """Logits in payload order, in model calls of at most ``max_batch``; texts run in length order (less
        padding), as ``automl-ft predict`` does."""
        p = self.predictor
        order = list(range(len(payloads)))
        if not p.is_image:
            order.sort(key=lambda i: len(payloads[i]))
        out = np.zeros((len(payloads), p.task.head_size), dtype=np.float32)
        for s in range(0, len(order), self.max_batch):
            idx = order[s: s + self.max_batch]
            out[idx] = p.logits([payloads[i] for i in idx])
        self.calls += -(-len(payloads) // self.max_batch)
        self.batched_inputs += len(payloads)
        return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def metadata(predictor: Any) -> dict[str, Any]:
    """What ``GET /v1/metadata`` answers: the task, labels, what inputs look like, test metrics, the card's summary."""
    from automl_ft.card import CARD_FILE

    if predictor.is_image:
        pre = predictor.pre
        inputs = {"kind": "image", "encoding": "base64 (JSON) or multipart files", "size": pre.size,
                  "resize": pre.resize, "mean": list(pre.mean), "std": list(pre.std)}
    else:
        inputs = {"kind": "text", "encoding": "UTF-8 strings", "max_length": predictor.pre.max_length}
    try:
        metrics = json.loads((predictor.dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    summary = ""
    card = predictor.dir / CARD_FILE
    if card.is_file():
        summary = card_summary(card.read_text())
    return {"task": predictor.task_name, "problem": getattr(predictor.task, "name", None),
            "primary_metric": getattr(predictor.task, "primary_metric", None), "labels": list(predictor.labels),
            "inputs": inputs, "test_metrics": metrics.get("test", {}), "model_card": summary,
            "model_file": predictor.model_file}


def card_summary(text: str) -> str:
    """The model card's title and first paragraph, without the Hub's YAML header."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        text = text[end + 4:] if end >= 0 else text
    paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    return "\n\n".join(paragraphs[:2])


def create_app(config: ServeConfig) -> Any:
    """The FastAPI application; the model is loaded when the app starts (once per worker process)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from automl_ft.predict import Predictor

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor = Predictor(config.model_dir, provider=config.provider, threads=config.threads)
        state["predictor"] = predictor
        state["batcher"] = batcher = Batcher(predictor, config.max_batch, config.max_wait_ms)
        batcher.start()
        LOG.info("serving %s (%s, %d labels) pid %d, max batch %d, torch imported: %s", predictor.dir,
                 predictor.task_name, len(predictor.labels), os.getpid(), config.max_batch, "torch" in sys.modules)
        yield
        await batcher.stop()

    app = FastAPI(title="automl-ft model server", version=_version(), lifespan=lifespan,
                  description=f"Predictions of the exported model {Path(config.model_dir).name!r} "
                              "(onnxruntime, micro-batched).")

    class PredictRequest(BaseModel):
        inputs: list[str] = Field(..., description="texts, or base64-encoded image files (PNG, JPEG, ...)",
                                  examples=[["Free entry in 2 a wkly comp to win FA Cup final tkts"]])
        top_k: int = Field(1, ge=1, le=1000, description="also list the K most likely labels (classification)")

    class PredictResponse(BaseModel):
        predictions: list[dict[str, Any]]

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}",
                             "detail": json.loads(json.dumps(errors, default=str))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        LOG.error("error on %s %s: %s", request.method, request.url.path, _one_line(exc))
        return JSONResponse({"error": f"internal error: {_one_line(exc)}"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded; whether torch was ever imported into this process (it must not be)."""
        batcher: Batcher = state["batcher"]
        return {"status": "ok", "pid": os.getpid(), "torch_imported": "torch" in sys.modules,
                "model_calls": batcher.calls, "inputs_served": batcher.batched_inputs}

    @app.get("/v1/metadata")
    async def get_metadata() -> dict[str, Any]:
        """The task, labels, expected inputs, test metrics and the model card's summary."""
        return metadata(state["predictor"])

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        """Predict for texts (text models) or base64-encoded images (image models), micro-batched with other
        requests."""
        predictor = state["predictor"]
        _check_count(len(body.inputs), config.max_inputs)
        request.state.inputs = len(body.inputs)
        if predictor.is_image:
            blobs = [_b64(s, i) for i, s in enumerate(body.inputs)]
            payloads = await _images(predictor, blobs)
        else:
            for i, text in enumerate(body.inputs):
                if not text.strip():
                    raise RequestError(422, f"inputs[{i}]: empty text")
                if _looks_binary(text):
                    raise RequestError(422, f"inputs[{i}]: this is a text model but the input looks like encoded "
                                            "binary data; send texts")
            payloads = predictor.pre.encode(list(body.inputs))
        return {"predictions": await _decode(predictor, payloads, body.top_k)}

    @app.post("/v1/predict/upload", response_model=PredictResponse)
    async def predict_upload(request: Request,
                             files: Annotated[list[UploadFile], File(description="image files")],
                             top_k: int = 1) -> dict[str, Any]:
        """Predict for uploaded image files (multipart/form-data, field ``files``); image models only."""
        predictor = state["predictor"]
        if not predictor.is_image:
            raise RequestError(422, "this is a text model: POST JSON {\"inputs\": [texts]} to /v1/predict")
        if not 1 <= top_k <= 1000:
            raise RequestError(422, f"top_k must be between 1 and 1000, got {top_k}")
        _check_count(len(files), config.max_inputs)
        request.state.inputs = len(files)
        blobs = [await f.read() for f in files]
        payloads = await _images(predictor, blobs, [f.filename for f in files])
        return {"predictions": await _decode(predictor, payloads, top_k)}

    async def _decode(predictor: Any, payloads: list[Any], top_k: int) -> list[dict[str, Any]]:
        logits = await state["batcher"].submit(payloads)
        k = min(top_k, max(1, len(predictor.labels)))
        return predictor.task.decode(logits, top_k=k if k > 1 else None)

    # The last added is the outermost: the log line also covers requests the body limit refuses.
    app.add_middleware(_BodyLimitMiddleware, limit=int(config.max_body_mb * 2**20))
    app.add_middleware(_LogMiddleware)
    return app


def _version() -> str:
    from automl_ft import __version__

    return __version__


def _check_count(n: int, limit: int) -> None:
    if n == 0:
        raise RequestError(422, "inputs is empty; send at least one input")
    if n > limit:
        raise RequestError(413, f"{n} inputs in one request; at most {limit} (--max-inputs); split the request")


def _looks_binary(text: str) -> bool:
    """A long unbroken base64 run (an image sent to a text model) or control characters."""
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return True
    return len(text) > 200 and " " not in text and text.startswith(("iVBOR", "/9j/", "R0lGOD", "UklGR", "Qk"))


def _b64(text: str, i: int) -> bytes:
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"inputs[{i}]: not base64; this is an image model: send base64-encoded image "
                                "files") from None


async def _images(predictor: Any, blobs: list[bytes], names: list[str | None] | None = None) -> list[np.ndarray]:
    """Decode and preprocess images off the event loop; an undecodable one refuses the request (422)."""

    def load() -> list[np.ndarray]:
        from PIL import Image

        out = []
        for i, blob in enumerate(blobs):
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    out.append(predictor.pre.apply(im))
            except Exception as e:  # PIL raises UnidentifiedImageError, OSError, ValueError, DecompressionBomb...
                name = f" ({names[i]})" if names and names[i] else ""
                raise RequestError(422, f"inputs[{i}]{name}: not a readable image ({_one_line(e)})") from None
        return out

    return await asyncio.get_running_loop().run_in_executor(None, load)


class _BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with 413 before the app reads them (Content-Length, or counted while
    streaming), so a huge upload never fills the memory."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                return await _send_json(send, 400, {"error": "bad Content-Length header"})
            if too_big:
                return await _send_json(send, 413, self._message(int(length)))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, self._message(size))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self, size: int) -> dict[str, str]:
        return {"error": f"request body of {size / 2**20:.1f} MiB is over the limit of {self.limit / 2**20:.1f} MiB "
                         "(--max-body-mb); send fewer or smaller inputs"}


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _LogMiddleware:
    """One line per request: method, path, status, milliseconds, number of inputs."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            n = (scope.get("state") or {}).get("inputs")
            client = scope.get("client") or ("-", 0)
            LOG.info("%s %s %s %d %.1fms%s", client[0], scope["method"], scope["path"], status[0],
                     (time.perf_counter() - start) * 1e3, f" inputs={n}" if n is not None else "")


def app_from_env() -> Any:
    """The app factory uvicorn's worker processes call (``--workers N``): settings from :data:`CONFIG_ENV`."""
    _setup_logging()
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def _setup_logging() -> None:
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


def run_serve(config: ServeConfig) -> int:
    """Serve until interrupted. The model folder is checked here, before the port is bound, so a bad folder is a
    one-line error (exit 2) instead of a traceback from a worker."""
    import uvicorn

    from automl_ft.predict import Predictor

    Predictor(config.model_dir, provider=config.provider, threads=config.threads)  # fail fast on a bad folder
    _setup_logging()
    if config.workers == 1:
        uvicorn.run(create_app(config), host=config.host, port=config.port, access_log=False, log_level="warning")
    else:
        os.environ[CONFIG_ENV] = json.dumps(asdict(config))
        uvicorn.run("automl_ft.serve:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, access_log=False, log_level="warning")
    return 0
