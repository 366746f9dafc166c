"""``presso search`` across processes: two workers share one study (an SQLite file, and a real
PostgreSQL server), one of them killed mid-trial; interrupted studies resume; bad storage URLs
and impossible constraints fail in one line.

The PostgreSQL tests start a throw-away server (initdb + pg_ctl, as an unprivileged user when
run as root) and skip when its binaries are absent, unless PRESSO_REQUIRE_POSTGRES=1 (CI),
where a missing server fails instead of passing silently.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAST_BENCH, read_report, run_cli

# Several worker processes and a PostgreSQL server per test: CI runs them in their own step.
pytestmark = pytest.mark.e2e

HEARTBEAT, GRACE = 1, 4  # seconds: a killed worker's trial is stale 4 s after its last beat
TRIALS = 8
FINISHED = ("COMPLETE", "PRUNED")
PG_USER, PG_PASSWORD, PG_DB = "presso", "presso5ecretpw", "studies"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Each presso process trains on one thread: the tabular example's tiny fits are faster so,
    and two workers sharing this machine's cores with all their threads run many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tabular_cached(tmp_path_factory):
    """Train the tabular example once into the session's cache (conftest's PRESSO_CACHE_DIR), so
    that concurrent workers load it instead of both training it."""
    env = {
        **os.environ,
        "PRESSO_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "presso-cache"),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from presso.examples import load_example; load_example('tabular')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _no_postgres(why: str):
    if os.environ.get("PRESSO_REQUIRE_POSTGRES") == "1":
        pytest.fail(
            f"PRESSO_REQUIRE_POSTGRES=1 but {why}: install PostgreSQL (apt-get install postgresql) "
            "to run the shared-study tests.",
            pytrace=False,
        )
    pytest.skip(f"{why}; set PRESSO_REQUIRE_POSTGRES=1 to require it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 for this session: a user with a password and an
    empty database, reached over TCP like a server on another machine."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _no_postgres("PostgreSQL's initdb / pg_ctl are not installed")
    import psycopg2

    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root: run them as 'postgres'
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _no_postgres("this runs as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="presso-pg-"))  # not under pytest's root-only tmp folder
    data, log = root / "data", root / "server.log"

    def run(*cmd: str, check: bool = True) -> None:
        done = subprocess.run([*as_user, *cmd], cwd=root, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            server = log.read_text() if log.is_file() else ""
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{server}", pytrace=False)

    started = False
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        port = _free_port()
        run(
            initdb,
            "-D",
            str(data),
            "-U",
            "admin",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        )
        started = True
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
        run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        admin = psycopg2.connect(host=str(root), port=port, user="admin", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'")
            cur.execute(f"CREATE DATABASE {PG_DB} OWNER {PG_USER}")
        admin.close()
        yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DB}"
    finally:
        if started:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ helpers


def _search_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "presso.cli.main", "search", *args, *FAST_BENCH]


def _start_worker(out: Path, url: str, study: str, log: Path) -> subprocess.Popen:
    temp = out.parent / f"{out.name}-tmp"  # a SIGKILLed worker cannot remove its work folder
    temp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(temp),
        "PRESSO_SEARCH_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "PRESSO_SEARCH_GRACE_SECONDS": str(GRACE),
    }
    argv = _search_argv(
        "--example",
        "tabular",
        "--trials",
        str(TRIALS),
        "--out",
        str(out),
        "--storage",
        url,
        "--study",
        study,
        "--threads",
        "1",
    )
    with open(log, "w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)


def _study_exists(url: str, name: str) -> bool:
    """Whether a worker has made the study yet, read without creating anything (opening an Optuna
    storage would create its tables, racing the workers that do)."""
    import sqlalchemy

    from presso.search.storage import with_driver

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return False
    engine = sqlalchemy.create_engine(with_driver(url))
    try:
        with engine.connect() as con:
            rows = con.execute(sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": name})
            return rows.first() is not None
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _load(url: str, name: str):
    import optuna

    from presso.search.storage import with_driver

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SQLite: give up on a lock after 1 s (a worker frozen mid-write holds it), never wait past the grace.
    engine = {"connect_args": {"timeout": 1}} if url.startswith("sqlite") else {}
    return optuna.load_study(
        study_name=name, storage=optuna.storages.RDBStorage(with_driver(url), engine_kwargs=engine)
    )


def _read(study) -> list | None:
    try:
        return study.get_trials(deepcopy=True)
    except Exception:  # noqa: BLE001 - the SQLite file is locked by a worker's write: read again
        return None


def _tail(log: Path) -> str:
    return log.read_text()[-4000:] if log.is_file() else "(no log)"


def _busy(t) -> bool:
    """A running trial past its choices (its recipe made: summary set), into its stages."""
    return t.state.name == "RUNNING" and "summary" in t.user_attrs


def _kill_worker_mid_trial(study, a: subprocess.Popen, b: subprocess.Popen, a_worker: str, logs) -> tuple:
    """Wait until worker A has 2 finished trials of its own and runs a third, then SIGKILL it.
    A is frozen (SIGSTOP) while the study is re-read, so the trial seen running is the one killed.
    Returns (the killed trial's number, {number: (state, values)} of the finished trials then)."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        for p, log in zip((a, b), logs, strict=True):
            assert p.poll() is None, f"a worker exited before the kill (rc {p.returncode}):\n{_tail(log)}"
        mine = [t for t in _read(study) or [] if t.user_attrs.get("worker") == a_worker]
        if sum(t.state.name in FINISHED for t in mine) >= 2 and any(_busy(t) for t in mine):
            os.kill(a.pid, signal.SIGSTOP)
            trials = _read(study)
            if trials is None:  # A froze holding the SQLite lock: let it go on, try again
                os.kill(a.pid, signal.SIGCONT)
                continue
            mine = [t for t in trials if t.user_attrs.get("worker") == a_worker]
            running = [t.number for t in mine if _busy(t)]
            if sum(t.state.name in FINISHED for t in mine) >= 2 and running:
                os.kill(a.pid, signal.SIGKILL)
                a.wait(timeout=30)
                assert len(running) == 1, running  # one trial at a time per worker
                finished = {t.number: (t.state.name, t.values) for t in trials if t.state.name in FINISHED}
                return running[0], finished
            os.kill(a.pid, signal.SIGCONT)
        time.sleep(0.2)
    pytest.fail(f"worker A never had 2 finished trials and a running one:\n{_tail(logs[0])}")


# ------------------------------------------------------------------ two workers, one killed


def _two_workers_one_killed(url: str, tmp_path: Path) -> None:
    name = "shared"
    out_a, out_b = tmp_path / "worker-a", tmp_path / "worker-b"
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    a = _start_worker(out_a, url, name, logs[0])
    b = _start_worker(out_b, url, name, logs[1])
    try:
        deadline = time.monotonic() + 120
        while not _study_exists(url, name):
            both = f"{_tail(logs[0])}\n{_tail(logs[1])}"
            assert time.monotonic() < deadline, f"no study after 120 s:\n{both}"
            assert a.poll() is None and b.poll() is None, f"a worker exited:\n{both}"
            time.sleep(0.2)
        study = _load(url, name)
        host = socket.gethostname()
        a_worker, b_worker = f"{host}:{a.pid}", f"{host}:{b.pid}"
        killed, before = _kill_worker_mid_trial(study, a, b, a_worker, logs)
        # A's trial is found dead only by a worker starting a trial over GRACE s after A's last beat.
        # B's 1-3 s trials could finish the study before that, leaving A's trial RUNNING for the next
        # worker to join; so B is frozen past the grace (as a long trial would take): its next trial
        # start then fails A's trial and queues the retry, which B runs next.
        assert len(before) + 1 < TRIALS, f"the study had {len(before)} finished trials at the kill"
        os.kill(b.pid, signal.SIGSTOP)
        time.sleep(GRACE + 2 * HEARTBEAT)
        os.kill(b.pid, signal.SIGCONT)
        rc = b.wait(timeout=150)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc == 0, _tail(logs[1])

    trials = {t.number: t for t in _load(url, name).get_trials(deepcopy=False)}
    for number, (state, values) in before.items():  # nothing finished before the kill was lost
        assert (trials[number].state.name, trials[number].values) == (state, values), number
    finished = [t for t in trials.values() if t.state.name in FINISHED]
    assert len(finished) >= TRIALS
    # A's running trial: marked failed by B (stale heartbeat), its choices queued again once and run.
    assert trials[killed].state.name == "FAIL"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, {n: (t.state.name, t.system_attrs) for n, t in trials.items()}
    retry = retries[0]
    assert retry.params == trials[killed].params
    assert retry.state.name in FINISHED and retry.user_attrs["worker"] == b_worker
    workers = {t.user_attrs.get("worker") for t in finished}
    assert a_worker in workers and b_worker in workers

    # B's artifact: the report reads the whole study, both workers' trials.
    assert (out_b / "model.onnx").is_file()
    report = read_report(out_b)
    listed = {r["number"]: r for r in report["search"]["trials"]}
    assert {trials[n].user_attrs.get("worker") for n in listed} >= {a_worker, b_worker}
    assert listed[killed]["state"] == "failed"
    assert sum(r["state"] in ("complete", "pruned") for r in listed.values()) >= TRIALS
    assert sorted((out_b / "trials").glob("*.yaml"))
    assert PG_PASSWORD not in (out_b / "report.json").read_text()


@pytest.mark.int8_kernel
def test_two_workers_share_a_sqlite_study(tabular_cached, tmp_path):
    _two_workers_one_killed(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path)


@pytest.mark.int8_kernel
def test_two_workers_share_a_postgres_study(tabular_cached, postgres_url, tmp_path):
    _two_workers_one_killed(postgres_url, tmp_path)


class _Runner:
    """A stand-in for presso's trial runner: draws x, reports it as the trial's figures."""

    space = None
    constraints = SimpleNamespace(met=lambda attrs: False)  # no crossover children

    def __init__(self, on_trial=lambda trial: None):
        self.ran: list[int] = []
        self.on_trial = on_trial

    def __call__(self, trial) -> float:
        self.ran.append(trial.number)
        x = trial.suggest_float("x", 0.0, 1.0)
        for key in ("drop", "latency_ms", "size_bytes"):
            trial.set_user_attr(key, x)
        self.on_trial(trial)
        return x


def _finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_a_queued_retry_runs_before_the_study_stops():
    import optuna
    from optuna.trial import TrialState

    from presso.progress import SILENT
    from presso.search.study import _optimize

    study = optuna.create_study()
    _optimize(study, _Runner(), 3, None, SILENT)
    assert len(_finished_trials(study)) == 3
    study.enqueue_trial({"x": 0.25})  # a crossover child, queued first
    study.enqueue_trial({"x": 0.75})  # the retry of a dead worker's trial (what Optuna's heartbeat queues)
    retry = study.get_trials(states=(TrialState.WAITING,))[-1]
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", 1)
    runner = _Runner()
    _optimize(study, runner, 4, None, SILENT)  # 3 finished: one more would do, but the retry waits
    assert runner.ran == [3, 4]  # the child (finishing the 4) and then the retry
    assert study.trials[4].state == TrialState.COMPLETE and study.trials[4].params == {"x": 0.75}
    again = _Runner()
    _optimize(study, again, 6, None, SILENT)
    assert again.ran == [5]  # no retry waiting: the stop comes at the count


def test_a_trial_another_worker_finished_first_does_not_stop_this_one():
    import optuna
    from optuna.trial import TrialState

    from presso.progress import SILENT
    from presso.search.study import _optimize

    study = optuna.create_study()

    def finished_elsewhere(trial) -> None:  # Optuna handed this queued trial to two workers
        if trial.number == 1:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])

    runner = _Runner(finished_elsewhere)
    _optimize(study, runner, 3, None, SILENT)
    assert runner.ran == [0, 1, 2] and len(_finished_trials(study)) == 3
    assert study.trials[1].values == [0.5]  # the other worker's result stands


# ------------------------------------------------------------------ resume


def _finished(out: Path) -> int:
    return sum(r["state"] in ("complete", "pruned") for r in read_report(out)["search"]["trials"])


@pytest.mark.int8_kernel
def test_interrupted_study_resumes(tabular_cached, tmp_path):
    out = tmp_path / "search"
    first = run_cli("search", "--example", "tabular", "--trials", "3", "--out", str(out), *FAST_BENCH)
    assert first.returncode == 0, first.stderr
    assert _finished(out) == 3
    more = run_cli("search", "--example", "tabular", "--trials", "5", "--out", str(out), *FAST_BENCH)
    assert more.returncode == 0, more.stderr
    assert _finished(out) == 5  # exactly 2 new trials
    (out / "model.onnx").unlink()
    again = run_cli(
        "search", "--example", "tabular", "--trials", "5", "--out", str(out), "--rounds", "2", "--batch", "16"
    )  # without --quiet: its log says why no trial ran
    assert again.returncode == 0, again.stderr
    assert "already holds 5 finished trials" in again.stderr + again.stdout
    assert _finished(out) == 5
    assert (out / "model.onnx").is_file()


# ------------------------------------------------------------------ errors


def _assert_one_line_error(done: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("presso: error:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "url, pattern",
    [
        ("not a url", r"is not a database URL"),
        ("mysql://u@h/db", r"SQLite or PostgreSQL, not 'mysql'"),
        ("postgresql://u:secretpw@127.0.0.1:1/db", r"cannot (reach|open) the study database"),
        ("sqlite:////nonexistent-dir/x.db", r"does not exist"),
        ("sqlite:///{tmp}/garbage.db", r"cannot open the study database"),
    ],
    ids=["not-a-url", "mysql", "nothing-listening", "no-folder", "not-a-database"],
)
def test_bad_storage_is_one_line(tabular_cached, tmp_path, url, pattern):
    (tmp_path / "garbage.db").write_bytes(os.urandom(4096))  # a file that is not a database
    url = url.format(tmp=tmp_path)
    out = tmp_path / "out"
    done = run_cli(
        "search", "--example", "tabular", "--trials", "2", "--out", str(out), "--storage", url, *FAST_BENCH
    )
    line = _assert_one_line_error(done, 2, pattern)
    assert "secretpw" not in done.stderr + done.stdout
    assert "--storage" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--max-latency-ms", "0.000001"], r"impossible on this machine"),
        (["--max-latency-ms", "-1"], r"--max-latency-ms must be > 0"),
        (["--max-size-mb", "0"], r"--max-size-mb must be > 0"),
    ],
    ids=["latency-below-floor", "negative-latency", "zero-size"],
)
def test_impossible_constraint_is_refused_before_trials(tabular_cached, tmp_path, flags, pattern):
    out = tmp_path / "out"
    done = run_cli("search", "--example", "tabular", "--trials", "2", "--out", str(out), *flags, *FAST_BENCH)
    _assert_one_line_error(done, 2, pattern)
    assert not out.exists()


@pytest.mark.int8_kernel
def test_unmet_constraint_writes_no_model(tabular_cached, tmp_path):
    out = tmp_path / "out"
    done = run_cli(
        "search",
        "--example",
        "tabular",
        "--trials",
        "3",
        "--out",
        str(out),
        "--max-size-mb",
        "0.0001",
        *FAST_BENCH,
    )
    _assert_one_line_error(done, 1, r"No trial meets all the constraints")
    assert not (out / "model.onnx").exists()
    assert not (out / "report.json").exists()


@pytest.mark.int8_kernel
def test_study_of_another_model_is_refused(tabular_cached, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    first = run_cli(
        "search",
        "--example",
        "tabular",
        "--trials",
        "1",
        "--out",
        str(tmp_path / "tabular"),
        "--storage",
        url,
        "--study",
        "mine",
        *FAST_BENCH,
    )
    assert first.returncode == 0, first.stderr
    done = run_cli(
        "search",
        "--example",
        "digits",
        "--trials",
        "1",
        "--out",
        str(tmp_path / "digits"),
        "--storage",
        url,
        "--study",
        "mine",
        *FAST_BENCH,
    )
    _assert_one_line_error(done, 2, r"belongs to another search")
    assert not (tmp_path / "digits").exists()
    report = json.loads((tmp_path / "tabular" / "report.json").read_text())
    assert report["search"]["study"] == "mine"
