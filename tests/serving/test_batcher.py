"""The micro-batcher on a model it can watch: a function that records every batch."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from presso.serving.batcher import INLINE_MAX_S, Closed, MicroBatcher, QueueFull
from presso.serving.payload import BadInput, Rows


def array_rows(values) -> Rows:
    a = np.asarray(values, np.float32).reshape(-1, 1)
    return Rows(n=len(a), arrays={"x": a})


class Model:
    """Doubles its input; records the rows of every batch; can hold a batch until released."""

    def __init__(self, hold: bool = False, seconds: float = 0.0):
        self.batches: list[list[float]] = []
        self.threads: list[str] = []  # where each batch ran
        self.seconds = seconds  # how long each batch takes
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, rows: Rows) -> np.ndarray:
        self.release.wait(30)
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        if rows.texts is not None:
            self.batches.append(list(rows.texts))
            return np.array([[len(t)] for t in rows.texts], np.float32)
        x = rows.arrays["x"]
        self.batches.append(x.reshape(-1).tolist())
        if (x < 0).any():
            raise ValueError("negative input\nsecond line")
        return x * 2


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_requests_run_together_and_each_gets_its_own_rows():
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch=64, max_wait_ms=200, queue_limit=100)
        b.start()
        await b.submit(array_rows([0]))
        await asyncio.gather(b.submit(array_rows([0])), b.submit(array_rows([0])))  # expects 2 now
        requests = [array_rows(np.arange(i, i + 1 + i % 3)) for i in range(20)]
        answers = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()
        return requests, answers

    requests, answers = run(main())
    for r, a in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(a, r.arrays["x"] * 2)
    # the 20 requests that arrived together ran as one batch of their 39 rows, in order
    assert model.batches[:2] == [[0.0], [0.0, 0.0]]
    assert model.batches[2:] == [np.concatenate([r.arrays["x"].reshape(-1) for r in requests]).tolist()]


def test_a_lone_request_does_not_wait_for_company():
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch=64, max_wait_ms=60_000, queue_limit=10)
        b.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(3):
            np.testing.assert_array_equal(await b.submit(array_rows([i])), [[2 * i]])
        await b.close()
        return loop.time() - started

    assert run(main()) < 30  # a wait for company would take 60 s each (and time out)
    assert model.batches == [[0.0], [1.0], [2.0]]


def test_max_batch_caps_rows_and_keeps_arrival_order():
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch=4, max_wait_ms=0, queue_limit=100)
        b.start()
        first = asyncio.ensure_future(b.submit(array_rows([100])))
        await asyncio.sleep(0.05)  # the first batch is running (held); the rest queue up
        rest = [asyncio.ensure_future(b.submit(array_rows([i, i]))) for i in range(5)]
        big = asyncio.ensure_future(b.submit(array_rows(range(10))))  # larger than a batch: alone
        await asyncio.sleep(0.05)
        model.release.set()
        await asyncio.gather(first, *rest, big)
        await b.close()

    run(main())
    assert model.batches == [[100.0], [0, 0, 1, 1], [2, 2, 3, 3], [4, 4], list(range(10))]


def test_groups_do_not_mix():
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch=16, max_wait_ms=0, queue_limit=100)
        b.start()
        first = asyncio.ensure_future(b.submit(array_rows([9])))
        await asyncio.sleep(0.05)
        mixed = [
            asyncio.ensure_future(b.submit(array_rows([1]))),
            asyncio.ensure_future(b.submit(Rows(n=2, texts=["ab", "abc"]))),
            asyncio.ensure_future(b.submit(array_rows([2]))),
            asyncio.ensure_future(b.submit(Rows(n=1, texts=["a"]))),
        ]
        model.release.set()
        got = await asyncio.gather(first, *mixed)
        await b.close()
        return got

    got = run(main())
    assert model.batches == [[9.0], [1.0, 2.0], ["ab", "abc", "a"]]
    np.testing.assert_array_equal(got[2], [[2], [3]])
    np.testing.assert_array_equal(got[4], [[1]])


def test_a_request_that_breaks_the_model_fails_alone():
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch=16, max_wait_ms=0, queue_limit=100)
        b.start()
        first = asyncio.ensure_future(b.submit(array_rows([0])))
        await asyncio.sleep(0.05)
        batch = [asyncio.ensure_future(b.submit(array_rows([v]))) for v in (1, -1, 3)]
        model.release.set()
        await first
        got = await asyncio.gather(*batch, return_exceptions=True)
        await b.close()
        return got

    good, bad, other = run(main())
    np.testing.assert_array_equal(good, [[2]])
    np.testing.assert_array_equal(other, [[6]])
    assert isinstance(bad, BadInput) and bad.status == 422
    assert str(bad) == "The model could not run on these inputs: negative input"
    assert model.batches[1] == [1.0, -1.0, 3.0]  # tried together first, then each alone


def test_a_full_queue_refuses_at_once_and_close_answers_everything_waiting():
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch=1, max_wait_ms=0, queue_limit=2)
        b.start()
        running = asyncio.ensure_future(b.submit(array_rows([1])))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit(array_rows([v]))) for v in (2, 3)]
        await asyncio.sleep(0.01)
        assert b.depth == 2
        with pytest.raises(QueueFull):
            await b.submit(array_rows([4]))
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Closed):
            await b.submit(array_rows([5]))
        model.release.set()
        got = await asyncio.gather(running, *waiting)
        await closing
        return got

    got = run(main())
    assert [float(g[0, 0]) for g in got] == [2.0, 4.0, 6.0]


def test_after_a_crowd_a_batch_waits_for_as_many_requests_as_the_last_one_held():
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch=64, max_wait_ms=2_000, queue_limit=100)
        b.start()
        await asyncio.gather(*(b.submit(array_rows([v])) for v in (1, 2, 3)))  # a batch of 3
        first = asyncio.ensure_future(b.submit(array_rows([4])))
        await asyncio.sleep(0.2)  # the batch of [4] waits for two more (up to 2 s)
        later = [asyncio.ensure_future(b.submit(array_rows([v]))) for v in (5, 6)]
        await asyncio.gather(first, *later)
        await b.close()

    run(main())
    assert model.batches == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_a_lone_request_to_a_quick_model_runs_on_the_event_loop_and_a_crowd_still_batches():
    model = Model()

    async def main():
        loop_thread = threading.current_thread().name
        b = MicroBatcher(model, max_batch=64, max_wait_ms=2_000, queue_limit=100)
        b.start()
        await b.submit(array_rows([1]))  # the model's speed is not known yet: the worker
        np.testing.assert_array_equal(await b.submit(array_rows([2])), [[4]])  # now: inline
        with pytest.raises(BadInput, match="negative input"):  # fails alone, inline too
            await b.submit(array_rows([-1]))
        crowd = await asyncio.gather(*(b.submit(array_rows([v])) for v in range(10, 15)))
        await b.submit(array_rows([3]))  # after a batch of 5: waits for company, in the worker
        await b.submit(array_rows([4]))  # the last batch held one request: inline again
        await b.close()
        return loop_thread, crowd

    loop_thread, crowd = run(main())
    assert [c.tolist() for c in crowd] == [[[2.0 * v]] for v in range(10, 15)]
    assert model.batches == [[1.0], [2.0], [-1.0], [10.0, 11.0, 12.0, 13.0, 14.0], [3.0], [4.0]]
    inline = [t == loop_thread for t in model.threads]
    assert inline == [False, True, True, False, False, True]


def test_a_slow_model_never_blocks_the_event_loop():
    model = Model(seconds=2 * INLINE_MAX_S)

    async def main():
        loop_thread = threading.current_thread().name
        b = MicroBatcher(model, max_batch=64, max_wait_ms=0, queue_limit=100)
        b.start()
        for v in range(4):
            await b.submit(array_rows([v]))
        await b.close()
        return loop_thread

    loop_thread = run(main())
    assert len(model.threads) == 4 and loop_thread not in model.threads
