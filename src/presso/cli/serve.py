"""``presso serve ARTIFACT``: the compressed model answering HTTP requests."""

from __future__ import annotations

import argparse

HELP = "serve an artifact over HTTP: POST /predict with dynamic batching, /metrics, /healthz"


def register(sub) -> None:
    from presso.serving.settings import ServeSettings

    d = ServeSettings()
    p = sub.add_parser(
        "serve",
        help=HELP,
        description=HELP + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  presso serve presso-digits-int8
  presso serve presso-minilm-int8 --port 8080 --max-batch 64
  curl -s localhost:8000/predict -H 'content-type: application/json' \\
       -d '{"inputs": ["a sentence to embed", "and another"]}'

POST /predict takes {"inputs": ...}: a string or a list of strings for a text model,
one row or a list of rows for a single-input model, or an object of named arrays. The
answer has one entry per input row, in order: {"task": ..., "outputs": [...]}, plus
"labels" and "probabilities" for classification and "scores" for anomaly and ranking.
Requests that arrive together run as one batch (up to --max-batch rows, waiting at most
--max-wait-ms, and only while others are coming: a lone client never waits). Past
--queue-limit waiting requests the answer is 429 with Retry-After; too many rows or too
large a body 413; inputs the model cannot take 422, each with a one-line reason.
GET /healthz is 200 once the model is warm, GET /metrics is Prometheus text, GET / says
what the artifact is and what presso measured, /docs is the OpenAPI documentation.
Ctrl-C or SIGTERM: stop accepting, finish the requests in flight, exit 0.""",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (presso compress) or an .onnx file")
    p.add_argument("--host", default=d.host, help=f"interface to listen on (default {d.host}; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0: any free one)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help=f"rows run together at most (default {d.max_batch}; 1: no batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a batch may wait for more requests under load (default {d.max_wait_ms:g})",
    )
    p.add_argument(
        "--threads", type=int, help="ONNX Runtime intra-op threads per worker (default: the cores shared)"
    )
    p.add_argument("--workers", type=int, default=d.workers, help="server processes on the port (default 1)")
    p.add_argument(
        "--queue-limit",
        type=int,
        default=d.queue_limit,
        help=f"requests waiting at most; beyond, 429 (default {d.queue_limit})",
    )
    p.add_argument(
        "--max-rows", type=int, default=d.max_rows, help=f"rows per request at most (default {d.max_rows})"
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=d.max_body_mb,
        help=f"request body size at most (default {d.max_body_mb:g})",
    )
    ray = p.add_argument_group("Ray Serve (beyond one machine)")
    ray.add_argument(
        "--ray", action="store_true", help="deploy on Ray Serve instead (a local Ray, or --ray-address)"
    )
    ray.add_argument(
        "--replicas", type=int, default=1, help="--ray: replicas, each a copy of the model (default 1)"
    )
    ray.add_argument(
        "--autoscale", metavar="MIN:MAX", help="--ray: scale replicas with the load between MIN and MAX"
    )
    ray.add_argument(
        "--ray-address", metavar="ADDR", help="--ray: the cluster to join, e.g. ray://head:10001 or auto"
    )
    p.add_argument("--quiet", action="store_true", help="no start-up line on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(run=run)


def settings_from(args):
    """The arguments as ServeSettings; a value out of range is one line, exit 2."""
    from pydantic import ValidationError

    from presso.errors import PressoError
    from presso.serving.settings import ServeSettings

    values = {
        "host": args.host,
        "port": args.port,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "threads": args.threads,
        "workers": args.workers,
        "queue_limit": args.queue_limit,
        "max_rows": args.max_rows,
        "max_body_mb": args.max_body_mb,
    }
    try:
        return ServeSettings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-")
        raise PressoError(f"{option} {values[str(err['loc'][0])]!r}: {err['msg'].lower()}.") from None


def run(args) -> int:
    import importlib.util

    from presso.errors import PressoError

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise PressoError(f"presso serve needs {', '.join(missing)}: pip install 'presso[serve]'.")
    ray_only = [
        f"--{n}" for n in ("replicas", "autoscale", "ray_address") if getattr(args, n) not in (None, 1)
    ]
    if ray_only and not args.ray:
        raise PressoError(f"{', '.join(o.replace('_', '-') for o in ray_only)} need --ray.")
    settings = settings_from(args)
    try:
        if args.ray:
            _serve_on_ray(args, settings)
        else:
            from presso.serving.server import serve

            serve(args.artifact, settings, quiet=args.quiet)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it stopped on, after a clean shutdown
    return 0


def _serve_on_ray(args, settings) -> None:
    import importlib.util
    import sys

    from presso.errors import PressoError
    from presso.serving.ray_serve import parse_autoscale, serve_on_ray

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise PressoError("presso serve --ray needs Ray Serve: pip install 'presso[ray]'.")
    if args.replicas < 1:
        raise PressoError(f"--replicas {args.replicas}: give at least 1.")
    if args.autoscale and args.replicas != 1:
        raise PressoError("--replicas and --autoscale exclude each other: give one.")
    if settings.workers != 1:
        raise PressoError("--workers is for the single-machine server; with --ray give --replicas.")
    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    serve_on_ray(args.artifact, settings, args.replicas, autoscale, args.ray_address, log=log)
