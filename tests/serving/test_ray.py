"""``presso serve --ray``: the deployment on a local Ray instance started by the test.

Needs Ray Serve (``presso[ray]``, in the dev install): skipped without it, unless
PRESSO_REQUIRE_RAY=1 (``.ci/run``) makes its absence a failure.
"""

from __future__ import annotations

import os
import socket
import time

import httpx
import numpy as np
import pytest
from serve_helpers import artifacts_fixture, rows  # noqa: F401 (the artifacts fixture)

import presso
from presso.serving.settings import ServeSettings

if os.environ.get("PRESSO_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.serve")

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(artifacts):
    import ray
    from ray import serve

    from presso.serving.ray_serve import APP_NAME, ray_application

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = ray_application(
            artifacts["classification"],
            ServeSettings(threads=1, max_wait_ms=2),
            replicas=2,
            cpus_per_replica=0.5,
        )
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _ask(url: str, seed: int) -> tuple[httpx.Response, np.ndarray]:
    x = rows(2, seed=seed)
    return httpx.post(f"{url}/predict", json={"inputs": x.tolist()}, timeout=60), x


def test_two_replicas_both_answer_with_the_same_contract(ray_url, artifacts):
    reference = presso.load(artifacts["classification"])
    seen = set()
    for seed in range(40):
        answer, x = _ask(ray_url, seed)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], reference.predict(x), atol=1e-6)
        assert answer.json()["labels"] == reference.predict(x).argmax(axis=1).tolist()
        seen.add(answer.headers["x-presso-replica"])
    assert len(seen) == 2
    bad = httpx.post(f"{ray_url}/predict", json={"inputs": "text"}, timeout=60)
    assert bad.status_code == 422 and "numbers, not text" in bad.json()["error"]
    assert httpx.get(f"{ray_url}/", timeout=60).json()["task"] == "classification"


def test_a_killed_replica_is_replaced_and_no_request_is_lost(ray_url, artifacts):
    import ray

    reference = presso.load(artifacts["classification"])
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert len(replicas) == 2
    before = {_ask(ray_url, s)[0].headers["x-presso-replica"] for s in range(20)}
    victim = replicas[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    seen_after: set[str] = set()
    deadline = time.monotonic() + 120
    answered = 0
    while time.monotonic() < deadline and len(seen_after - before) == 0:
        answer, x = _ask(ray_url, 1000 + answered)
        assert answer.status_code == 200, answer.text  # the survivor answers meanwhile
        np.testing.assert_allclose(answer.json()["outputs"], reference.predict(x), atol=1e-6)
        seen_after.add(answer.headers["x-presso-replica"])
        answered += 1
        time.sleep(0.05)
    assert seen_after - before, "no new replica answered within 120 s"
