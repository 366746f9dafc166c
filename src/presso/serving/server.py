"""Running the app under uvicorn: one process, or ``workers`` processes on one port.

uvicorn owns the signals: on SIGINT or SIGTERM it stops accepting connections, lets the
requests in flight finish (the batcher answers every queued one), runs the app's
shutdown, and returns; :func:`serve` then returns normally.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import types
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.runtime.session import default_threads
from presso.serving.settings import ServeSettings

# A worker process finds what to serve here (uvicorn starts workers from an import string).
WORKER_ENV = "PRESSO_SERVE_WORKER"
GRACE_SECONDS = 30  # in-flight requests get this long to finish after SIGTERM


def serve(
    artifact: str | Path, settings: ServeSettings | None = None, quiet: bool = False, **options: Any
) -> None:
    """Serve ``artifact`` over HTTP until SIGINT / SIGTERM (blocks). ``options`` are
    :class:`ServeSettings` fields (``port=8080, max_batch=64, ...``)."""
    from presso.export.predictor import load
    from presso.serving.app import serve_app

    settings = settings or ServeSettings(**options)
    if settings.workers > 1 and settings.threads is None:  # the cores shared among the workers
        settings = settings.model_copy(update={"threads": max(1, default_threads() // settings.workers)})
    predictor = load(artifact, threads=settings.threads)  # a bad artifact fails here, in one line
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    _log_to_stderr(quiet)
    logging.getLogger("presso.serve").info(
        "presso: serving %s on http://%s:%s (POST /predict, docs at /docs); Ctrl-C to stop",
        artifact,
        host,
        port,
    )
    if settings.workers == 1:
        import uvicorn

        app = serve_app(artifact, settings, predictor=predictor)
        server = uvicorn.Server(_config(app, settings))
        server.shutdown = types.MethodType(_draining_shutdown, server)  # type: ignore[method-assign]
        server.run(sockets=[sock])
        return
    del predictor
    os.environ[WORKER_ENV] = json.dumps({"artifact": str(artifact), "settings": settings.model_dump()})
    from uvicorn.supervisors import Multiprocess

    Multiprocess(_config("presso.serving.server:worker_app", settings), sockets=[sock]).run()


async def _draining_shutdown(self, sockets=None) -> None:
    """uvicorn's shutdown, first answering the connections a client had already opened.

    uvicorn closes the listening socket (the kernel then resets the connections waiting in
    its accept queue) and at once closes every connection whose request it has not read
    yet, though the client sent it: under load a SIGTERM lost such requests (5 runs in 10
    of tests/serving/test_serve_process.py). Here the accept queue is taken in first, and
    just-accepted connections get half a second to deliver their request; then uvicorn's
    own shutdown waits for every request in flight.
    """
    import asyncio

    import uvicorn

    loop, accepted = asyncio.get_running_loop(), []
    for sock in sockets or []:
        while True:
            try:
                conn, _ = sock.accept()  # non-blocking (asyncio's): raises once the queue is empty
            except OSError:
                break
            accepted.append(conn)
    for server in self.servers:
        server.close()
    for sock in sockets or []:
        sock.close()
    config = self.config

    def protocol():
        return config.http_protocol_class(
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )

    for conn in accepted:
        conn.setblocking(False)
        await loop.connect_accepted_socket(protocol, conn)
    await asyncio.sleep(0.5)
    original = getattr(uvicorn.Server, "_presso_original_shutdown", uvicorn.Server.shutdown)
    await original(self, sockets)


def _config(app: Any, settings: ServeSettings):
    import uvicorn

    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        workers=settings.workers,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )


def worker_app():
    """The app of one worker process (``--workers N``)."""
    import uvicorn

    from presso.serving.app import serve_app

    # uvicorn built this process's Server before loading the app; its shutdown is looked up
    # on the class when SIGTERM comes, so the worker drains as the single process does.
    if not hasattr(uvicorn.Server, "_presso_original_shutdown"):
        uvicorn.Server._presso_original_shutdown = uvicorn.Server.shutdown  # type: ignore[attr-defined]
        uvicorn.Server.shutdown = _draining_shutdown  # type: ignore[method-assign]

    spec = json.loads(os.environ[WORKER_ENV])
    return serve_app(spec["artifact"], ServeSettings(**spec["settings"]))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PressoError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port or --host."
        ) from None
    sock.set_inheritable(True)
    return sock


def _log_to_stderr(quiet: bool) -> None:
    logger = logging.getLogger("presso.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
