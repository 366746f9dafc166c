"""The HTTP service around one artifact: ``POST /predict`` through the micro-batcher,
``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /`` (what the artifact is and what
was measured) and the OpenAPI docs (``/docs``).

FastAPI over Starlette, served by uvicorn: the OpenAPI schema and docs come from the
route declarations, and the ASGI stack leaves the one thing that decides latency, the
batching, to us. The request body is read and checked by hand rather than by a FastAPI
body model: a size limit before reading it all (413), one-line reasons instead of
pydantic's error lists (422), and no validation pass over large arrays twice.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from presso.serving.batcher import Closed, MicroBatcher, QueueFull
from presso.serving.metrics import ServerMetrics
from presso.serving.payload import BadInput, ModelSpec, Rows, parse_inputs, response_body
from presso.serving.settings import ServeSettings
from presso.serving.summary import artifact_summary
from presso.version import __version__

log = logging.getLogger("presso.serve")


class PredictRequest(BaseModel):
    """The body of ``POST /predict``."""

    inputs: str | list[str] | list[Any] | dict[str, list[Any]] = Field(
        description="A text model: one string or a list of strings (tokenized by the server). "
        "A single-input model: one row or a list of rows (nested lists of numbers). Any "
        "model: an object of named arrays, one per model input, rows on the first axis."
    )


class PredictResponse(BaseModel):
    """The answer of ``POST /predict``: one entry per input row, in the order sent."""

    task: str | None = Field(description="the artifact's task")
    outputs: list[Any] = Field(
        description="the model's output per row: the embedding (embedding), the forecast "
        "(forecast), the value(s) (regression), the logits or probabilities (classification)"
    )
    labels: list[int] | None = Field(default=None, description="classification: the most probable class")
    probabilities: list[list[float]] | None = Field(
        default=None, description="classification: class probabilities (softmax of logits)"
    )
    scores: list[float | None] | None = Field(
        default=None, description="anomaly and ranking: one score per row (higher: more anomalous / relevant)"
    )


class ErrorBody(BaseModel):
    error: str = Field(description="one line: what is wrong and how to fix it")


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "too many rows or too large a body"},
    422: {"model": ErrorBody, "description": "inputs the model cannot take"},
    429: {"model": ErrorBody, "description": "the queue is full: retry after Retry-After seconds"},
    503: {"model": ErrorBody, "description": "starting or shutting down"},
}


class Service:
    """One served model: its predictor, batcher, metrics and state (starting, ready,
    draining); the routes of :func:`serve_app` call it."""

    def __init__(self, artifact: Path, predictor: Any, settings: ServeSettings):
        self.predictor, self.settings = predictor, settings
        self.spec = ModelSpec.of(predictor)
        self.metrics = ServerMetrics()
        self.summary = artifact_summary(artifact, predictor, settings)
        self.status = "starting"
        self.batcher: MicroBatcher | None = None

    def run(self, rows: Rows) -> np.ndarray:
        return predict_rows(self.predictor, rows, self.settings)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        warm_up(self.predictor, self.spec)
        # The ~300k objects of the loaded libraries (torch, onnx, ...) live as long as the
        # server: frozen, the collector's full passes stop walking them, passes that took
        # 40-70 ms on a 2-core server and surfaced as the p99 of requests under load.
        gc.collect()
        gc.freeze()
        s = self.settings
        batcher = MicroBatcher(
            self.run, s.max_batch, s.max_wait_ms, s.queue_limit, on_batch=self.metrics.batch
        )
        self.metrics.watch_queue(lambda: batcher.depth)
        batcher.start()
        self.batcher, self.status = batcher, "ready"
        try:
            yield
        finally:
            self.status = "draining"
            await batcher.close()  # uvicorn has let the requests in flight finish first

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        rows = 0
        try:
            if self.batcher is None or self.status != "ready":
                raise Closed()
            parsed = parse_inputs(
                await read_inputs(request, self.settings), self.spec, self.settings.max_rows
            )
            rows = parsed.n
            out = await self.batcher.submit(parsed)
            answer: Response = Response(
                response_body(self.spec.task, out, parsed), media_type="application/json"
            )
        except BadInput as exc:
            answer = _error(exc.status, str(exc))
        except QueueFull:
            answer = _error(429, "The server's queue is full; retry shortly.", {"Retry-After": "1"})
        except Closed:
            answer = _error(503, "The server is not ready (starting or shutting down).", {"Retry-After": "1"})
        except Exception as exc:  # a bug of ours: logged in full, answered in one line
            log.exception("predict failed")
            answer = _error(500, f"Internal error: {type(exc).__name__}")
        ok = answer.status_code == 200
        self.metrics.answered(answer.status_code, time.perf_counter() - started, rows if ok else 0)
        return answer


def serve_app(
    artifact: str | Path, settings: ServeSettings | None = None, predictor: Any = None, **options: Any
) -> FastAPI:
    """A FastAPI app serving ``artifact`` (a folder from ``presso compress`` or an .onnx
    file): mount it in your own app or run it with any ASGI server. ``options`` are
    :class:`ServeSettings` fields (``max_batch=64, ...``)."""
    settings = settings or ServeSettings(**options)
    if predictor is None:
        from presso.export.predictor import load

        predictor = load(artifact, threads=settings.threads)
    service = Service(Path(artifact), predictor, settings)
    app = FastAPI(
        title=f"presso: {service.summary.get('model') or Path(artifact).name}",
        description='A compressed model served by presso. POST /predict with {"inputs": ...}.',
        version=__version__,
        lifespan=service.lifespan,
    )

    @app.get("/", summary="What this artifact is and what was measured")
    async def root() -> dict[str, Any]:
        return service.summary

    @app.get("/healthz", summary="200 once the model is loaded and warm; 503 before and while draining")
    async def healthz() -> JSONResponse:
        ready = service.status == "ready"
        return JSONResponse({"status": service.status}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post(
        "/predict",
        summary="Predict for one row or many",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        return await service.predict(request)

    app.state.presso = service
    return app


async def read_inputs(request: Request, settings: ServeSettings) -> Any:
    """The request's ``inputs``, the body read up to the size limit."""
    limit = settings.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BadInput(
            413, f"The body is {int(length)} bytes; the server takes at most {limit} (--max-body-mb)."
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(413, f"The body is over {limit} bytes (--max-body-mb).")
        chunks.append(chunk)
    try:
        payload = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise BadInput(422, 'The body is not JSON: send {"inputs": ...}.') from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise BadInput(422, 'The body must be a JSON object with "inputs": {"inputs": ...}.')
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise BadInput(422, f'Unknown field(s) {extra}: the body takes "inputs" only.')
    return payload["inputs"]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def predict_rows(predictor: Any, rows: Rows, settings: ServeSettings) -> np.ndarray:
    """One run of the model on a batch's merged rows."""
    inputs: Any = rows.texts if rows.texts is not None else rows.arrays
    return predictor.predict(inputs, batch_size=settings.max_batch, max_padding=settings.max_padding)


def warm_up(predictor: Any, spec: ModelSpec) -> None:
    """One prediction before the server says it is ready: ONNX Runtime's first run
    allocates and plans, and a client should not pay for it."""
    try:
        if spec.text:
            predictor.predict(["presso warms up the model."])
        else:
            predictor.predict(
                {s.name: np.zeros([d or 1 for d in s.shape], s.dtype or np.float32) for s in spec.inputs}
            )
    except Exception:  # a model that rejects zeros still serves real inputs
        log.warning("warm-up prediction failed; serving anyway", exc_info=True)
