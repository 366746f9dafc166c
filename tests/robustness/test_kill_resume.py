"""SIGKILL: no cleanup can run, so what matters is what the next run finds. The checkpoint
of finished stages is whole (each stage's files are written before state.json names them),
``--resume`` gives the very artifact an uninterrupted run gives (same model.onnx bytes,
same held-out metrics), and the killed run's work folder is removed by the next run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fuzz_cases import tried

from presso.recipe import run as run_module

# ONNX Runtime's 51-byte session id file and torch's per-user compile cache: a finished run
# leaves them too.
PERSISTENT_PREFIXES = (".ses", "torchinductor_")


def _leftovers(temp: Path) -> list[str]:
    return sorted(p.name for p in temp.iterdir() if not p.name.startswith(PERSISTENT_PREFIXES))


_HOLDER = textwrap.dedent("""
    import sys, time
    from presso.recipe.run import new_workdir
    print(new_workdir(), flush=True)
    time.sleep(120)
""")


def test_the_work_folder_of_a_killed_run_is_removed_by_the_next_and_a_live_ones_kept(tmp_path, monkeypatch):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    holders = [
        subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    folders = [Path(h.stdout.readline().strip()) for h in holders if h.stdout is not None]
    assert all(f.parent == tmp_path and (f / ".owner").is_file() for f in folders)
    (folders[0] / "model.onnx").write_bytes(b"x" * 1000)  # what a killed run leaves
    holders[0].kill()
    holders[0].wait()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    mine = run_module.new_workdir()
    try:
        assert not folders[0].exists()  # abandoned: removed
        assert folders[1].is_dir()  # its run is alive: kept
        (tmp_path / "presso-work-foreign").mkdir()  # no owner file: not presso's to judge
        run_module.new_workdir()
        assert (tmp_path / "presso-work-foreign").is_dir()
    finally:
        holders[1].kill()
        holders[1].wait()
    again = run_module.new_workdir()
    assert not folders[1].exists() and mine.is_dir() and again.is_dir()  # ours stay while we live
    tried["abandoned work folders"] += 2


def _compress(out: Path, temp: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "presso.cli.main", "compress", "--example", "digits"]
    command += ["--recipe", "deep-compression", "--out", str(out), "--threads", "1", "--rounds", "2"]
    return subprocess.Popen(
        [*command, "--quiet", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _facts(out: Path) -> tuple[bytes, dict]:
    report = json.loads((out / "report.json").read_text())
    return (out / "model.onnx").read_bytes(), report["compressed"]["metrics"]


def check_kills(tmp_path: Path, kills: int, seed: int) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    reference = tmp_path / "reference"
    done = _compress(reference, temp)
    first_stage = reference.with_name(reference.name + ".checkpoint") / "state.json"
    while not first_stage.is_file() and done.poll() is None:
        time.sleep(0.01)
    start = time.monotonic()
    assert done.wait(timeout=900) == 0, done.communicate()[1][-2000:]
    # Kills land at random moments within 90% of what the uninterrupted run took after its
    # first finished stage, on this machine: a fixed window let a fast machine finish first.
    window = 0.9 * (time.monotonic() - start)
    expected = _facts(reference)
    rng = random.Random(seed)
    resumed_stages = 0
    for k in range(kills):
        out = tmp_path / f"art{k}"
        state = out.with_name(out.name + ".checkpoint") / "state.json"
        proc = _compress(out, temp)
        while not state.is_file() and proc.poll() is None:  # a stage finished: something to resume
            time.sleep(0.01)
        try:
            proc.wait(timeout=rng.uniform(0.0, window))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == 0 or out.exists():  # it finished first, or was killed once saved
            assert _facts(out) == expected
            continue
        assert proc.returncode == -signal.SIGKILL
        json.loads(state.read_text())  # whole, whatever the moment
        again = _compress(out, temp, "--resume")
        _, err = again.communicate(timeout=900)
        assert again.returncode == 0, err[-2000:]
        assert _facts(out) == expected, k  # the same bytes, the same metrics
        report = json.loads((out / "report.json").read_text())
        resumed_stages += sum(s["resumed"] for s in report["stages"])
        assert not state.parent.exists()  # a finished run removes its checkpoint
        tried["SIGKILL then --resume"] += 1
    assert resumed_stages > 0  # the kills did land after finished stages
    assert _leftovers(temp) == []  # the killed runs' work folders went with the next run


@pytest.mark.e2e
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_artifact(tmp_path):
    check_kills(tmp_path, kills=3, seed=21)


@pytest.mark.slow
def test_long_profile_sigkill_then_resume(tmp_path):
    check_kills(tmp_path, kills=16, seed=2021)
