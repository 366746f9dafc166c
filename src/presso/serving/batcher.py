"""Dynamic micro-batching: requests that arrive close together run as one batch.

One model, one batch at a time, run in a worker thread (ONNX Runtime releases the GIL, so
the event loop keeps taking requests meanwhile, and those queue up for the next batch).
A batch takes the waiting requests in arrival order up to ``max_batch`` rows, of one
group (texts, or arrays of one row shape); each caller gets exactly its own rows back.

When to run: a lone client must not wait for company that never comes, and a crowd must
not run as a string of one-request batches. So a batch waits (at most ``max_wait_ms``)
only for as many requests as the previous batch held: one client sees no wait at all;
32 clients that each send again as soon as they are answered fill the next batch as
fast as they come back. The queue is bounded: past ``queue_limit`` waiting requests a
caller gets :class:`QueueFull` (HTTP 429) at once instead of a growing delay.

A lone request on an idle batcher runs at once, on the event loop itself, when the model
is quick (its last lone run took under :data:`INLINE_MAX_S` per request's rows): handing it
to the worker thread and back costs two thread wake-ups, 0.1-0.2 ms on a 2-core server,
a tenth of a MiniLM sentence and ten times a small MLP's whole run. "Lone" is checked
after one turn of the loop, so that requests read in the same pass as it (a crowd
arriving together) are seen and batched with it instead of running one by one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from presso.errors import reason
from presso.serving.payload import BadInput, Rows, merge

# The longest run a lone request may block the event loop for (other requests wait that
# long to be read). Past it the thread hop is under a few percent of the run anyway.
INLINE_MAX_S = 0.005


class QueueFull(Exception):
    """The server has ``queue_limit`` requests waiting already."""


class Closed(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class _Waiting:
    rows: Rows
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the batcher reports to the metrics after each batch."""

    requests: int
    rows: int
    seconds: float


class MicroBatcher:
    """Queues requests and runs them in batches through ``run`` (merged rows -> outputs)."""

    def __init__(
        self,
        run: Callable[[Rows], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        queue_limit: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        self._run, self.max_batch, self.queue_limit = run, max_batch, queue_limit
        self._max_wait = max_wait_ms / 1000
        self._on_batch = on_batch
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presso-batch")
        self._expected = 1  # requests the last batch held: how many the next one waits for
        self._row_s: float | None = None  # seconds per row of the last batch of one request
        self._running = False  # a batch is in the worker thread
        self._inline_pending = False  # a lone request is looking whether it is still alone
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return len(self._waiting)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="presso-batcher")

    async def submit(self, rows: Rows) -> np.ndarray:
        """The outputs of ``rows`` (one per row), once their batch has run."""
        if self._closing:
            raise Closed()
        if len(self._waiting) >= self.queue_limit:
            raise QueueFull()
        if self._quick_alone(rows):
            self._inline_pending = True
            try:
                await asyncio.sleep(0)  # requests read in the same pass reach the queue now
            finally:
                self._inline_pending = False
            if self._idle():
                return self._run_inline(rows)
            first = True  # not alone after all: it joins the queue, at the front (it came first)
        else:
            first = False
        waiting = _Waiting(rows, asyncio.get_running_loop().create_future())
        if first:
            self._waiting.appendleft(waiting)
        else:
            self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.future

    def _idle(self) -> bool:
        return not (self._waiting or self._running or self._closing)

    def _quick_alone(self, rows: Rows) -> bool:
        """Whether ``rows`` may run on the event loop: nothing else waits or runs, the last
        batch held one request, and the model's last lone run says it takes under
        :data:`INLINE_MAX_S` for this many rows."""
        return (
            self._idle()
            and not self._inline_pending
            and self._expected == 1
            and self._row_s is not None
            and self._row_s * rows.n < INLINE_MAX_S
        )

    def _run_inline(self, rows: Rows) -> np.ndarray:
        started = time.perf_counter()
        result = outputs_of(self._run, [rows])[0]
        self._ran(1, rows.n, time.perf_counter() - started)
        if isinstance(result, BaseException):
            raise result
        return result

    async def close(self) -> None:
        """Take no more requests, answer every waiting one, then stop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather()
            batch = self._take()
            started = time.perf_counter()
            self._running = True
            try:
                results = await loop.run_in_executor(
                    self._executor, outputs_of, self._run, [w.rows for w in batch]
                )
            finally:
                self._running = False
            for waiting, result in zip(batch, results, strict=True):
                if waiting.future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
            self._ran(len(batch), sum(w.rows.n for w in batch), time.perf_counter() - started)

    def _ran(self, requests: int, rows: int, seconds: float) -> None:
        """Book a batch that ran: what the next one waits for, the lone speed, the metrics."""
        self._expected = max(1, requests)
        if requests == 1:
            self._row_s = seconds / max(1, rows)
        if self._on_batch is not None:
            self._on_batch(BatchStats(requests, rows, seconds))

    async def _gather(self) -> None:
        """Wait (up to ``max_wait_ms`` from the first waiting request) until as many requests
        wait as the last batch held, or a full batch does."""
        deadline = self._waiting[0].arrived + self._max_wait
        while not self._closing:
            rows = sum(w.rows.n for w in self._waiting)
            left = deadline - time.perf_counter()
            if len(self._waiting) >= self._expected or rows >= self.max_batch or left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting]:
        """The first waiting request and those after it of its group, up to ``max_batch`` rows
        (a request larger than that runs alone: the model splits it)."""
        first = self._waiting.popleft()
        batch, rows, group = [first], first.rows.n, first.rows.group()
        skipped: list[_Waiting] = []
        while self._waiting and rows < self.max_batch:
            nxt = self._waiting.popleft()
            if nxt.rows.group() != group or rows + nxt.rows.n > self.max_batch:
                skipped.append(nxt)
                if len(skipped) > 64:  # keep the order of the rest for the next batch
                    break
                continue
            batch.append(nxt)
            rows += nxt.rows.n
        self._waiting.extendleft(reversed(skipped))
        return batch


def outputs_of(run: Callable[[Rows], np.ndarray], requests: list[Rows]) -> list[np.ndarray | BaseException]:
    """Each request's outputs (or the reason it could not run), the requests of each
    :meth:`Rows.group` merged into one run. Should a run fail, its requests run alone, so
    that one that cannot run fails by itself."""
    if len(requests) == 1:  # a lone request: no merging, splitting or grouping to pay for
        return [_alone(run, requests[0])]
    results: list[np.ndarray | BaseException | None] = [None] * len(requests)
    groups: dict[object, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.group(), []).append(i)
    for members in groups.values():
        part = [requests[i] for i in members]
        try:
            out = run(merge(part))
            got: list[np.ndarray | BaseException] = list(np.split(out, np.cumsum([r.n for r in part])[:-1]))
        except Exception as exc:
            got = [_refused(exc)] if len(part) == 1 else [_alone(run, r) for r in part]
        for i, g in zip(members, got, strict=True):
            results[i] = g
    return [r for r in results if r is not None]


def _alone(run: Callable[[Rows], np.ndarray], rows: Rows) -> np.ndarray | BaseException:
    try:
        return run(rows)
    except Exception as exc:
        return _refused(exc)


def _refused(exc: Exception) -> BaseException:
    """A request the model could not run: checked inputs that still break it (a token id
    beyond the vocabulary, an empty sequence) are the caller's to fix, answered 422."""
    if isinstance(exc, BadInput):
        return exc
    return BadInput(422, f"The model could not run on these inputs: {reason(exc)}")
