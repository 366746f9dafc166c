"""Loading an artifact (or any ONNX file) as a predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from presso.errors import PressoError, reason
from presso.files import pinned_folder
from presso.runtime.session import INPUT_DTYPES, length_free, make_session, run_session


class Predictor:
    """Runs a deployed model on ONNX Runtime.

    ``predict`` takes a dict of named arrays, one array (single-input models) or a list
    of strings (text models saved with their tokenizer) and returns the model's output.
    """

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Any = None,
        task: str | None = None,
        threads: int | None = None,
        seq_len: int = 128,
    ):
        self.model_path = Path(model_path)
        source: Path | bytes = self.model_path
        if self.model_path.suffix == ".packed":  # unpacked in memory, never on disk
            from presso.export.packed import unpack

            try:
                source = unpack(self.model_path).SerializeToString()
            except PressoError:
                raise
            except Exception as exc:  # protobuf's errors share no base class with presso's
                raise PressoError(
                    f"'{self.model_path}' does not unpack to an ONNX model ({reason(exc)}): is it a "
                    "whole file presso wrote?"
                ) from None
        # make_session names a model ONNX Runtime refuses as the model's fault
        self.session = make_session(source, threads=threads, name=self.model_path.name)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer, self.task, self.seq_len = tokenizer, task, seq_len
        # Asked once: ORT builds new Python objects on every get_inputs() / get_outputs().
        self._length_free = length_free(self.session)

    def __repr__(self) -> str:
        return f"Predictor({str(self.model_path)!r}, inputs={self.input_names}, task={self.task!r})"

    def predict(self, inputs: Any, batch_size: int = 256, max_padding: float | None = None) -> np.ndarray:
        """Outputs for ``inputs``, one row per input row, in the given order.

        Texts are tokenized at their real length: sorted by length into batches of
        ``batch_size``, each padded only to its longest text (none at batch 1), truncated
        to the run's token limit (``seq_len``). ``max_padding`` (e.g. 1.5) also starts a
        new batch before a text the batch would pad beyond that many times its length."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
            return self._predict_texts(texts, batch_size, max_padding)
        return run_session(self.session, self._feed(inputs), batch_size=batch_size)

    def _predict_texts(self, texts: list[str], batch_size: int, max_padding: float | None) -> np.ndarray:
        if self.tokenizer is None:
            raise PressoError("This model has no tokenizer; pass token arrays, not strings.")
        from presso.data.text_batches import one_text, text_batches

        fixed = None if self._length_free else self._fixed_length()
        if len(texts) == 1 and fixed is None:  # the real-time path: no sorting, no padding
            feed = one_text(texts[0], self.tokenizer, self.input_names, self.seq_len)
            return self.session.run(None, feed)[0].astype(np.float32, copy=False)
        out: np.ndarray | None = None
        for rows, feed in text_batches(
            texts,
            self.tokenizer,
            self.input_names,
            self.seq_len,
            batch_size,
            fixed_length=fixed,
            max_padding=max_padding,
        ):
            got = self.session.run(None, feed)[0]
            if out is None:
                out = np.empty((len(texts), *got.shape[1:]), np.float32)
            out[rows] = got
        assert out is not None  # texts is not empty
        return out

    def _fixed_length(self) -> int:
        """The sequence length of a model whose inputs have a fixed one (else ``seq_len``)."""
        dim = self.session.get_inputs()[0].shape
        return dim[1] if len(dim) > 1 and isinstance(dim[1], int) and dim[1] > 0 else self.seq_len

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise PressoError(f"Missing inputs {missing}; the model takes {self.input_names}.")
            return {n: self._cast(n, np.asarray(inputs[n])) for n in self.input_names}
        if isinstance(inputs, list) and not inputs:
            raise PressoError("Nothing to predict: the list of inputs is empty.")
        if len(self.input_names) != 1:
            raise PressoError(f"The model takes inputs {self.input_names}: pass a dict of arrays.")
        return {self.input_names[0]: self._cast(self.input_names[0], np.asarray(inputs))}

    def _cast(self, name: str, a: np.ndarray) -> np.ndarray:
        kind = next(i.type for i in self.session.get_inputs() if i.name == name)
        return a.astype(INPUT_DTYPES.get(kind, np.float32), copy=False)


def load(path: str | Path, threads: int | None = None) -> Predictor:
    """Load an artifact folder written by ``presso compress``, a bare ``.onnx`` file or a
    ``.packed`` file (``presso.export.packed``; a folder may hold ``model.packed`` alone).

    A folder is read through one handle on it, so a run replacing the artifact meanwhile
    never gives a mix of its old and new files; when the old folder is removed while it
    is read, the new one is read instead."""
    path = Path(path)
    if not path.is_dir():
        return _load(path, threads)
    attempts = 5  # each one lost only to a replacement that landed while it read
    for attempt in range(attempts):
        folder, inode = path, None
        try:
            with pinned_folder(path) as folder:
                inode = folder.stat().st_ino
                predictor = _load(folder, threads)
                if attempt < attempts - 1 and _replaced(path, inode):  # some files may be gone
                    continue
        except (OSError, PressoError) as exc:
            if attempt < attempts - 1 and inode is not None and _replaced(path, inode):
                continue  # the folder was swapped for a new artifact while it was read
            if isinstance(exc, PressoError) and folder != path:  # name it as the user did
                raise PressoError(str(exc).replace(str(folder), str(path))) from None
            raise
        predictor.model_path = path / predictor.model_path.name
        return predictor
    raise AssertionError("unreachable")


def _replaced(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino != inode
    except OSError:
        return False


def _load(path: Path, threads: int | None) -> Predictor:
    task, tokenizer, max_tokens = None, None, 128
    if path.is_dir():
        model = path / "model.onnx"
        if not model.is_file() and (path / "model.packed").is_file():
            model = path / "model.packed"
        if not model.is_file():
            raise PressoError(f"'{path}' is not a presso artifact (no model.onnx or model.packed).")
        if (path / "report.json").is_file():
            report = _report(path / "report.json")
            task = report.get("task")
            max_tokens = (report.get("data") or {}).get("max_tokens") or max_tokens
        if (path / "tokenizer").is_dir():
            tokenizer = _tokenizer(path / "tokenizer")
        path = model
    elif path.suffix not in (".onnx", ".packed") or not path.is_file():
        raise PressoError(f"'{path}' is neither an artifact folder, an .onnx file nor a .packed file.")
    if path.suffix == ".onnx":
        from presso.model.onnx_file import load_onnx

        load_onnx(path, scores=False)  # a corrupt file gets presso's clear error, not ORT's
    return Predictor(path, tokenizer=tokenizer, task=task, threads=threads, seq_len=max_tokens)


def _report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PressoError(f"'{path}' is not a readable report ({exc}); re-run presso compress.") from None
    if not isinstance(report, dict):
        raise PressoError(f"'{path}' is not a presso report (not a JSON object); re-run presso compress.")
    return report


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... by file
        raise PressoError(
            f"The artifact's tokenizer in '{folder}' does not load ({reason(exc, 200)})."
        ) from None
