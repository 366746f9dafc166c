"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own so that
several apps in one process (tests, a user's app mounting presso's) do not collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from presso.serving.batcher import BatchStats

# Request latency from the body read to the answer: sub-millisecond to overloaded seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 4, 8)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "presso_requests",
            "Prediction requests answered, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self._ok = self.requests.labels(status="200")  # looked up once: every answer counts
        self.rows = Counter("presso_rows", "Input rows predicted", registry=self.registry)
        self.latency = Histogram(
            "presso_request_seconds",
            "Time from a request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "presso_batch_rows",
            "Rows in each batch the model ran",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "presso_batch_requests",
            "Requests merged into each batch the model ran",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "presso_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "presso_queue_depth", "Requests waiting for the model", registry=self.registry
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def answered(self, status: int, seconds: float, rows: int = 0) -> None:
        counter = self._ok if status == 200 else self.requests.labels(status=str(status))
        counter.inc()
        self.latency.observe(seconds)
        if rows:
            self.rows.inc(rows)

    def batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
