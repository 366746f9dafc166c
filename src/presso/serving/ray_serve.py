"""The same predictor as a Ray Serve deployment: ``presso serve ARTIFACT --ray``.

For a user with a Ray cluster: replicas on any of its machines behind Ray's HTTP proxy,
scaled by count (``--replicas``) or by load (``--autoscale MIN:MAX``). Each replica loads
the artifact once and batches with Ray's own ``@serve.batch`` (sized in rows, not
requests); requests are checked and answered by the same code as the single-machine
server (:mod:`presso.serving.payload`), so the contract is one. Routes: ``POST /predict``,
``GET /healthz``, ``GET /`` (Ray's proxy has its own metrics; ``/metrics`` is not here).
Each answer names the replica that computed it (``x-presso-replica``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.serving.settings import ServeSettings

APP_NAME = "presso"


def _deployment_class():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from presso.export.predictor import load
    from presso.serving.app import predict_rows, read_inputs, warm_up
    from presso.serving.batcher import outputs_of
    from presso.serving.payload import BadInput, ModelSpec, Rows, parse_inputs, response_body
    from presso.serving.summary import artifact_summary

    class PressoModel:
        def __init__(self, artifact: str, settings: dict):
            self.settings = ServeSettings(**settings)
            self.predictor = load(artifact, threads=self.settings.threads)
            self.spec = ModelSpec.of(self.predictor)
            self.summary = artifact_summary(Path(artifact), self.predictor, self.settings)
            warm_up(self.predictor, self.spec)
            self.replica = str(serve.get_replica_context().replica_id.unique_id)
            # Ray's batcher, sized like the single-machine one (rows per batch, wait in s)
            self._batch = serve.batch(
                max_batch_size=self.settings.max_batch,
                batch_wait_timeout_s=self.settings.max_wait_ms / 1000,
                batch_size_fn=lambda requests: sum(r.n for r in requests),
            )(self._run_batch)

        async def _run_batch(self, requests: list[Rows]) -> list[Any]:
            return outputs_of(self._run, requests)

        def _run(self, rows: Rows):
            return predict_rows(self.predictor, rows, self.settings)

        async def __call__(self, request: Request) -> Response:
            headers = {"x-presso-replica": self.replica}
            path = request.url.path.rstrip("/") or "/"
            if request.method == "GET" and path == "/healthz":
                return JSONResponse({"status": "ready"}, headers=headers)
            if request.method == "GET" and path == "/":
                return JSONResponse(self.summary, headers=headers)
            if path != "/predict" or request.method != "POST":
                return JSONResponse({"error": "Not found: POST /predict"}, status_code=404, headers=headers)
            try:
                rows = parse_inputs(
                    await read_inputs(request, self.settings), self.spec, self.settings.max_rows
                )
                out = await self._batch(rows)
                if isinstance(out, BaseException):
                    raise out
            except BadInput as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
            body = response_body(self.spec.task, out, rows)
            return Response(body, media_type="application/json", headers=headers)

    return PressoModel


def ray_application(
    artifact: str | Path,
    settings: ServeSettings,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    cpus_per_replica: float | None = None,
):
    """The Ray Serve application of ``artifact`` (``serve.run`` it)."""
    from ray import serve

    options: dict[str, Any] = {
        "name": "PressoModel",
        # Each replica's ONNX Runtime threads are its CPUs: Ray places replicas by them.
        "ray_actor_options": {
            "num_cpus": cpus_per_replica if cpus_per_replica is not None else settings.threads or 1
        },
        "max_ongoing_requests": max(settings.max_batch * 4, 16),
        "max_queued_requests": settings.queue_limit,
    }
    if autoscale is not None:
        low, high = autoscale
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": low}
    else:
        options["num_replicas"] = replicas
    deployment = serve.deployment(**options)(_deployment_class())
    return deployment.bind(str(Path(artifact).resolve()), settings.model_dump())


def serve_on_ray(
    artifact: str | Path,
    settings: ServeSettings,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    address: str | None = None,
    log=print,
) -> None:
    """Deploy on Ray (a local instance, or the cluster at ``address``) and serve until
    Ctrl-C / SIGTERM; then the deployment is deleted (Ray drains its requests)."""
    import ray
    from ray import serve

    from presso.export.predictor import load

    load(artifact)  # a bad artifact fails here, in one line, before Ray starts
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PressoError(f"Cannot reach Ray at {address or 'a new local instance'}: {exc}") from None
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(ray_application(artifact, settings, replicas, autoscale), name=APP_NAME, route_prefix="/")
        count = f"autoscaling {autoscale[0]}-{autoscale[1]}" if autoscale else f"{replicas}"
        log(
            f"presso: serving {artifact} on Ray Serve at http://{settings.host}:{settings.port} "
            f"({count} replica(s); POST /predict); Ctrl-C to stop"
        )
        while True:
            time.sleep(3600)
    finally:
        try:
            serve.delete(APP_NAME)
            serve.shutdown()
        finally:
            ray.shutdown()


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` replicas, e.g. ``1:4``."""
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise PressoError(f"--autoscale {text!r}: give MIN:MAX replicas, e.g. 1:4.") from None
    if not 0 <= low <= high or high < 1:
        raise PressoError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1.")
    return low, high
