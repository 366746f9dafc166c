"""Timing text models on the held-out texts as users send them, next to the padded figure.

Token rows are stored padded to the run's token limit (``seq_len``), which describes nobody's
texts: a length-free encoder (see :func:`presso.runtime.session.length_free`) on ~20-token
sentences runs several times faster than at 128 tokens. So a text model is timed

- at batch 1, one held-out text per call at its real length (the texts cycled in a seeded
  order, so the calls of any round are a fair sample of the lengths), p50 / p95 over calls;
- for throughput, whole passes over the held-out texts (up to PASS_TEXTS, evenly chosen) in
  length-sorted batches cut to their longest text (what sentence-transformers' ``encode``
  does): texts per second;
- and, in the very same interleaved rounds, at the padded length (batch 1 and throughput),
  the figure a fixed-shape deployment would pay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.measure.bench import (
    SAMPLES,
    BenchSettings,
    CallableTeacher,
    interleaved,
    open_sessions,
    session_call,
)
from presso.runtime.lengths import MASK, length_batches, real_lengths, trim
from presso.runtime.session import length_free

if TYPE_CHECKING:
    from torch import nn

TEXT_BATCH = 32  # texts per throughput batch at real length: what sentence-transformers encodes with
# Texts per throughput pass at most: a pass of ~20-token sentences then costs less than the 64
# rows padded to 128 timed beside it (MiniLM ran 88 texts/s on a loaded 2-core CPU: 1,024 texts
# would take 12 s a pass, and a model is timed over 10 to 14 passes).
PASS_TEXTS = 256
DEFAULT_SETTINGS = BenchSettings()
FIXED = "fixed:"  # prefix of the padded-length callables in the shared rounds

Call = Callable[[], object]
Bind = Callable[[dict[str, np.ndarray]], Call]  # a feed -> one call of a model on it


@dataclass(frozen=True)
class HeldOutTexts:
    """Held-out token rows as stored (padded to ``max_tokens``) and each row's real length."""

    inputs: dict[str, np.ndarray]
    lengths: np.ndarray

    @classmethod
    def of(cls, inputs: dict[str, np.ndarray]) -> HeldOutTexts | None:
        """The texts of ``inputs``; None unless they are right-padded token rows."""
        lengths = real_lengths(inputs)
        return None if lengths is None else cls(inputs, lengths)

    @property
    def max_tokens(self) -> int:
        return int(self.inputs[MASK].shape[1])

    @property
    def median_tokens(self) -> float:
        return float(np.median(self.lengths))

    def one_by_one(self) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        """Each text as a batch-1 feed cut to its length, in a seeded order (any run of
        consecutive calls then samples all lengths, not the file's first lines), and its tokens."""
        order = np.random.default_rng(0).permutation(len(self.lengths))
        feeds = [trim({k: v[i : i + 1] for k, v in self.inputs.items()}, int(self.lengths[i])) for i in order]
        return feeds, [int(self.lengths[i]) for i in order]

    def pass_batches(self, batch: int) -> list[dict[str, np.ndarray]]:
        """The texts of one throughput pass (at most PASS_TEXTS, evenly chosen), longest first,
        in batches of ``batch`` cut to their longest text."""
        keep = np.unique(np.linspace(0, len(self.lengths) - 1, min(PASS_TEXTS, len(self.lengths))).round())
        rows, lengths = keep.astype(int), self.lengths[keep.astype(int)]
        return [
            trim({k: v[rows[b]] for k, v in self.inputs.items()}, int(lengths[b].max()))
            for b in length_batches(lengths, batch)
        ]


@dataclass
class _Cycle:
    """One call per text, cycling through ``calls``; ``ran`` logs each call's tokens (warm-up
    calls included: the timed calls are the last ones)."""

    calls: list[Call]
    tokens: list[int]
    ran: list[int] = field(default_factory=list)
    i: int = 0

    def __call__(self) -> object:
        k = self.i % len(self.calls)
        self.i += 1
        self.ran.append(self.tokens[k])
        return self.calls[k]()


def _whole_pass(calls: list[Call]) -> Call:
    return lambda: [c() for c in calls]


def _percentiles(seconds: list[float]) -> tuple[np.ndarray, dict[str, float]]:
    ms = np.asarray(seconds) * 1e3
    return ms, {"p50": round(float(np.percentile(ms, 50)), 4), "p95": round(float(np.percentile(ms, 95)), 4)}


def bench_text_calls(
    binds: dict[str, Bind],
    texts: HeldOutTexts,
    fixed_rows: dict[str, np.ndarray],
    settings: BenchSettings = DEFAULT_SETTINGS,
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Bind] | None = None,
) -> dict[str, Any]:
    """Each model of ``binds`` timed at the texts' real lengths (batch 1, one text per call;
    throughput over length-sorted batches) and on ``fixed_rows`` (padded rows; the first
    one at batch 1, all of them per throughput call), every figure in shared interleaved
    rounds; ``latency_only`` models join the batch-1 real-length rounds (their p50 under
    ``"latency_only"``). The per-model dicts are shaped like :func:`bench.summarize`'s."""
    feeds, tokens = texts.one_by_one()
    first = {k: v[:1] for k, v in fixed_rows.items()}
    n_fixed = len(next(iter(fixed_rows.values())))
    batch = min(TEXT_BATCH, n_fixed)  # n_fixed: the throughput batch, 1 for a fixed-batch model
    batches = texts.pass_batches(batch)
    n_pass = sum(len(b[MASK]) for b in batches)
    everything = {**binds, **(latency_only or {})}
    cycles = {k: _Cycle([bind(f) for f in feeds], tokens) for k, bind in everything.items()}
    lat = interleaved({**cycles, **{FIXED + k: bind(first) for k, bind in binds.items()}}, settings, on_round)
    thr_settings = BenchSettings(
        rounds=max(3, settings.rounds // 2), round_seconds=settings.round_seconds, threads=settings.threads
    )
    thr = interleaved(
        {
            **{k: _whole_pass([bind(b) for b in batches]) for k, bind in binds.items()},
            **{FIXED + k: bind(fixed_rows) for k, bind in binds.items()},
        },
        thr_settings,
        on_round,
    )
    out: dict[str, Any] = {}
    for k in binds:
        ms, real = _percentiles(lat[k])
        ran = cycles[k].ran[-len(ms) :]  # the timed calls: those after the warm-up ones
        keep = np.linspace(0, len(ms) - 1, min(SAMPLES, len(ms))).round().astype(int)
        _, fixed = _percentiles(lat[FIXED + k])
        out[k] = {
            "latency_ms": {
                **real,
                "batch": 1,
                "samples": [round(float(t), 4) for t in ms[keep]],
                "sample_tokens": [ran[i] for i in keep],
                "basis": "real length",
                "tokens": texts.median_tokens,
            },
            "throughput_per_s": round(n_pass / float(np.median(thr[k])), 2),
            "throughput_batch": batch,
            "fixed_length": {
                "tokens": texts.max_tokens,
                "latency_ms": {**fixed, "batch": 1, "basis": "fixed length", "tokens": texts.max_tokens},
                "throughput_per_s": round(n_fixed / float(np.median(thr[FIXED + k])), 2),
                "throughput_batch": n_fixed,
            },
        }
    out["latency_only"] = {k: _percentiles(lat[k])[1]["p50"] for k in latency_only or {}}
    return out


def bench_onnx_texts(
    paths: dict[str, Path],
    texts: HeldOutTexts,
    fixed_rows: dict[str, np.ndarray],
    settings: BenchSettings = DEFAULT_SETTINGS,
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Path] | None = None,
) -> dict[str, Any] | None:
    """:func:`bench_text_calls` for ONNX models; None when one of them is not length-free
    (it would be timed on padding: the caller then times every model on the stored rows)."""
    sessions = open_sessions(paths, settings)
    extra = open_sessions(latency_only or {}, settings)
    if not all(length_free(s) for s in [*sessions.values(), *extra.values()]):
        return None
    return bench_text_calls(
        {k: partial(session_call, s) for k, s in sessions.items()},
        texts,
        fixed_rows,
        settings,
        on_round,
        {k: partial(session_call, s) for k, s in extra.items()},
    )


def bench_callable_texts(
    teacher: CallableTeacher,
    path: Path,
    texts: HeldOutTexts,
    fixed_rows: dict[str, np.ndarray],
    settings: BenchSettings = DEFAULT_SETTINGS,
    on_round: Callable[[], None] | None = None,
    latency_only: dict[str, Path] | None = None,
) -> dict[str, Any] | None:
    """A callable teacher (``baseline``, its own predict) and an ONNX model (``compressed``)
    at the texts' real lengths; None when the ONNX models are not length-free or the teacher
    refuses a text cut to its length (a fixed-length teacher: timed on the stored rows)."""

    def own(feed: dict[str, np.ndarray]) -> Call:
        arg = teacher.predict_arg(feed)
        return lambda: teacher.predict(arg)

    feeds, _ = texts.one_by_one()
    shortest = min(feeds, key=lambda f: f[MASK].shape[1])
    try:
        own(shortest)()
    except Exception:  # noqa: BLE001 - any refusal of a short row means: time it padded
        return None
    sessions = open_sessions({"compressed": path, **(latency_only or {})}, settings)
    if not all(length_free(s) for s in sessions.values()):
        return None
    compressed = sessions.pop("compressed")
    return bench_text_calls(
        {"baseline": own, "compressed": partial(session_call, compressed)},
        texts,
        fixed_rows,
        settings,
        on_round,
        {k: partial(session_call, s) for k, s in sessions.items()},
    )


def bench_torch_texts(
    module: nn.Module,
    input_names: list[str],
    texts: HeldOutTexts,
    fixed_rows: dict[str, np.ndarray],
    settings: BenchSettings = DEFAULT_SETTINGS,
) -> dict[str, Any]:
    """Eager PyTorch fp32 at batch 1 (a reference; not what presso deploys): p50 / p95 at the
    texts' real lengths, one text per call, and at the padded length, in shared rounds."""
    import torch

    def bind(feed: dict[str, np.ndarray]) -> Call:
        args = [torch.from_numpy(np.ascontiguousarray(feed[k])) for k in input_names]

        def call() -> None:
            with torch.inference_mode():
                module(*args)

        return call

    feeds, tokens = texts.one_by_one()
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.thread_count)
    try:
        times = interleaved(
            {
                "torch": _Cycle([bind(f) for f in feeds], tokens),
                FIXED: bind({k: v[:1] for k, v in fixed_rows.items()}),
            },
            BenchSettings(rounds=max(3, settings.rounds // 2), round_seconds=settings.round_seconds),
        )
    finally:
        torch.set_num_threads(previous)
    return {
        **_percentiles(times["torch"])[1],
        "batch": 1,
        "basis": "real length",
        "tokens": texts.median_tokens,
        "fixed_length": {"tokens": texts.max_tokens, **_percentiles(times[FIXED])[1]},
    }
