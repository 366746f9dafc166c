"""Latency and throughput, measured the same way for the baseline and every variant.

Models are timed in interleaved rounds (round r runs every model in turn, in an order
rotated each round) so drifting machine load hits all of them alike; the figures are
percentiles over all rounds. ORT thread spinning is off while comparing, so an idle
session does not keep cores busy while another one is timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from presso.errors import PressoError
from presso.runtime.session import default_threads, fit_length, make_session

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn


class CallableTeacher(Protocol):
    """A model run through its own Python predict (presso.model.loaded.LoadedModel of a callable)."""

    def predict_arg(self, feed: dict[str, np.ndarray]) -> Any: ...

    def predict(self, arg: Any) -> Any: ...


@dataclass(frozen=True)
class BenchSettings:
    rounds: int = 10
    round_seconds: float = 0.25  # target time of one model's share of one round
    throughput_batch: int = 64
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.throughput_batch < 1:
            raise PressoError(
                f"--rounds and --batch must be >= 1. Got {self.rounds} and {self.throughput_batch}."
            )
        if self.threads is not None and self.threads < 1:
            raise PressoError(f"--threads must be >= 1. Got {self.threads}.")
        if not (math.isfinite(self.round_seconds) and self.round_seconds > 0):
            raise PressoError(f"round_seconds must be a finite number > 0. Got {self.round_seconds}.")

    @property
    def thread_count(self) -> int:
        return self.threads or default_threads()


def _time_calls(fn: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _calls_per_round(fn: Callable[[], object], seconds: float, cap: int = 200) -> int:
    fn()  # warm-up: first runs allocate and pick kernels
    probe = float(np.median(_time_calls(fn, 3)))
    return int(min(cap, max(2, seconds / max(probe, 1e-6))))


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], settings: BenchSettings, on_round: Callable[[], None] | None = None
) -> dict[str, list[list[float]]]:
    """Per-call wall times (seconds) of each callable, one list per interleaved round."""
    names = list(fns)
    calls = {k: _calls_per_round(fns[k], settings.round_seconds) for k in names}
    times: dict[str, list[list[float]]] = {k: [] for k in names}
    for r in range(settings.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(_time_calls(fns[k], calls[k]))
        if on_round:
            on_round()
    return times


def interleaved(
    fns: dict[str, Callable[[], object]], settings: BenchSettings, on_round: Callable[[], None] | None = None
) -> dict[str, list[float]]:
    """Per-call wall times (seconds) of each callable over interleaved rounds."""
    return {
        k: [t for r in rounds for t in r] for k, rounds in interleaved_rounds(fns, settings, on_round).items()
    }


@dataclass(frozen=True)
class Timing:
    """Batch-1 latency of one model in a comparison: the p50 over all calls and the
    median of each interleaved round (what tells a real difference from noise)."""

    p50_ms: float
    rounds_ms: tuple[float, ...]


def time_latency(
    paths: dict[str, Path], batch1: dict[str, np.ndarray], settings: BenchSettings
) -> dict[str, Timing]:
    """Batch-1 latency of each ONNX model, interleaved, for choosing between variants."""
    sessions = open_sessions(paths, settings)
    timed = interleaved_rounds({k: session_call(s, batch1) for k, s in sessions.items()}, settings)
    return {
        k: Timing(
            round(float(np.percentile(np.concatenate(r) * 1e3, 50)), 4),
            tuple(round(float(np.median(x)) * 1e3, 4) for x in r),
        )
        for k, r in timed.items()
    }


def clearly_slower(slow: Timing, fast: Timing, margin: float) -> bool:
    """``slow`` is slower than ``fast`` beyond timing noise: by more than ``margin`` at
    the p50 *and* in every interleaved round. On a shared machine a single p50 over a
    few rounds moved by more than 3% between runs (CI picked a less faithful int8
    variant over a 1% difference); a slowdown that is real shows in every round."""
    if slow.p50_ms <= fast.p50_ms * (1 + margin):
        return False
    return all(s > f for s, f in zip(slow.rounds_ms, fast.rounds_ms, strict=True))


SAMPLES = 200  # batch-1 call times kept for the report's latency distribution


def summarize(times_batch1: list[float], times_batch_n: list[float], batch_n: int) -> dict:
    ms = np.asarray(times_batch1) * 1e3
    keep = np.linspace(0, len(ms) - 1, min(SAMPLES, len(ms))).round().astype(int)  # evenly, in call order
    return {
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 4),
            "p95": round(float(np.percentile(ms, 95)), 4),
            "batch": 1,
            "samples": [round(float(t), 4) for t in ms[keep]],
        },
        "throughput_per_s": round(batch_n / float(np.median(times_batch_n)), 2),
        "throughput_batch": batch_n,
    }


def open_sessions(paths: dict[str, Path], settings: BenchSettings) -> dict[str, ort.InferenceSession]:
    return {k: make_session(p, threads=settings.thread_count, spinning=False) for k, p in paths.items()}


def session_call(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    feed = fit_length(sess, {i.name: feed[i.name] for i in sess.get_inputs()})
    return lambda: sess.run(None, feed)


def bench_calls(
    batch1_calls: dict[str, Callable[[], object]],
    batch_n_calls: dict[str, Callable[[], object]],
    n: int,
    settings: BenchSettings = BenchSettings(),
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Callable[[], object]] | None = None,
) -> dict[str, dict]:
    """Latency (the batch-1 calls) and throughput (calls on ``n`` rows), interleaved.
    ``latency_only`` calls join the latency rounds (their p50 under ``"latency_only"``):
    intermediate models compared in the very same rounds as the headline figures."""
    lat = interleaved({**batch1_calls, **(latency_only or {})}, settings, on_round)
    thr_settings = BenchSettings(
        rounds=max(3, settings.rounds // 2), round_seconds=settings.round_seconds, threads=settings.threads
    )
    thr = interleaved(batch_n_calls, thr_settings, on_round)
    out = {k: summarize(lat[k], thr[k], n) for k in batch1_calls}
    out["latency_only"] = {
        k: round(float(np.percentile(np.asarray(lat[k]) * 1e3, 50)), 4) for k in latency_only or {}
    }
    return out


def bench_onnx(
    paths: dict[str, Path],
    batch1: dict[str, np.ndarray],
    batch_n: dict[str, np.ndarray],
    settings: BenchSettings = BenchSettings(),
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Path] | None = None,
) -> dict[str, dict]:
    """Latency at batch 1 and throughput at ``batch_n`` rows for each ONNX model (and
    batch-1 latency only for the ``latency_only`` models, in the same rounds)."""
    sessions = open_sessions(paths, settings)
    extra = open_sessions(latency_only or {}, settings)
    return bench_calls(
        {k: session_call(s, batch1) for k, s in sessions.items()},
        {k: session_call(s, batch_n) for k, s in sessions.items()},
        len(next(iter(batch_n.values()))),
        settings,
        on_round,
        {k: session_call(s, batch1) for k, s in extra.items()},
    )


def bench_with_callable(
    teacher: CallableTeacher,
    path: Path,
    batch1: dict[str, np.ndarray],
    batch_n: dict[str, np.ndarray],
    settings: BenchSettings = BenchSettings(),
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Path] | None = None,
) -> dict[str, dict]:
    """A callable teacher (``baseline``: its own predict, called as the user calls it) and an
    ONNX model (``compressed``), timed in the same interleaved rounds."""
    sess = open_sessions({"compressed": path}, settings)["compressed"]

    def own(feed: dict[str, np.ndarray]) -> Callable[[], object]:
        arg = teacher.predict_arg(feed)
        return lambda: teacher.predict(arg)

    extra = open_sessions(latency_only or {}, settings)
    return bench_calls(
        {"baseline": own(batch1), "compressed": session_call(sess, batch1)},
        {"baseline": own(batch_n), "compressed": session_call(sess, batch_n)},
        len(next(iter(batch_n.values()))),
        settings,
        on_round,
        {k: session_call(s, batch1) for k, s in extra.items()},
    )


def bench_torch(
    module: nn.Module,
    input_names: list[str],
    batch1: dict[str, np.ndarray],
    settings: BenchSettings = BenchSettings(),
) -> dict:
    """Eager PyTorch fp32 latency at batch 1 (a reference; not what presso deploys)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(settings.thread_count)
    try:
        args = [torch.from_numpy(np.ascontiguousarray(batch1[k])) for k in input_names]

        def call() -> None:
            with torch.inference_mode():
                module(*args)

        times = interleaved(
            {"torch": call},
            BenchSettings(rounds=max(3, settings.rounds // 2), round_seconds=settings.round_seconds),
        )
    finally:
        torch.set_num_threads(previous)
    ms = np.asarray(times["torch"]) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p95": round(float(np.percentile(ms, 95)), 4),
        "batch": 1,
    }
