"""A text file a student trains on without ever holding it tokenized in memory.

``train_data`` for a text model may hold millions of lines: padded to 128 tokens they
would take kilobytes a line. Instead one pass in chunks records, per non-empty line, where
it starts and ends in the file, its token length (truncated at the run's ``seq_len``) and
whether it repeats a held-out evaluation text (then it is never trained on); the same
pass runs the teacher on the chunk, lines of similar length together, and writes one
output row per line into an ``.npy`` file in the teacher cache, read back as a memory map.
Its name digests every line's token ids (the text, the tokenizer and the truncation) and
the teacher's outputs on fixed probe texts (its weights): a later run with the same file and
teacher reads it instead of running the teacher; any change misses.

Training batches (:meth:`TextStream.batches`) are tokenized when drawn, each padded to its
own longest text (:class:`presso.train.batches.LengthBuckets`).
"""

from __future__ import annotations

import array
import hashlib
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from presso.data.sources import encode_texts
from presso.errors import PressoError
from presso.files import atomic_path
from presso.progress import SILENT, Progress
from presso.runtime.lengths import real_lengths, trim

Inputs = dict[str, np.ndarray]
CHUNK = 2048  # lines tokenized and labelled at a time: bounds the memory a pass takes
TEACHER_BATCH = 64
PROBE_TEXTS = (
    "The teacher's outputs on these texts fingerprint its weights.",
    "A second, longer probe sentence makes sure that padding and attention are part of it too.",
)


def row_lengths(inputs: Inputs) -> np.ndarray:
    """Tokens per row of token arrays: the real lengths when right-padded, else the full width."""
    lengths = real_lengths(inputs)
    if lengths is None:
        first = next(iter(inputs.values()))
        return np.full(len(first), first.shape[1], np.int64)
    return lengths


def _digest(ids) -> bytes:
    return hashlib.sha1(np.asarray(ids, np.int64).tobytes()).digest()


def heldout_digests(evaluation: Inputs | None) -> set[bytes]:
    """Digests of the held-out rows' token ids at their real length."""
    if evaluation is None or "input_ids" not in evaluation:
        return set()
    ids, lengths = evaluation["input_ids"], row_lengths(evaluation)
    return {_digest(ids[i, : lengths[i]]) for i in range(len(ids))}


def _line_chunks(path: Path) -> Iterator[list[tuple[int, int, str]]]:
    """(start, end, text) of the non-empty lines of ``path``, ``CHUNK`` lines at a time."""
    chunk: list[tuple[int, int, str]] = []
    pos = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                chunk.append((pos, pos + len(raw), _decode(raw, path)))
                if len(chunk) == CHUNK:
                    yield chunk
                    chunk = []
            pos += len(raw)
    if chunk:
        yield chunk


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PressoError(f"'{path}' is not UTF-8 text. Save it as UTF-8, one text per line.") from None


@dataclass
class TextStream:
    """An indexed text file and the teacher's outputs on its lines (see the module docstring)."""

    path: Path
    starts: np.ndarray  # (lines,) byte offsets
    ends: np.ndarray
    lengths: np.ndarray  # (lines,) tokens after truncation at seq_len
    keep: np.ndarray  # line numbers trained on: those not repeating a held-out text
    teacher: np.ndarray  # (lines, ...) float32, a memory map of the cached file
    cached: bool  # the teacher outputs were read from the cache
    cache_file: Path | None

    @property
    def n_lines(self) -> int:
        return len(self.lengths)

    @property
    def n_heldout(self) -> int:
        return self.n_lines - len(self.keep)

    def texts(self, lines: np.ndarray) -> list[str]:
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return [_decode(mm[self.starts[i] : self.ends[i]], self.path) for i in lines]


def open_text_stream(
    path: Path,
    tokenizer: Any,
    input_names: list[str],
    seq_len: int,
    teacher_fn: Callable[[Inputs], Any],
    evaluation: Inputs | None,
    cache: Path | None,
    log: Callable[[str], None] = lambda _m: None,
    progress: Progress = SILENT,
) -> TextStream:
    """Index ``path`` and label its lines with the teacher, or read the labels from ``cache``."""
    if not path.is_file():
        raise PressoError(f"train_data '{path}' does not exist. Give a text file, one text per line.")
    banned = heldout_digests(evaluation)
    # Fixed probe texts, not the run's rows: another split or seed still finds the cache.
    probe = encode_texts(list(PROBE_TEXTS), input_names, tokenizer, seq_len)
    fingerprint = np.ascontiguousarray(np.asarray(teacher_fn(probe), np.float32)).round(5)
    key = hashlib.sha1(fingerprint.tobytes() + f"{seq_len} {sorted(input_names)}".encode())
    starts, ends, lengths, keep = array.array("q"), array.array("q"), array.array("i"), array.array("q")
    for chunk in _line_chunks(path):
        ids = tokenizer([text for _, _, text in chunk], truncation=True, max_length=seq_len)["input_ids"]
        for (s, e, _), row in zip(chunk, ids, strict=True):
            d = _digest(row)
            key.update(d)
            if d not in banned:
                keep.append(len(lengths))
            starts.append(s)
            ends.append(e)
            lengths.append(len(row))
    if not lengths:
        raise PressoError(f"train_data '{path}' has no non-empty lines of text.")
    stream = TextStream(
        path,
        np.frombuffer(starts, np.int64),
        np.frombuffer(ends, np.int64),
        np.frombuffer(lengths, np.int32),
        np.frombuffer(keep, np.int64),
        np.empty((0,), np.float32),
        False,
        None,
    )
    shape = (len(lengths), *fingerprint.shape[1:])
    file = None if cache is None else cache / f"text-{key.hexdigest()}.npy"
    stream.cache_file = file
    if file is not None and file.is_file():
        try:
            out = np.load(file, mmap_mode="r", allow_pickle=False)
            if out.shape == shape:
                log(f"distill: teacher outputs on {len(lengths)} lines read from the cache ({file})")
                stream.teacher, stream.cached = out, True
                return stream
        except (OSError, ValueError):
            pass  # unreadable: labelled again below
    log(f"distill: labelling {len(lengths)} lines of {path.name} with the teacher")
    with progress.task(f"distill: labelling {path.name} with the teacher", total=len(lengths)) as advance:
        stream.teacher = _label(stream, tokenizer, input_names, seq_len, teacher_fn, shape, file, advance)
    return stream


def _label(
    stream: TextStream, tokenizer, input_names, seq_len, teacher_fn, shape, file: Path | None, advance
):
    """The teacher's outputs on every line, ``CHUNK`` lines at a time, similar lengths batched."""

    def fill(out: np.ndarray) -> None:
        for start in range(0, stream.n_lines, CHUNK):
            lines = np.arange(start, min(start + CHUNK, stream.n_lines))
            lines = lines[np.argsort(stream.lengths[lines], kind="stable")]
            texts = stream.texts(lines)
            for i in range(0, len(lines), TEACHER_BATCH):
                part = lines[i : i + TEACHER_BATCH]
                longest = int(stream.lengths[part].max())
                enc = encode_texts(texts[i : i + TEACHER_BATCH], input_names, tokenizer, seq_len, longest)
                out[part] = np.asarray(teacher_fn(enc), np.float32).reshape(len(part), *shape[1:])
                advance(len(part))

    if file is None:
        out = np.empty(shape, np.float32)
        fill(out)
        return out
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            fill(out)
            out.flush()
            del out
    except OSError:  # a read-only cache: label into memory instead (costs memory, not correctness)
        out = np.empty(shape, np.float32)
        fill(out)
        return out
    return np.load(file, mmap_mode="r", allow_pickle=False)


def text_batches(
    stream: TextStream,
    rows: Inputs,
    teacher: np.ndarray,
    labels: np.ndarray | None,
    tokenizer: Any,
    seq_len: int,
    batch_size: int,
    targets: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    no_label: int,
):
    """Length-bucketed batches over the in-memory ``rows`` (token arrays, right-padded; their
    ``teacher`` outputs and ``labels``) and the stream's kept lines, each padded to its own
    longest text; ``targets(teacher rows, labels)`` makes a batch's training targets."""
    from presso.train.batches import LengthBuckets

    names = list(rows)
    n_rows, n_out = len(teacher), int(np.prod(teacher.shape[1:]))
    lengths = np.concatenate([row_lengths(rows), stream.lengths[stream.keep]])

    def fetch(batch: np.ndarray):
        batch = np.sort(batch)
        longest = int(lengths[batch].max())
        own, lines = batch[batch < n_rows], stream.keep[batch[batch >= n_rows] - n_rows]
        own_rows = {k: v[own] for k, v in rows.items()}
        # without a mask every in-memory row counts as full width, so there is nothing to cut
        parts = [trim(own_rows, longest) if "attention_mask" in own_rows else own_rows] if len(own) else []
        if len(lines):
            parts.append(encode_texts(stream.texts(lines), names, tokenizer, seq_len, longest))
        inputs = {k: np.concatenate([p[k] for p in parts]) for k in names}
        outs = np.concatenate(
            [
                teacher[own].reshape(len(own), n_out),
                np.asarray(stream.teacher[lines]).reshape(len(lines), n_out),
            ]
        )
        y = None
        if labels is not None:
            y = np.concatenate([labels[own], np.full(len(lines), no_label, labels.dtype)])
        return inputs, targets(outs, y)

    return LengthBuckets(lengths, fetch, batch_size)
