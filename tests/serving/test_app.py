"""``POST /predict`` and the other routes, against a server running in this process."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import TEXTS, ServerThread, artifacts_fixture, rows  # noqa: F401 (the artifacts fixture)

import presso
from presso.serving.settings import ServeSettings


@pytest.fixture(scope="module")
def servers(artifacts):
    """task -> base URL of a running server (threads of this process, stopped at the end)."""
    urls, running = {}, []
    for task, folder in artifacts.items():
        server = ServerThread(presso.serve_app(folder, ServeSettings(threads=1, max_rows=64)))
        urls[task] = server.__enter__()
        running.append(server)
    yield urls
    for server in running:
        server.__exit__(None, None, None)


def post(url: str, body) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=30)


def test_classification_gives_labels_and_probabilities(servers, artifacts):
    x = rows(5)
    got = post(servers["classification"], {"inputs": x.tolist()})
    assert got.status_code == 200, got.text
    body = got.json()
    want = presso.load(artifacts["classification"]).predict(x)
    np.testing.assert_allclose(body["outputs"], want, rtol=1e-6, atol=1e-6)
    e = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(body["probabilities"], e / e.sum(axis=1, keepdims=True), atol=1e-6)
    assert body["labels"] == want.argmax(axis=1).tolist() and body["task"] == "classification"
    one = post(servers["classification"], {"inputs": x[0].tolist()}).json()  # one row, no list around it
    assert one["labels"] == body["labels"][:1]


def test_embedding_texts_one_or_many(servers, artifacts):
    want = presso.load(artifacts["embedding"]).predict(TEXTS[:7])
    body = post(servers["embedding"], {"inputs": TEXTS[:7]}).json()
    np.testing.assert_allclose(body["outputs"], want, atol=2e-5)
    assert set(body) == {"task", "outputs"}
    one = post(servers["embedding"], {"inputs": TEXTS[3]}).json()
    np.testing.assert_allclose(one["outputs"], want[3:4], atol=2e-5)


def test_anomaly_and_ranking_scores(servers, artifacts):
    x = rows(4, seed=3)
    recon = presso.load(artifacts["anomaly"]).predict(x)
    body = post(servers["anomaly"], {"inputs": x.tolist()}).json()
    np.testing.assert_allclose(body["scores"], ((x - recon) ** 2).mean(axis=1), rtol=1e-5)
    score = presso.load(artifacts["ranking"]).predict(x)
    body = post(servers["ranking"], {"inputs": x.tolist()}).json()
    np.testing.assert_allclose(body["scores"], score.reshape(-1), rtol=1e-6)
    body = post(servers["regression"], {"inputs": x.tolist()}).json()
    assert set(body) == {"task", "outputs"} and np.shape(body["outputs"]) == (4, 1)


def test_named_arrays(servers, artifacts):
    a, b = rows(3)[:, :1], rows(3, 1)[:, :3]
    body = post(servers["two-inputs"], {"inputs": {"a": a.tolist(), "b": b.tolist()}}).json()
    np.testing.assert_allclose(body["outputs"], a * 2 + b.sum(axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    ("task", "body", "status", "words"),
    [
        ("classification", {"inputs": "a text"}, 422, "numbers, not text"),
        ("classification", {"inputs": [[1.0, 2.0]]}, 422, "axis 1"),
        ("classification", {"inputs": [[1, 2, 3, 4, 5, "x"]]}, 422, "numbers"),
        ("classification", {"inputs": [[1, 2], [3]]}, 422, "equal lengths"),
        ("classification", {"inputs": []}, 422, "empty"),
        ("classification", {"input": [[0] * 6]}, 422, '"inputs"'),
        ("classification", {"inputs": [[0] * 6], "extra": 1}, 422, "Unknown field"),
        ("classification", {"inputs": [[0] * 6] * 65}, 413, "at most 64"),
        ("classification", {"inputs": {"y": [[0] * 6]}}, 422, "unknown ['y']"),
        ("embedding", {"inputs": ["ok", 3]}, 422, "inputs[1] is not a string"),
        ("embedding", {"inputs": [[1, 2]]}, 422, "takes text"),
        ("embedding", {"inputs": ["t"] * 65}, 413, "at most 64"),
        (
            "two-inputs",
            {"inputs": {"a": [[1.0]], "b": [[1.0, 2.0, 3.0]] * 2}},
            422,
            "different numbers of rows",
        ),
        ("two-inputs", {"inputs": [[1.0]]}, 422, "named arrays"),
    ],
)
def test_bad_requests_get_one_line_reasons(servers, task, body, status, words):
    got = post(servers[task], body)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert words in error and "\n" not in error


def test_non_json_non_finite_and_huge_bodies(servers):
    url = servers["classification"]
    got = httpx.post(f"{url}/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert got.status_code == 422 and "not JSON" in got.json()["error"]
    got = httpx.post(f"{url}/predict", content=b'{"inputs": [[NaN, 1, 2, 3, 4, 5]]}')
    assert got.status_code == 422 and "NaN" in got.json()["error"]
    got = httpx.post(f"{url}/predict", content=b'{"inputs": [[1e300, 1, 2, 3, 4, 5]]}')
    assert got.status_code == 422 and "range" in got.json()["error"]
    big = b'{"inputs": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    got = httpx.post(f"{url}/predict", content=big)
    assert got.status_code == 413 and "--max-body-mb" in got.json()["error"]


def test_health_summary_docs_and_metrics(servers):
    url = servers["classification"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ready"}
    summary = httpx.get(f"{url}/").json()
    assert summary["task"] == "classification" and summary["model"] == "Classifier"
    assert summary["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": [None, 6]}]
    schema = httpx.get(f"{url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "inputs" in body["properties"] and {"413", "422", "429"} <= set(
        schema["paths"]["/predict"]["post"]["responses"]
    )
    post(url, {"inputs": rows(3).tolist()})
    post(url, {"inputs": "bad"})
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    statuses = {
        s.labels["status"]: s.value for s in families["presso_requests"].samples if s.name.endswith("_total")
    }
    assert statuses["200"] >= 1 and statuses["422"] >= 1
    assert {"presso_request_seconds", "presso_batch_rows", "presso_queue_depth", "presso_rows"} <= set(
        families
    )
    rows_total = next(s.value for s in families["presso_rows"].samples if s.name == "presso_rows_total")
    assert rows_total >= 3


def test_concurrent_callers_each_get_their_own_rows(artifacts):
    """64 clients at once with distinct texts: every answer equals presso.load(...).predict of
    that client's own texts, and the server did merge requests into batches."""
    app = presso.serve_app(artifacts["embedding"], ServeSettings(threads=1, max_batch=16, max_wait_ms=50))
    reference = presso.load(artifacts["embedding"])
    requests = [TEXTS[i % 40 : i % 40 + 1 + i % 3] for i in range(64)]

    async def clients(url: str):
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/predict", json={"inputs": r}) for r in requests)
            )

    with ServerThread(app) as url:
        answers = asyncio.run(clients(url))
        metrics = httpx.get(f"{url}/metrics").text
    for texts, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], reference.predict(texts), atol=2e-5)
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    batches = next(s.value for s in families["presso_batch_requests"].samples if s.name.endswith("_count"))
    assert batches < 64  # some requests ran together


class HeldPredictor:
    """The artifact's predictor, holding every batch until released: the queue fills."""

    def __init__(self, folder):
        import threading

        self.inner = presso.load(folder, threads=1)
        self.release = threading.Event()
        self.session, self.tokenizer, self.task = self.inner.session, self.inner.tokenizer, self.inner.task

    def predict(self, inputs, **kwargs):
        self.release.wait(60)
        return self.inner.predict(inputs, **kwargs)


def test_a_full_queue_is_answered_429_with_retry_after(artifacts):
    held = HeldPredictor(artifacts["classification"])
    held.release.set()  # the warm-up runs freely
    app = presso.serve_app(
        artifacts["classification"], ServeSettings(max_batch=1, max_wait_ms=0, queue_limit=2), predictor=held
    )

    async def clients(url: str):
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int):
                return await client.post(f"{url}/predict", json={"inputs": rows(1, seed=i).tolist()})

            running = asyncio.ensure_future(one(0))  # runs, held
            await asyncio.sleep(0.3)
            queued = [asyncio.ensure_future(one(i)) for i in (1, 2)]  # wait in the queue
            await asyncio.sleep(0.3)
            refused = await one(3)  # the queue holds 2 already
            held.release.set()
            return refused, await asyncio.gather(running, *queued)

    with ServerThread(app) as url:
        held.release.clear()
        refused, answered = asyncio.run(clients(url))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    assert [a.status_code for a in answered] == [200, 200, 200]
    for i, a in zip((0, 1, 2), answered, strict=True):
        np.testing.assert_allclose(a.json()["outputs"], held.inner.predict(rows(1, seed=i)), atol=1e-6)
