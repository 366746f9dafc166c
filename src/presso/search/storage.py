"""Where a study lives: an SQLite file in the output folder by default, or a database
server (PostgreSQL) that workers on many machines share.

Optuna's RDB storage does the work; presso checks the URL first and turns every way it can
go wrong (not a URL, an unknown database, a missing driver, a server that does not answer,
wrong credentials) into one line naming the problem and the fix. Workers beat a heartbeat:
a worker that dies mid-trial has that trial marked failed by the next worker that starts
one, and the same choices are tried again once (the finished trials were already committed).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path

from presso.errors import PressoError

HEARTBEAT_SECONDS = 10
# A running trial whose worker has not beaten for this long is taken as dead.
GRACE_SECONDS = 40
_SUPPORTED = ("sqlite", "postgresql")
_PG_DRIVERS = ("psycopg2", "psycopg")  # presso[postgres] installs the first
_ATTEMPTS = 5  # to open a new database other workers are creating too
_EXAMPLES = "sqlite:///path/study.db or postgresql://user:password@host:5432/dbname"


def default_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def redact(url: str) -> str:
    """The URL without its password, for messages and reports."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def with_driver(url: str) -> str:
    """``url`` with an installed PostgreSQL driver named where it names none: SQLAlchemy 2.1 reads a
    bare ``postgresql://`` as psycopg 3, while ``presso[postgres]`` installs psycopg2."""
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername != "postgresql":
        return url
    installed = [d for d in _PG_DRIVERS if importlib.util.find_spec(d) is not None] or [_PG_DRIVERS[0]]
    return parsed.set(drivername=f"postgresql+{installed[0]}").render_as_string(hide_password=False)


def check_url(url: str) -> str:
    """Validate ``url`` without connecting; returns the database kind."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in url:
        raise PressoError(f"--storage '{url}' is not a database URL. Use {_EXAMPLES}.")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise PressoError(
            f"--storage '{redact(url)}' is not a valid database URL ({exc}). Use {_EXAMPLES}."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in _SUPPORTED:
        raise PressoError(
            f"--storage: presso stores studies in SQLite or PostgreSQL, not '{backend}'. Use {_EXAMPLES}."
        )
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise PressoError(
                "--storage: an in-memory SQLite database cannot be shared or resumed; give a file, "
                "e.g. sqlite:///path/study.db (three slashes, then the path)."
            )
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise PressoError(
                f"--storage: the folder of the SQLite file, {folder}, does not exist. Create it "
                "or give another path."
            )
    else:
        parsed = make_url(with_driver(url))
        driver = parsed.get_driver_name()
        module = {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000"}.get(driver, driver)
        try:
            __import__(module)
        except ImportError:
            raise PressoError(
                f"--storage: PostgreSQL needs the '{module}' driver, which is not installed. "
                "Install it with: pip install 'presso[postgres]'."
            ) from None
        if not parsed.host and not parsed.query.get("host"):
            raise PressoError(
                f"--storage '{redact(url)}' names no server: give host (and port), "
                "e.g. postgresql://user:password@db.example.com:5432/presso."
            )
    return backend


def open_storage(url: str):
    """An Optuna RDB storage at ``url``, connected (its tables made if new)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    backend = check_url(url)
    engine: dict = {"pool_pre_ping": True}
    if backend == "sqlite":
        # Two local workers write the same file: wait for the other's lock instead of failing.
        engine["connect_args"] = {"timeout": 60}
    else:
        engine["connect_args"] = {"connect_timeout": 10}
    # The environment may shorten both (tests kill a worker and wait for its trial to be retried).
    heartbeat = int(os.environ.get("PRESSO_SEARCH_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    grace = int(os.environ.get("PRESSO_SEARCH_GRACE_SECONDS", GRACE_SECONDS))
    for attempt in range(_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
                return RDBStorage(
                    with_driver(url),
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=retry,
                )
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if attempt + 1 < _ATTEMPTS and _schema_race(exc):
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
                continue
            raise PressoError(
                f"--storage: cannot open the study database at {redact(url)}: "
                f"{_first_line(exc)}. {_hint(backend)}"
            ) from None


def _schema_race(exc: BaseException) -> bool:
    """Workers started together on a new database all create Optuna's tables (and stamp its
    schema version) at once; all but one then find them made ("already exists", a duplicate
    key). Opening again sees the tables and goes on."""
    from sqlalchemy.exc import IntegrityError

    text = f"{exc} {exc.__cause__}".lower()
    return (
        isinstance(exc, IntegrityError)
        or isinstance(exc.__cause__, IntegrityError)
        or any(words in text for words in ("already exists", "duplicate key"))
    )


def _hint(backend: str) -> str:
    if backend == "sqlite":
        return "Check that the file is a study database presso or Optuna wrote, and that it can be written."
    return (
        "Is the server running and reachable from here, and are the user, password and database in the URL "
        "right (the database must exist: createdb NAME)?"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:240].rstrip(".")
