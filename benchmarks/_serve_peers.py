"""The peer servers of benchmarks/serve_load.py: what a user would write around a model
without presso, on the same HTTP stack as ``presso serve`` (FastAPI + uvicorn, one worker).

    python _serve_peers.py --kind ort|st|noop --model PATH --port 0 --threads N
        [--host 127.0.0.1] [--st-int8 PRESET]

- ``ort``: an artifact's model.onnx in one ``onnxruntime.InferenceSession`` (intra-op
  threads ``--threads``), ``session.run`` once per request. A text model's request is
  tokenized per request by the artifact's tokenizer (``transformers.AutoTokenizer``,
  ``padding=True, truncation=True, return_tensors="np"``) and fed the inputs the session
  asks for; rows of numbers are reshaped to the session's input shape.
- ``st``: sentence-transformers' ONNX backend, ``SentenceTransformer(PATH, backend="onnx")``
  and ``encode`` per request (``--st-int8 PRESET``: ST's own dynamic int8 export for that
  CPU preset instead of its fp32 ``onnx/model.onnx``). It runs under the peers' venv
  (sentence-transformers 5.7; see text_pipelines.py), which has no presso.
- ``noop``: the same stack answering a constant small JSON after reading the body: what
  HTTP, JSON and the event loop cost a request, without a model.

The model endpoints are plain ``def`` functions with a pydantic body, as FastAPI's docs
advise for blocking calls: FastAPI runs them in its thread pool (40 threads), so under
load several ``session.run`` / ``encode`` calls run at once, each with its own intra-op
threads. That is the point of comparison: no batching, no queue limit.

Like ``presso serve``, the model is loaded and run once before the socket is bound; then
the first line on stderr is ``peer KIND: serving on http://HOST:PORT``, and ``GET /healthz``
answers 200. SIGINT / SIGTERM stop it (uvicorn's own handling). Only the standard library
is imported at the top: the peers' venv lacks what the other kinds need, and vice versa.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint's body model from
# its annotation, and a model class made inside a function is no name it could resolve.
import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOOP_BODY = b'{"task":null,"outputs":[[0.0]]}'
WARM_TEXT = "a sentence that warms the model up."
GRACE_SECONDS = 5


def ort_runner(artifact: Path, threads: int) -> Callable[[list], Any]:
    """inputs (texts or rows) -> the session's first output, one run per call."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    onnx = artifact / "model.onnx" if artifact.is_dir() else artifact
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if (artifact / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(artifact / "tokenizer"))
        names = [i.name for i in inputs]

        def run_texts(texts: list) -> Any:
            enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
            return session.run(None, {n: enc[n] for n in names})[0]

        return run_texts
    first = inputs[0]
    row = [d if isinstance(d, int) and d > 0 else -1 for d in first.shape[1:]]
    dtype = np.float64 if first.type == "tensor(double)" else np.float32

    def run_rows(rows: list) -> Any:
        return session.run(None, {first.name: np.asarray(rows, dtype=dtype).reshape(-1, *row)})[0]

    return run_rows


def st_runner(folder: Path, threads: int, int8_preset: str | None) -> Callable[[list], Any]:
    """texts -> ST's embeddings (pooled and normalised by ST's modules), one encode per call.
    Built by text_pipelines' own helper, so both benchmarks pin ST's threads the same way."""
    import _text_peers

    kind = "st-int8" if int8_preset else "st-onnx"
    model = _text_peers._sentence_transformer(kind, folder, threads, int8_preset or "")
    return lambda texts: model.encode(texts, convert_to_numpy=True, show_progress_bar=False)


def model_app(run: Callable[[list], Any], text: bool) -> Any:
    """The endpoint a user would write: a body model, the model call, the outputs as lists."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Query(BaseModel):
        inputs: list[str] | list[list[float]]

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(query: Query):  # no return type, as users write it: FastAPI encodes the dict
        return {"task": "embedding" if text else None, "outputs": run(query.inputs).tolist()}

    return app


def noop_app() -> Any:
    """The stack's own cost: read the body, answer a constant."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(NOOP_BODY, media_type="application/json")

    return app


def build_app(kind: str, model: Path | None, threads: int, int8_preset: str | None) -> Any:
    """The app of ``kind``, its model loaded and run once (a warm server, like presso's)."""
    if kind == "noop":
        return noop_app()
    if model is None:
        raise SystemExit(f"--kind {kind} needs --model")
    if kind == "st":
        run, text = st_runner(model, threads, int8_preset), True
        run([WARM_TEXT])
    else:
        run = ort_runner(model, threads)
        text = (model / "tokenizer").is_dir()
        run([WARM_TEXT] if text else [_zeros_row(model)])
    return model_app(run, text)


def _zeros_row(artifact: Path) -> list[float]:
    """A row of zeros of the model's row size (warm-up of a model that takes numbers)."""
    import math

    import onnxruntime as ort

    onnx = artifact / "model.onnx" if artifact.is_dir() else artifact
    shape = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    return [0.0] * math.prod(d if isinstance(d, int) and d > 0 else 1 for d in shape[1:])


def serve(app: Any, kind: str, host: str, port: int) -> None:
    """uvicorn on a socket bound here, its address announced first (what serve_load reads)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"peer {kind}: serving on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_SECONDS
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it stopped on, after a clean shutdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ort", "st", "noop"), required=True)
    parser.add_argument("--model", type=Path, help="ort: an artifact folder or .onnx; st: an ST model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (and torch's, for st)")
    parser.add_argument("--st-int8", metavar="PRESET", help="st: ST's dynamic int8 export for PRESET")
    args = parser.parse_args()
    serve(build_app(args.kind, args.model, args.threads, args.st_int8), args.kind, args.host, args.port)


if __name__ == "__main__":
    main()
