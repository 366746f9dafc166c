"""SIGINT and SIGTERM at seeded random moments of real ``presso compress``, ``distill`` and
``search`` processes: exit 130 / 143 with nothing written (or the finished run's whole
artifact when the signal came late), never a traceback, no temporary files left; a search
keeps every trial it had finished, and the same command then completes it.

A few runs of each in the ``e2e`` step, many more in the long profile (``-m slow``); the
SIGKILL cases are in test_kill_resume.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fuzz_cases import tried

PERSISTENT_PREFIXES = (".ses", "torchinductor_")  # ONNX Runtime's session id file, torch's cache
ARTIFACT = {"model.onnx", "report.json", "report.html", "recipe.yaml"}
SIGNALS = [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
QUICK = ["--quiet", "--rounds", "2", "--threads", "1"]
COMMANDS = {
    "compress": ["compress", "--example", "digits", "--recipe", "sparse-int8", *QUICK],
    "distill": ["distill", "--example", "digits", "--epochs", "5", "--int8", *QUICK],
    # post-training families only: trials of seconds, so that signals land across several
    "search": ["search", "--example", "digits", "--trials", "3", "--techniques", "int8,kmeans", *QUICK],
}


def _start(command: str, out: Path, temp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "presso.cli.main", *COMMANDS[command], "--out", str(out)],
        env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts the tests in the background (nohup, CI) ignores SIGINT and its
        # children inherit that; a user's terminal does not: give the run the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _complete_trials(out: Path) -> int:
    db = out / "study.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _run_seconds(command: str, tmp_path: Path) -> float:
    """How long one uninterrupted run of ``command`` takes on this machine, from the moment
    it has its work folder to its exit."""
    temp, out = tmp_path / "timing-tmp", tmp_path / "timing-out"
    temp.mkdir()
    proc = _start(command, out, temp)
    while not any(temp.glob("presso-work-*")) and proc.poll() is None:
        time.sleep(0.01)
    start = time.monotonic()
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-2000:]
    return time.monotonic() - start


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """Signals land at random moments within 90% of an uninterrupted run measured on this
    machine: a fixed window let a fast machine finish most runs before their signal."""
    measured: dict[str, float] = {}

    def of(command: str) -> float:
        if command not in measured:
            measured[command] = 0.9 * _run_seconds(command, tmp_path_factory.mktemp(command))
        return measured[command]

    return of


def interrupt(command: str, tmp_path: Path, k: int, rng: random.Random, window: float) -> str:
    """One run of ``command`` sent a random signal a random while (up to ``window`` seconds)
    after it has its work folder; checks what it left. Returns how it ended."""
    sig, code = rng.choice(SIGNALS)
    temp, out = tmp_path / f"tmp{k}", tmp_path / f"out{k}"
    temp.mkdir()
    proc = _start(command, out, temp)
    while not any(temp.glob("presso-work-*")) and proc.poll() is None:
        time.sleep(0.01)
    finished_before = 0
    try:
        proc.wait(timeout=rng.uniform(0.0, window))
    except subprocess.TimeoutExpired:
        finished_before = _complete_trials(out)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    leftovers = [p.name for p in temp.iterdir() if not p.name.startswith(PERSISTENT_PREFIXES)]
    assert leftovers == [], (command, k, leftovers)
    files = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if proc.returncode == 0 or (proc.returncode == -sig and ARTIFACT <= files):
        assert ARTIFACT <= files, (command, k, files)  # finished (the signal came after the save)
        json.loads((out / "report.json").read_text())
        return "finished"
    assert proc.returncode in (code, -sig), (command, k, proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert not files & {"model.onnx", "report.json", "report.html"}, (
        command,
        k,
        files,
    )  # no partial artifact
    if command == "search":
        assert _complete_trials(out) >= finished_before  # every finished trial is still there
    tried[f"signals: presso {command}"] += 1
    return "interrupted"


def _resume_search(tmp_path: Path, k: int) -> None:
    """The same command continues the interrupted study to its trial count and finishes."""
    out, temp = tmp_path / f"out{k}", tmp_path / f"tmp{k}"
    proc = _start("search", out, temp)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-2000:]
    assert _complete_trials(out) >= 3 and ARTIFACT <= {p.name for p in out.iterdir()}


@pytest.mark.e2e
@pytest.mark.parametrize(("command", "runs"), [("compress", 2), ("distill", 2)])
def test_signals_at_random_moments_of_compress_and_distill(command, runs, window, tmp_path):
    rng = random.Random(f"{command}-21")
    ends = [interrupt(command, tmp_path, k, rng, window(command)) for k in range(runs)]
    assert "interrupted" in ends


@pytest.mark.slow
@pytest.mark.parametrize(("command", "runs"), [("compress", 24), ("distill", 12)])
def test_long_profile_signals(command, runs, window, tmp_path):
    rng = random.Random(f"{command}-2021")
    ends = [interrupt(command, tmp_path, k, rng, window(command)) for k in range(runs)]
    assert ends.count("interrupted") >= runs // 2


@pytest.mark.slow
def test_long_profile_signals_during_a_search_keep_its_finished_trials(window, tmp_path):
    rng = random.Random("search-2021")
    ends = []
    for k in range(5):
        ends.append(interrupt("search", tmp_path, k, rng, window("search")))
        if ends[-1] == "interrupted":
            _resume_search(tmp_path, k)
    assert "interrupted" in ends
