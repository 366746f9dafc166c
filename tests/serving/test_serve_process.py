"""``presso serve`` as a user runs it: the real CLI in a fresh process (one, or a supervisor
and its workers), stopped with SIGTERM as a process manager stops it; bad input refused in
one line with exit code 2."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import artifacts_fixture, rows, start_cli_server, wait_ready  # noqa: F401 (the artifacts fixture)

import presso

EXIT_S = 30  # a server told to stop exits within this


def _post(url: str, x: np.ndarray) -> httpx.Response:
    """``x`` predicted on a connection of its own (``Connection: close``)."""
    return httpx.post(
        f"{url}/predict", json={"inputs": x.tolist()}, headers={"Connection": "close"}, timeout=60
    )


def _workers(pid: int) -> list[int]:
    """The uvicorn worker processes of supervisor ``pid`` (multiprocessing spawn children; not
    its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (its parent, gone, never reaped it)


@contextlib.contextmanager
def cli_server(*args: str):
    """``presso serve ARGS`` in a fresh process: (process, base URL). Killed at the end if it
    still runs (a test that failed half-way), its workers first."""
    proc, url = start_cli_server(*args)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            workers = _workers(proc.pid) if Path("/proc").is_dir() else []
            proc.kill()
            for pid in workers:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=EXIT_S)


def _stderr(proc: subprocess.Popen) -> str:
    """What the server wrote after its first line, once it has exited."""
    assert proc.stderr is not None
    return proc.stderr.read()[-3000:]


def _batches(url: str) -> float:
    """How many batches the server has run (its Prometheus metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return next(s.value for s in families["presso_batch_requests"].samples if s.name.endswith("_count"))


def _answered(url: str) -> float:
    """The 200s the server (the worker that takes this connection) has answered."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=60).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["presso_requests"].samples
        if s.name.endswith("_total") and s.labels.get("status") == "200"
    )


async def _pair_in_one_batch(url: str, reference) -> int:
    """Sends pairs of requests at once (two kept-alive connections, one event loop) until a
    pair runs as one batch, checking every answer: the pairs sent, 0 if none ran as one."""
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(100):
            before = _batches(url)
            xs = [rows(2, seed=2 * i), rows(1, seed=2 * i + 1)]
            answers = await asyncio.gather(
                *(client.post(f"{url}/predict", json={"inputs": x.tolist()}) for x in xs)
            )
            for x, answer in zip(xs, answers, strict=True):
                assert answer.status_code == 200, answer.text
                np.testing.assert_allclose(
                    answer.json()["outputs"], reference.predict(x), rtol=1e-6, atol=1e-6
                )
            if _batches(url) - before == 1:
                return i + 1
    return 0


@pytest.mark.e2e
def test_sigterm_answers_the_request_in_flight_then_exits_0(artifacts):
    """A request waiting in the batcher when SIGTERM arrives is answered, with its own rows;
    the process then exits 0 and the port is closed."""
    folder = artifacts["classification"]
    reference = presso.load(folder)
    x = rows(3, seed=99)
    with cli_server(str(folder), "--max-wait-ms", "3000", "--threads", "1") as (proc, url):
        wait_ready(url)
        # Once a batch held two requests, the next one waits (up to --max-wait-ms, 3 s) for
        # two: a lone request sent now stays queued in the batcher.
        pairs = asyncio.run(_pair_in_one_batch(url, reference))
        assert pairs, "no two requests ever ran as one batch"
        print(f"a pair ran as one batch after {pairs} pair(s)")
        with ThreadPoolExecutor(1) as pool:
            lone = pool.submit(_post, url, x)  # a connection of its own
            time.sleep(0.5)  # accepted, read and queued by now
            assert not lone.done(), lone.result().text  # it waits for company, in flight
            proc.send_signal(signal.SIGTERM)
            answer = lone.result(timeout=EXIT_S)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], reference.predict(x), rtol=1e-6, atol=1e-6)
        code = proc.wait(timeout=EXIT_S)
        assert code == 0, _stderr(proc)
        with pytest.raises(httpx.ConnectError):
            _post(url, x)


@pytest.mark.e2e
def test_sigterm_waits_for_a_body_still_uploading(artifacts):
    """A request whose headers arrived but whose body is still on its way when SIGTERM comes
    was accepted: the server reads the rest and answers it before it exits 0."""
    folder = artifacts["classification"]
    x = rows(4, seed=7)
    body = json.dumps({"inputs": x.tolist()}).encode()
    with cli_server(str(folder), "--threads", "1") as (proc, url):
        wait_ready(url)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=EXIT_S) as conn:
            head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            time.sleep(0.5)  # the server has read the headers and waits for the body
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # it has stopped listening; this connection is still open
            conn.sendall(body[10:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 200"), answer[:500]
        outputs = json.loads(rest.split(b"\r\n\r\n", 1)[1])["outputs"]
        np.testing.assert_allclose(outputs, presso.load(folder).predict(x), rtol=1e-6, atol=1e-6)
        code = proc.wait(timeout=EXIT_S)
        assert code == 0, _stderr(proc)


@pytest.mark.e2e
def test_sigterm_under_load_answers_every_accepted_request(artifacts):
    """8 clients sending on fresh connections, back to back, while SIGTERM arrives: every
    answer is a 200 with the client's own rows; the only failures are connections refused
    once the server stopped listening, never an error, a reset or a response cut short."""
    folder = artifacts["classification"]
    reference = presso.load(folder)
    inputs = [rows(1 + i % 3, seed=100 + i) for i in range(16)]
    wants = [reference.predict(x) for x in inputs]
    lock, stop = threading.Lock(), threading.Event()
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            x, want = inputs[i % len(inputs)], wants[i % len(inputs)]
            i += 1
            try:
                got = _post(url, x)
            except httpx.ConnectError:  # not accepted: the port is closed
                with lock:
                    outcomes["refused"] += 1
                time.sleep(0.01)
                continue
            except httpx.HTTPError as exc:  # accepted (the request went out), then lost
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc} ({time.monotonic() - stopped_at:+.3f}s)")
                continue
            ok = got.status_code == 200 and np.allclose(got.json()["outputs"], want, rtol=1e-6, atol=1e-6)
            with lock:
                outcomes["ok" if ok else "wrong"] += 1
                if not ok:
                    problems.append(f"{got.status_code}: {got.text[:200]}")

    stopped_at = float("inf")
    with cli_server(str(folder), "--threads", "1") as (proc, url):
        wait_ready(url)
        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 15
        while outcomes["ok"] < 40 and time.monotonic() < deadline:  # the load is on
            time.sleep(0.05)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=EXIT_S)
        finally:
            time.sleep(0.3)  # the clients find the port closed
            stop.set()
            for t in clients:
                t.join(timeout=60)
        assert code == 0, _stderr(proc)
    assert not problems, (
        f"{len(problems)} request(s) lost or wrong around SIGTERM (times relative to it), "
        f"{dict(outcomes)}: {problems[:10]}"
    )
    assert outcomes["ok"] >= 10 and outcomes["refused"] > 0, dict(outcomes)


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_two_workers_answer_and_all_stop_on_sigterm(artifacts):
    folder = artifacts["classification"]
    reference = presso.load(folder)
    with cli_server(str(folder), "--workers", "2", "--threads", "1") as (proc, url):
        wait_ready(url)
        deadline = time.monotonic() + 60
        while len(_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        inputs = [rows(1 + i % 4, seed=200 + i) for i in range(20)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda x: _post(url, x), inputs))
        for x, answer in zip(inputs, answers, strict=True):
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["outputs"], reference.predict(x), rtol=1e-6, atol=1e-6)
        # Each worker counts its own requests: fresh connections reach either (not asserted,
        # the kernel may hand them all to one).
        seen = {_answered(url) for _ in range(8)}
        print(f"requests answered, per /metrics of whichever worker replied: {sorted(seen)}")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=EXIT_S)
        assert code == 0, _stderr(proc)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the server"
        with pytest.raises(httpx.ConnectError):
            _post(url, inputs[0])


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "presso", "serve", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def busy_port():
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _bad_folder(tmp_path: Path, artifacts, what: str) -> Path:
    folder = tmp_path / what
    folder.mkdir()
    if what == "empty":
        return folder
    good = artifacts["classification"]
    if what == "corrupt-model":
        (folder / "model.onnx").write_bytes(b"not an onnx model")
        (folder / "report.json").write_text((good / "report.json").read_text())
    elif what == "corrupt-report":
        (folder / "model.onnx").write_bytes((good / "model.onnx").read_bytes())
        (folder / "report.json").write_text("{not json")
    return folder


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "neither an artifact"),
        ("empty", "not a presso artifact"),
        ("corrupt-onnx-file", "not a valid ONNX model"),
        ("corrupt-model", "model.onnx"),
        ("corrupt-report", "report.json"),
        ("--max-batch 0", "--max-batch"),
        ("--workers 0", "--workers"),
        ("--port 70000", "--port"),
        ("busy port", "Cannot listen"),
        ("--threads 0", "--threads"),
        ("--max-wait-ms -1", "--max-wait-ms"),
        ("--queue-limit 0", "--queue-limit"),
        ("--max-body-mb 0", "--max-body-mb"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, words, artifacts, tmp_path, busy_port):
    good = str(artifacts["classification"])
    if case == "missing":
        args = [str(tmp_path / "no-such-artifact"), "--port", "0"]
    elif case == "corrupt-onnx-file":
        (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
        args = [str(tmp_path / "model.onnx"), "--port", "0"]
    elif case in ("empty", "corrupt-model", "corrupt-report"):
        args = [str(_bad_folder(tmp_path, artifacts, case)), "--port", "0"]
    elif case == "busy port":
        args = [good, "--port", str(busy_port)]
    else:
        args = [good, "--port", "0", *case.split()]
        if case.startswith("--port"):
            args = [good, *case.split()]
    done = _serve(*args)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("presso: error: "), done.stderr[-3000:]
    assert words in lines[0], lines[0]


def test_help_names_the_routes_and_options():
    done = _serve("--help")
    assert done.returncode == 0, done.stderr
    for words in ("/predict", "--max-batch", "--max-wait-ms", "--queue-limit", "SIGTERM"):
        assert words in done.stdout, words
