"""Serving under load: ``presso serve`` against the HTTP servers a user would write without it.

Per model, the servers run side by side on 127.0.0.1, each started once and kept up:

- ``presso``: ``presso serve ARTIFACT`` (dynamic batching, its defaults);
- ``presso-b1``: ``presso serve ARTIFACT --max-batch 1`` (the same server, no batching);
- ``ort``: the naive peer (``_serve_peers.py --kind ort``): FastAPI calling
  ``onnxruntime.InferenceSession.run`` on the same model.onnx once per request (a text
  model tokenized per request by the artifact's tokenizer), uvicorn, one worker;
- ``st`` (MiniLM only): sentence-transformers' ONNX backend, ``SentenceTransformer(folder,
  backend="onnx").encode`` per request behind the same kind of endpoint (``--st-int8``: ST's
  own dynamic int8 export for this CPU instead of its fp32 ``onnx/model.onnx``). It runs
  under the peers' venv of text_pipelines.py (sentence-transformers 5.7 and optimum, which
  pin an older transformers than presso's), into which this script pip-installs presso's own
  FastAPI, starlette, pydantic, uvicorn, httptools and uvloop, at the versions presso's venv
  has (once; a ``serve-stack.json`` in the venv records them), so every server runs
  the same HTTP stack;
- ``noop`` (1 and 32 clients): the same stack answering a constant small JSON: the HTTP
  overhead at 1 client, and at 32 the most answers per second any server on this stack
  and machine could give;
- ``direct`` (1 client only): ``presso.load(artifact).predict`` of one input in this
  process, no HTTP.
- ``ceiling`` (32 clients only): ``presso.load(artifact).predict`` of 32 inputs per call in
  this process, split by length as ``presso serve`` splits a batch (its default
  ``max_padding``): the inputs per second a batching server could reach with no HTTP at
  all, which bounds what batching can give over the per-request peer on this CPU.

Every server gets the same ``--threads`` (ONNX Runtime's intra-op threads, torch's for ST,
OMP_NUM_THREADS; default: the cores). Models: ``minilm`` (the minilm example's int8
artifact, held-out stdlib sentences, one sentence per request) and ``digits`` (the digits
example's int8 artifact, one held-out row of 64 floats per request); with no
``--artifact-*`` each is built once by ``presso compress --example NAME --recipe int8`` and
cached under the presso cache folder (``bench-artifacts/``).

Load: C closed-loop clients (each sends its next request as soon as it has its answer),
C in ``--clients``, requests cycling through the inputs. For each C, each round, each server
in an order rotated by the round: ``--warmup`` s unmeasured, then ``--seconds / --rounds`` s
measured. Counted in the measured window are the requests that complete in it, so that
requests in flight at its edges neither inflate nor deflate it: req/s = completed 200
answers / window seconds, summed over rounds; p50 / p95 / p99 over the latencies of those
answers pooled over rounds; errors = non-200 answers, transport errors and requests over
``--timeout`` s, counted, never raised (after a transport error a client waits 50 ms and
reconnects).

The load generator is one asyncio loop (uvloop when installed) in this process, sharing the
machine's cores with the servers, so its CPU per request is what the servers lose. It
speaks HTTP/1.1 over raw asyncio streams, one keep-alive connection per client, requests
pre-encoded (``--client raw``, the default), because httpx costs the servers too much:
on the 2-core AMD EPYC this was written on (a training job running beside), against the
no-op server and presso serve on digits at 1 and 8 clients, raw streams took 47-67 us of
client CPU per request and ``--client httpx`` (one shared ``httpx.AsyncClient``,
``max_connections = max_keepalive_connections = C``) 860-1250 us, 15-20x as much; the
no-op's p50 at 1 client was 0.19 ms with raw streams and 1.05 ms with httpx. The JSON
has the client's CPU per request of every cell, and each table is followed by its median.

    python benchmarks/serve_load.py [--models minilm,digits] [--clients 1,8,32,128]
        [--servers presso,presso-b1,ort,st,noop,direct,ceiling] [--seconds 30] [--rounds 3]
        [--threads N] [--artifact-minilm DIR] [--artifact-digits DIR] [--st-int8]
        [--client raw|httpx] [--json results.json]

Each model prints a markdown table (CPU and threads in its header) and two check lines:
``1 client: presso serve p50 X ms vs direct predict Y ms + HTTP overhead Z ms = W ms
(ratio R)`` and ``32 clients: presso serve throughput / naive peer = Q x, p99 A ms vs B ms``.
A full run takes about 10 min per model. Run it on a quiet machine: the clients, the
servers and anything else running share the same cores. Every server started is stopped on
exit, Ctrl-C and errors included (SIGTERM, then SIGKILL after 15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from text_pipelines import (
    ONNX_PEERS,
    cpu_name,
    cpu_preset,
    default_artifact,
    default_threads,
    load_texts,
    peer_python,
    prepare_peer_models,
    worker_env,
)

import presso
from presso.cache import cache_root

PEERS = Path(__file__).resolve().parent / "_serve_peers.py"
MODELS = ("minilm", "digits")
SERVERS = ("presso", "presso-b1", "ort", "st", "noop", "direct", "ceiling")
CEILING_CLIENTS = 32  # the ceiling runs at this load level, batches of this many inputs
# What a request costs apart from load (1 client), and the bounds of any server (32):
# contenders that run at these client counts only.
ONLY_AT = {"noop": (1, CEILING_CLIENTS), "direct": (1,), "ceiling": (CEILING_CLIENTS,)}
IN_PROCESS = ("direct", "ceiling")
SERVE_STACK = ("fastapi", "starlette", "pydantic", "uvicorn", "httptools", "uvloop")
START_TIMEOUT_S = 300  # ST's imports take a while on a busy machine
STOP_TIMEOUT_S = 15
BACKOFF_S = 0.05  # after a transport error: a dead server is not hammered in a busy loop


def log(message: str) -> None:
    print(f"[serve_load] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the models


@dataclass
class Model:
    """One model's artifact and its inputs: a request body and a direct-predict input each."""

    name: str
    artifact: Path
    source: str
    bodies: list[bytes]
    direct_inputs: list[Any]


def default_digits_artifact() -> Path:
    """The digits example's int8 artifact, built once per presso version (as
    text_pipelines.default_artifact builds the minilm one)."""
    out = cache_root() / "bench-artifacts" / f"digits-int8-{presso.__version__}"
    if not (out / "report.json").is_file():
        log(f"building the digits int8 artifact in {out} (once)")
        cmd = [sys.executable, "-m", "presso", "compress", "--example", "digits", "--recipe", "int8"]
        subprocess.run([*cmd, "--out", str(out)], check=True)
    return out


def minilm_model(artifact: str | None) -> Model:
    """Held-out sentences of the minilm example, one per request."""
    texts, source = load_texts(None, None)
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    path = Path(artifact) if artifact else default_artifact()
    return Model("minilm", path, f"{len(texts)} {source}", bodies, [[t] for t in texts])


def digits_model(artifact: str | None) -> Model:
    """Held-out rows of the digits example (its own split), one row of 64 floats per request."""
    from presso.examples.digits import _split

    held_out = _split()[1]  # (N, 1, 8, 8) float32 pixels in [0, 1]
    bodies = [json.dumps({"inputs": [x.reshape(-1).tolist()]}).encode() for x in held_out]
    path = Path(artifact) if artifact else default_digits_artifact()
    source = f"{len(held_out)} held-out rows of scikit-learn's digits (the digits example's split)"
    return Model("digits", path, source, bodies, [held_out[i : i + 1] for i in range(len(held_out))])


# --------------------------------------------------------------------------- the servers


@dataclass
class Server:
    """One server process: how it starts, where it listens, what went wrong."""

    name: str
    label: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    url: str | None = None
    error: str | None = None
    first_answer: np.ndarray | None = None

    def launch(self, log_dir: Path) -> None:
        """Start it; its stderr goes to a file (a pipe nobody reads would block it)."""
        self.log_path = log_dir / f"{self.name}.log"
        with self.log_path.open("w") as stderr:
            self.process = subprocess.Popen(
                self.command,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
                preexec_fn=_die_with_parent(),
            )

    def wait_ready(self, probe: bytes) -> None:
        """Wait for the announced address and a 200 from /healthz, then check one answer;
        a failure is kept in ``error`` (the server is left out), never raised."""
        try:
            self.url = self._announced()
            self._healthy()
            self.first_answer = self._answer(probe)
        except RuntimeError as exc:
            self.error = f"{exc} (log: {self.log_path})"
            log(f"{self.label}: {self.error}\n{self.log_tail()}")

    def _announced(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.process is not None and self.log_path is not None
        while time.monotonic() < deadline:
            found = re.search(r"http://([\w.\-]+):(\d+)", self.log_path.read_text(errors="replace"))
            if found:
                return f"http://{found.group(1)}:{found.group(2)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with code {self.process.returncode} before listening")
            time.sleep(0.1)
        raise RuntimeError(f"announced no address in {START_TIMEOUT_S} s")

    def _healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"exited with code {self.process.returncode} while warming up")
            time.sleep(0.1)
        raise RuntimeError(f"/healthz was not 200 within {START_TIMEOUT_S} s")

    def _answer(self, probe: bytes) -> np.ndarray:
        """The outputs of one request: it must be 200 with one output row."""
        import httpx

        headers = {"content-type": "application/json"}
        answer = httpx.post(f"{self.url}/predict", content=probe, headers=headers, timeout=60)
        if answer.status_code != 200:
            raise RuntimeError(f"the first request got {answer.status_code}: {answer.text[:300]}")
        outputs = np.asarray(answer.json()["outputs"], dtype=np.float64)
        if len(outputs) != 1:
            raise RuntimeError(f"one input got {len(outputs)} output rows")
        return outputs

    def alive(self) -> bool:
        """Whether it still runs; if it died, why is kept in ``error``."""
        if self.process is not None and self.process.poll() is not None and not self.error:
            self.error = f"exited with code {self.process.returncode} during the run (log: {self.log_path})"
            log(f"{self.label}: {self.error}\n{self.log_tail()}")
        return self.error is None

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before exec (Linux): ask for SIGTERM when this script dies, even
    by SIGKILL, so that no server outlives a benchmark that could not clean up. prctl is
    looked up here, in the parent: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # not Linux: the finally and the SIGTERM handler remain
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_all(servers: list[Server]) -> None:
    """SIGTERM every server still running, then SIGKILL those not gone after the timeout."""
    running = [s.process for s in servers if s.process is not None and s.process.poll() is None]
    for p in running:
        p.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for p in running:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def peer_serve_stack(python: Path) -> dict[str, str]:
    """Install presso's HTTP stack, at presso's versions, into the peers' venv (once): the ST
    server then differs from the others by its model only. ONNX_PEERS are named again so that
    pip keeps their versions. Returns the versions."""
    wanted = {}
    for name in SERVE_STACK:
        try:
            wanted[name] = version(name)
        except PackageNotFoundError:  # uvloop has no Windows build: uvicorn falls back alike
            pass
    marker = python.parent.parent / "serve-stack.json"
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return wanted
    log(f"installing {', '.join(wanted)} into the peers' venv (once)")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *ONNX_PEERS, *(f"{k}=={v}" for k, v in wanted.items())], check=True)
    marker.write_text(json.dumps(wanted))
    return wanted


def make_servers(model: Model, names: list[str], args: argparse.Namespace) -> list[Server]:
    """The servers of ``names`` for ``model`` (ST for MiniLM only), not started yet."""
    from presso.serving.settings import ServeSettings

    env = worker_env(args.threads, peer=False)
    listen = ["--port", "0", "--threads", str(args.threads)]
    serve = [sys.executable, "-m", "presso", "serve", str(model.artifact), *listen]
    peer = [sys.executable, str(PEERS), *listen]
    specs = {
        "presso": (f"presso serve (max-batch {ServeSettings().max_batch})", serve),
        "presso-b1": ("presso serve --max-batch 1", [*serve, "--max-batch", "1"]),
        "ort": ("FastAPI + onnxruntime, naive", [*peer, "--kind", "ort", "--model", str(model.artifact)]),
        "noop": ("FastAPI no-op (HTTP overhead)", [*peer, "--kind", "noop"]),
    }
    servers = [Server(n, specs[n][0], specs[n][1], env) for n in names if n in specs]
    if "st" in names and model.name == "minilm":
        st = st_server(args)
        if st is not None:
            servers.insert(min(3, len(servers)), st)
    return servers


def st_server(args: argparse.Namespace) -> Server | None:
    """The ST server under the peers' venv, or None (with the reason logged) if that venv, its
    ST export or its HTTP stack cannot be made."""
    try:
        python = peer_python()
        preset = cpu_preset()
        folder = prepare_peer_models(python, preset)
        peer_serve_stack(python)
    except (subprocess.CalledProcessError, OSError, presso.PressoError) as exc:
        log(f"ST left out: the peers' venv is not usable ({exc})")
        return None
    command = [str(python), str(PEERS), "--kind", "st", "--model", str(folder), "--port", "0"]
    command += ["--threads", str(args.threads)] + (["--st-int8", preset] if args.st_int8 else [])
    label = f"FastAPI + ST onnx int8 ({preset})" if args.st_int8 else "FastAPI + ST onnx"
    return Server("st", label, command, worker_env(args.threads, peer=True))


def start_all(servers: list[Server], model: Model, log_dir: Path) -> None:
    """Start them all at once, then wait for each; compare each first answer with presso's."""
    for s in servers:
        log(f"starting {s.label}")
        s.launch(log_dir)
    for s in servers:
        s.wait_ready(model.bodies[0])
    ref = next((s.first_answer for s in servers if s.name == "presso" and s.first_answer is not None), None)
    for s in servers:
        if s.first_answer is None:
            continue
        diff = ""
        if ref is not None and s.name != "noop":
            same = s.first_answer.shape == ref.shape
            diff = (
                f", max |diff| to presso's {np.abs(s.first_answer - ref).max():.2g}"
                if same
                else ", shape differs"
            )
        log(f"{s.label}: ready at {s.url}, first answer {s.first_answer.shape}{diff}")


# ---------------------------------------------------------------------- the load generator


@dataclass
class Window:
    """What one measured cell saw: answers completed within its window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)  # s, of the 200 answers
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # every request of the cell, warm-up included
    client_cpu_s: float = 0.0  # this process's CPU over the whole cell
    cell_s: float = 0.0  # the whole cell: warm-up, window, the last answers


class RawConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams, (re)opened when needed."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        """Send a pre-encoded request, read the whole answer; its status."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(request)
            await self.writer.drain()
            head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
            length = _header(head, b"content-length")
            if length is not None:
                await self.reader.readexactly(int(length))
            elif _header(head, b"transfer-encoding") == b"chunked":
                await self._chunks()
            else:  # the body ends with the connection
                await self.reader.read()
                self.close()
            if _header(head, b"connection") == b"close":
                self.close()
            return int(head[9:12])
        except BaseException:
            self.close()
            raise

    async def _chunks(self) -> None:
        assert self.reader is not None
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await self.reader.readexactly(size + 2)
        await self.reader.readuntil(b"\r\n")  # no trailers: the empty line after the last chunk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a lower-cased response head."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return head[start : head.find(b"\r\n", start)].strip()


Send = Callable[[int, int], Awaitable[int]]  # (client, input) -> HTTP status


@asynccontextmanager
async def raw_sender(url: str, bodies: list[bytes], clients: int) -> AsyncIterator[Send]:
    """Each client its own connection; every request's bytes built before the clock starts."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    connections = [RawConnection(host, int(port)) for _ in range(clients)]

    async def send(client: int, i: int) -> int:
        return await connections[client].post(requests[i])

    try:
        yield send
    finally:
        for c in connections:
            c.close()


@asynccontextmanager
async def httpx_sender(url: str, bodies: list[bytes], clients: int) -> AsyncIterator[Send]:
    """One shared httpx.AsyncClient with a connection per client (the common way)."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:

        async def send(_: int, i: int) -> int:
            return (await client.post(f"{url}/predict", content=bodies[i], headers=headers)).status_code

        yield send


async def closed_loop(
    send: Send, clients: int, inputs: int, warmup: float, seconds: float, timeout: float
) -> Window:
    """``clients`` closed-loop clients for ``warmup + seconds``; the window is the last
    ``seconds``. A request is counted where it completes; those in flight at the end finish
    (within ``timeout``) uncounted."""
    start = time.perf_counter() + warmup
    end = start + seconds
    window, order = Window(seconds), itertools.count()
    cpu, began = time.process_time(), time.perf_counter()

    async def client(k: int) -> None:
        while (sent_at := time.perf_counter()) < end:
            outcome, failed = "", False
            try:
                async with asyncio.timeout(timeout):
                    status = await send(k, next(order) % inputs)
                outcome = "" if status == 200 else str(status)
            except TimeoutError:
                outcome, failed = "timeout", True
            except Exception as exc:  # a transport error is a result, not a crash
                outcome, failed = type(exc).__name__, True
            done = time.perf_counter()
            window.sent += 1
            if start <= done < end:
                if outcome:
                    window.errors[outcome] += 1
                else:
                    window.latencies.append(done - sent_at)
            if failed:
                await asyncio.sleep(BACKOFF_S)

    await asyncio.gather(*(client(k) for k in range(clients)))
    window.client_cpu_s = time.process_time() - cpu
    window.cell_s = time.perf_counter() - began
    return window


def http_window(
    server: Server, model: Model, clients: int, args: argparse.Namespace, seconds: float
) -> Window:
    """One measured cell of ``server`` at ``clients`` closed-loop clients."""
    sender = raw_sender if args.client == "raw" else httpx_sender
    assert server.url is not None

    async def run() -> Window:
        async with sender(server.url, model.bodies, clients) as send:
            return await closed_loop(send, clients, len(model.bodies), args.warmup, seconds, args.timeout)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed: less of the shared CPU goes to the clients."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def direct_window(predictor: Any, model: Model, warmup: float, seconds: float) -> Window:
    """``predict`` of one input at a time in this process, the same inputs in turn."""
    inputs = model.direct_inputs
    return timed_calls(lambda i: predictor.predict(inputs[i % len(inputs)]), 1, warmup, seconds)


def ceiling_window(predictor: Any, model: Model, warmup: float, seconds: float) -> Window:
    """``predict`` of :data:`CEILING_CLIENTS` inputs per call, as a full batch of the server
    runs; each input counts as one answer, with its call's latency."""
    from presso.serving.settings import ServeSettings

    n, padding = CEILING_CLIENTS, ServeSettings().max_padding
    inputs = model.direct_inputs
    calls = [_batch_of([inputs[(i + k) % len(inputs)] for k in range(n)]) for i in range(0, len(inputs), n)]
    return timed_calls(
        lambda i: predictor.predict(calls[i % len(calls)], batch_size=n, max_padding=padding),
        n,
        warmup,
        seconds,
    )


def timed_calls(call: Callable[[int], Any], answers: int, warmup: float, seconds: float) -> Window:
    """``call(0), call(1), ...`` for ``warmup`` s unmeasured then ``seconds`` s measured; each
    call counts ``answers`` answers, each with the call's latency."""
    start = time.perf_counter() + warmup
    end = start + seconds
    window = Window(seconds)
    for i in itertools.count():
        sent_at = time.perf_counter()
        if sent_at >= end:
            break
        call(i)
        done = time.perf_counter()
        window.sent += answers
        if start <= done < end:
            window.latencies.extend([done - sent_at] * answers)
    return window


def _batch_of(inputs: list[Any]) -> Any:
    """One call's input: texts as one list, arrays stacked on the first axis."""
    if isinstance(inputs[0], list):
        return [t for one in inputs for t in one]
    return np.concatenate(inputs)


# --------------------------------------------------------------------------- measuring


Cells = dict[tuple[str, int], list[Window]]


def measure(model: Model, servers: list[Server], names: list[str], args: argparse.Namespace) -> Cells:
    """For each client count, ``--rounds`` rounds, each running every contender in an order
    rotated by the round; ``seconds / rounds`` of load per cell."""
    by_name = {s.name: s for s in servers}
    direct = any(n in names and set(ONLY_AT[n]) & set(args.clients) for n in IN_PROCESS)
    predictor = presso.load(model.artifact, threads=args.threads) if direct else None
    seconds = args.seconds / args.rounds
    cells: Cells = {}
    for clients in args.clients:
        here = [n for n in names if clients in ONLY_AT.get(n, (clients,))]
        for r in range(args.rounds):
            k = r % max(1, len(here))
            for name in here[k:] + here[:k]:
                server = by_name.get(name)
                if server is not None and not server.alive():
                    continue
                if name == "ceiling":
                    window = ceiling_window(predictor, model, args.warmup, seconds)
                elif server is None:
                    window = direct_window(predictor, model, args.warmup, seconds)
                else:
                    window = http_window(server, model, clients, args, seconds)
                cells.setdefault((name, clients), []).append(window)
                log(
                    f"{model.name}, {clients} client(s), round {r + 1}/{args.rounds}, {name}: {_brief(window)}"
                )
    return cells


def _brief(w: Window) -> str:
    p50 = f"{np.median(w.latencies) * 1e3:.2f} ms" if w.latencies else "n/a"
    return f"{len(w.latencies) / w.seconds:.1f} req/s, p50 {p50}, {sum(w.errors.values())} error(s)"


@dataclass
class Row:
    """One (server, clients) cell, pooled over its rounds."""

    server: str
    label: str
    clients: int
    answers: int
    seconds: float
    req_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    error_kinds: dict[str, int]
    client_cpu_us_per_request: float | None
    client_cpu_share: float | None  # of one core, over the cells' whole time
    rounds_req_per_s: list[float]
    failed: bool  # the server failed during the run: its figures are partial


def summarise(cells: Cells, labels: dict[str, str], failed: set[str]) -> list[Row]:
    rows = []
    for (name, clients), windows in cells.items():
        lat = np.array([x for w in windows for x in w.latencies]) * 1e3
        pct = [float(np.percentile(lat, q)) if len(lat) else None for q in (50, 95, 99)]
        seconds = sum(w.seconds for w in windows)
        errors = sum((w.errors for w in windows), Counter())
        sent, cpu = sum(w.sent for w in windows), sum(w.client_cpu_s for w in windows)
        http = name not in IN_PROCESS and sent > 0
        rows.append(
            Row(
                name,
                labels[name],
                clients,
                len(lat),
                seconds,
                len(lat) / seconds,
                *pct,
                errors=sum(errors.values()),
                error_kinds=dict(errors),
                client_cpu_us_per_request=cpu / sent * 1e6 if http else None,
                client_cpu_share=cpu / sum(w.cell_s for w in windows) if http else None,
                rounds_req_per_s=[len(w.latencies) / w.seconds for w in windows],
                failed=name in failed,
            )
        )
    return sorted(rows, key=lambda r: (r.clients, SERVERS.index(r.server)))


# ---------------------------------------------------------------------------- reporting


def print_table(rows: list[Row], header: str) -> None:
    print(f"\n{header}\n")
    print("| server | clients | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r.error_kinds.items()))
        errors = f"{r.errors} ({kinds})" if r.errors else "0"
        print(
            f"| {r.label} | {r.clients} | {r.req_per_s:.1f} | {_ms(r.p50_ms)} | {_ms(r.p95_ms)} "
            f"| {_ms(r.p99_ms)} | {errors} |"
        )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def check_lines(rows: list[Row]) -> list[str]:
    """The issue's two done-when figures, where their cells were measured."""
    cell = {(r.server, r.clients): r for r in rows if r.answers and not r.failed}
    lines = []
    p, d, z = cell.get(("presso", 1)), cell.get(("direct", 1)), cell.get(("noop", 1))
    if p and d and z and p.p50_ms and d.p50_ms is not None and z.p50_ms is not None:
        w = d.p50_ms + z.p50_ms
        lines.append(
            f"1 client: presso serve p50 {p.p50_ms:.2f} ms vs direct predict {d.p50_ms:.2f} ms "
            f"+ HTTP overhead {z.p50_ms:.2f} ms = {w:.2f} ms (ratio {p.p50_ms / w:.2f})"
        )
    else:
        lines.append("1 client: not measured (needs presso, direct and noop at 1 client)")
    p, o = cell.get(("presso", 32)), cell.get(("ort", 32))
    if p and o:
        lines.append(
            f"32 clients: presso serve throughput / naive peer = {p.req_per_s / o.req_per_s:.2f} x, "
            f"p99 {_ms(p.p99_ms)} ms vs {_ms(o.p99_ms)} ms"
        )
    else:
        lines.append("32 clients: not measured (needs presso and ort at 32 clients)")
    for bound, what in (
        ("ceiling", f"the model alone, {CEILING_CLIENTS} inputs per call in-process"),
        ("noop", "the HTTP stack alone (no-op)"),
    ):
        c = cell.get((bound, CEILING_CLIENTS))
        if p and o and c:
            lines.append(
                f"Ceiling at {CEILING_CLIENTS} clients, {what}: {c.req_per_s:.0f} /s = {c.req_per_s / o.req_per_s:.2f} x "
                f"the naive peer; presso serve reaches {100 * p.req_per_s / c.req_per_s:.0f}% of it"
            )
    return lines


def client_cpu_line(rows: list[Row], client: str) -> str:
    """What the load generator took from the cores the servers run on."""
    http = [r for r in rows if r.client_cpu_us_per_request is not None and r.client_cpu_share is not None]
    if not http:
        return "Load generator: no HTTP cells."
    per = [r.client_cpu_us_per_request for r in http]
    busiest = max(http, key=lambda r: r.client_cpu_share or 0.0)
    return (
        f"Load generator ({client}): {np.median(per):.0f} us of CPU per request (median over cells, "
        f"{min(per):.0f}-{max(per):.0f}); at most {100 * (busiest.client_cpu_share or 0):.0f}% of one core "
        f"({busiest.label}, {busiest.clients} clients), taken from the cores the servers use."
    )


# -------------------------------------------------------------------------------- main


def csv(choices: tuple[str, ...] | None, kind: type = str) -> Callable[[str], list]:
    """An argparse type: a comma-separated list, checked against ``choices``."""

    def parse(text: str) -> list:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        bad = [x for x in items if choices is not None and x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(choices or ())}")
        return items

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=csv(MODELS), default=list(MODELS))
    parser.add_argument("--clients", type=csv(None, int), default=[1, 8, 32, 128])
    parser.add_argument("--servers", type=csv(SERVERS), default=list(SERVERS))
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per cell, all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell")
    parser.add_argument(
        "--threads", type=int, default=default_threads(), help="per server (default: the cores)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="a request taking longer is an error")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator's HTTP")
    parser.add_argument("--artifact-minilm", help="a minilm artifact (default: built once and cached)")
    parser.add_argument("--artifact-digits", help="a digits artifact (default: built once and cached)")
    parser.add_argument("--st-int8", action="store_true", help="ST serves its own int8 export, not fp32")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.threads < 1 or min(args.clients) < 1:
        parser.error("--rounds, --threads and --clients must be >= 1, --seconds > 0")
    for option in ("artifact_minilm", "artifact_digits"):
        path = getattr(args, option)
        if path and not (Path(path) / "model.onnx").is_file():
            parser.error(f"--{option.replace('_', '-')} {path}: no model.onnx in it")
    return args


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start the model's servers, measure, stop them (whatever happens); print its table."""
    model = minilm_model(args.artifact_minilm) if name == "minilm" else digits_model(args.artifact_digits)
    names = [n for n in args.servers if n != "st" or name == "minilm"]
    servers = make_servers(model, names, args)
    logs = Path(tempfile.mkdtemp(prefix=f"presso-serveload-{name}-"))
    try:
        start_all(servers, model, logs)
        up = [n for n in names if n in IN_PROCESS or any(s.name == n and not s.error for s in servers)]
        cells = measure(model, servers, up, args)
    finally:
        stop_all(servers)
        if not any(s.error for s in servers):  # a failed server's log is kept for its message
            shutil.rmtree(logs, ignore_errors=True)
    labels = {s.name: s.label + (" (failed, see below)" if s.error else "") for s in servers}
    labels["direct"] = "presso.load().predict, in-process"
    labels["ceiling"] = f"presso.load().predict, in-process, {CEILING_CLIENTS} inputs per call (the ceiling)"
    rows = summarise(cells, labels, {s.name for s in servers if s.error})
    header = (
        f"{name} ({model.artifact}): {model.source}, one per request; closed-loop clients, "
        f"{args.seconds:g} s per cell in {args.rounds} interleaved round(s); {args.threads} thread(s) "
        f"per server; {cpu_name()}"
    )
    print_table(rows, header)
    checks = check_lines(rows)
    for line in [*checks, client_cpu_line(rows, args.client)]:
        print(f"\n{line}")
    for s in servers:
        if s.error:
            print(f"\n- {s.label} left out: {s.error}")
    return {
        "artifact": str(model.artifact),
        "inputs": model.source,
        "servers": {s.name: {"label": s.label, "command": s.command, "error": s.error} for s in servers},
        "rows": [asdict(r) for r in rows],
        "checks": checks,
        "peer_requirements": list(ONNX_PEERS) if any(s.name == "st" for s in servers) else None,
    }


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # to the finally that stops the servers
    results: dict[str, Any] = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "client": args.client,
        "versions": {n: version(n) for n in ("presso", "onnxruntime", "transformers", *SERVE_STACK[:4])},
        "models": {},
    }
    for name in args.models:
        results["models"][name] = run_model(name, args)
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every server started was stopped")
    except presso.PressoError as e:
        sys.exit(f"error: {e}")
