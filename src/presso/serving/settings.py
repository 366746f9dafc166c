"""How a server runs: batching, limits and processes (the options of ``presso serve``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeSettings(BaseModel):
    """Settings of one server; every worker process gets the same."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Rows run together at most. A batch of 32 ~20-token sentences runs all-MiniLM-L6-v2's
    # int8 encoder at ~2x the texts/s of one at a time on 2 cores; a tiny model gains more.
    max_batch: int = Field(default=32, ge=1, le=4096)
    # How long a batch may wait for more requests when the last one held several (see
    # batcher.MicroBatcher): under load it fills batches, a lone client never waits.
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    threads: int | None = Field(default=None, ge=1)
    workers: int = Field(default=1, ge=1, le=256)
    # Requests waiting for the model at most; one more is answered 429 with Retry-After.
    queue_limit: int = Field(default=512, ge=1)
    max_rows: int = Field(default=1024, ge=1)  # rows in one request; more is answered 413
    max_body_mb: float = Field(default=16.0, gt=0)  # request body size; more is answered 413
    # A text batch is split before a text it would pad to more than this many times its length.
    max_padding: float = Field(default=1.5, ge=1)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
