"""Atomic file writes: a file appears whole under its name, or stays as it was.

Writing a file in place leaves a window in which it is half written: another process
reading it then (a search worker, a browser reloading a report, a ``--resume`` after a
crash) sees a truncated file, and an exception or Ctrl-C in the middle leaves one behind
for good, in place of the previous, whole file. So presso writes to a temporary file in
the same folder and renames it onto the final name with :func:`os.replace`, which is
atomic on one file system (hence the same folder, not the system's temporary folder):
readers see the old file or the new one, never a mix, and a failed write removes the
temporary file and leaves the old one untouched.

>>> from presso.files import atomic_path, write_text_atomic
>>> write_text_atomic("notes.txt", "hello")  # doctest: +SKIP
>>> with atomic_path("model.onnx") as tmp:  # doctest: +SKIP
...     onnx.save(model, str(tmp))

Standard library only: every part of presso may import it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed onto ``path`` when the block ends.

    When the block raises (any exception, Ctrl-C included) the temporary file is removed
    and ``path`` is left as it was. The temporary file is not created here, so the writer
    creates it with the usual permissions; its name, ``.{name}.{random}.tmp``, is hidden
    and unique, so concurrent writers of one file do not collide (the last rename wins).
    Data is not forced to disk (no fsync): open the path yourself and ``os.fsync`` where
    a power cut must not lose the new content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """``Path(path).write_text(text, encoding)``, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
