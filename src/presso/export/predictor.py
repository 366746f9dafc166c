"""Loading an artifact (or any ONNX file) as a predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from presso.errors import PressoError
from presso.runtime.session import make_session, run_session


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
        if self.model_path.suffix == ".packed":  # unpacked in memory, never on disk
            from presso.export.packed import unpack

            self.session = make_session(unpack(self.model_path).SerializeToString(), threads=threads)
        else:
            self.session = make_session(self.model_path, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer, self.task, self.seq_len = tokenizer, task, seq_len

    def __repr__(self) -> str:
        return f"Predictor({str(self.model_path)!r}, inputs={self.input_names}, task={self.task!r})"

    def predict(self, inputs: Any, batch_size: int = 256) -> np.ndarray:
        return run_session(self.session, self._feed(inputs), batch_size=batch_size)

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs):
            if self.tokenizer is None:
                raise PressoError("This model has no tokenizer; pass token arrays, not strings.")
            from presso.data.sources import from_texts

            return from_texts(inputs, self.input_names, self.tokenizer, self.seq_len).inputs
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise PressoError(f"Missing inputs {missing}; the model takes {self.input_names}.")
            return {n: self._cast(n, np.asarray(inputs[n])) for n in self.input_names}
        if len(self.input_names) != 1:
            raise PressoError(f"The model takes inputs {self.input_names}: pass a dict of arrays.")
        return {self.input_names[0]: self._cast(self.input_names[0], np.asarray(inputs))}

    def _cast(self, name: str, a: np.ndarray) -> np.ndarray:
        kind = next(i.type for i in self.session.get_inputs() if i.name == name)
        return a.astype(np.int64) if "int64" in kind else a.astype(np.float32)


def load(path: str | Path, threads: int | None = None) -> Predictor:
    """Load an artifact folder written by ``presso compress``, a bare ``.onnx`` file or a
    ``.packed`` file (``presso.export.packed``; a folder may hold ``model.packed`` alone)."""
    path = Path(path)
    task, tokenizer = None, None
    if path.is_dir():
        model = path / "model.onnx"
        if not model.is_file() and (path / "model.packed").is_file():
            model = path / "model.packed"
        if not model.is_file():
            raise PressoError(f"'{path}' is not a presso artifact (no model.onnx or model.packed).")
        if (path / "report.json").is_file():
            task = json.loads((path / "report.json").read_text()).get("task")
        if (path / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
        path = model
    elif path.suffix == ".onnx" and path.is_file():
        from presso.model.onnx_file import load_onnx

        load_onnx(path)  # a corrupt file gets presso's clear error, not ORT's
    elif path.suffix != ".packed" or not path.is_file():
        raise PressoError(f"'{path}' is neither an artifact folder, an .onnx file nor a .packed file.")
    return Predictor(path, tokenizer=tokenizer, task=task, threads=threads)
