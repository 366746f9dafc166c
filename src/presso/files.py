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

Standard library (and presso.errors) only: every part of presso may import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from presso.errors import PressoError


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


# ---------------------------------------------------------------- folders


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system cannot, the paths untouched."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc 2.28+, musl 1.2.5+
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if done == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):  # unsupported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest`` (same file system), removing what ``dest`` held.

    Where the system can swap two paths atomically (Linux), a reader of ``dest`` sees the
    old folder or the new one, never neither, and two writers racing each leave a whole
    folder (the last one wins). Elsewhere the old folder is moved aside first, which
    leaves ``dest`` missing for the moment between two renames.
    """
    if not dest.exists():
        try:
            os.replace(new, dest)
            return
        except OSError as exc:  # another writer put a folder there meanwhile: swap with it
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _renameat2_exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(2)}")
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def pinned_folder(path: Path) -> Iterator[Path]:
    """A path to the folder ``path`` names now that keeps naming it while the block runs,
    even if ``path`` is replaced meanwhile (``/proc/self/fd``, Linux): files read through
    it all come from one folder. Elsewhere ``path`` itself."""
    if not Path("/proc/self/fd").is_dir():
        yield path
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``.{name}.lock`` beside the output folder ``out`` while the block runs, so a
    second run writing the same folder fails at once instead of racing the first: raises
    :class:`OutputBusy` naming the holder's process id. The lock is the kernel's (flock), so
    a killed run never leaves a stale one; the file is removed on release."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the folder swap alone keeps artifacts whole
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PressoError(
                f"Cannot write in '{lock.parent}' ({exc.strerror or exc}): choose another --out."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(out, holder) from None
        try:  # the file locked may have been removed by its last holder after it was opened
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


class OutputBusy(PressoError):
    def __init__(self, out: Path, holder: str):
        super().__init__(
            f"Another presso run (process {holder}) is writing '{out}': wait for it to finish, or "
            "choose another --out."
        )
