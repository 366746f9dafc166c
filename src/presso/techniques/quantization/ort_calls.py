"""Calling ONNX Runtime's quantization tools without touching the caller's process state.

ORT's quantizer logs advice at INFO / WARNING, on its own loggers and on the root logger
(``logging.warning``): :func:`quiet_ort` drops ORT's records below ERROR, and only
those, while presso quantizes. ORT's symbolic shape inference writes its temporary files
(``sym_shape_infer_temp.onnx`` and a ``<uuid>`` external-data file of the model's size)
into the current directory when it gives up: :func:`in_folder` runs that one call with the
working directory set to presso's own work folder, under a lock, and puts it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_CWD = threading.Lock()  # the working directory is the process's: one such call at a time


class _OrtAdvice(logging.Filter):
    """Drops ORT's records below ERROR; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_ort = record.name.startswith("onnxruntime") or f"{os.sep}onnxruntime{os.sep}" in record.pathname
        return record.levelno >= logging.ERROR or not from_ort


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    ort, root, advice = logging.getLogger("onnxruntime"), logging.getLogger(), _OrtAdvice()
    level = ort.level
    ort.setLevel(logging.ERROR)  # ORT's own module loggers (onnxruntime.*) inherit it
    root.addFilter(advice)  # ORT's logging.warning(...) calls log on the root logger itself
    try:
        yield
    finally:
        root.removeFilter(advice)
        ort.setLevel(level)


@contextlib.contextmanager
def in_folder(folder: Path) -> Iterator[None]:
    with _CWD:
        before = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(before)
