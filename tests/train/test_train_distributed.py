"""Data-parallel fine-tuning under torchrun gives the weights of one process, up to float summation order."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from presso.errors import PressoError
from presso.train import distributed

SCRIPT = Path(__file__).with_name("distributed_fit_script.py")


def _script():
    spec = importlib.util.spec_from_file_location("distributed_fit_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(out: Path, nproc: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            str(SCRIPT),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank-{r}.pt", weights_only=True) for r in range(nproc)]


@pytest.fixture(scope="module")
def one_process():
    """Every case fitted here, in one process, the plain way."""
    script = _script()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: script.run(name) for name in script.CASES}
    finally:
        torch.set_num_threads(n)


@pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed"
)
@pytest.mark.timeout(240)
@pytest.mark.parametrize("nproc", [2, 3])
def test_data_parallel_fit_matches_one_process(tmp_path, one_process, nproc):
    ranks = _launch(tmp_path, nproc)
    assert [r["world_size"] for r in ranks] == [nproc] * nproc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt"] + [f"rank-{r}.pt" for r in range(nproc)]

    main = ranks[0]["results"]
    for other in ranks[1:]:  # the same allreduced steps: identical weights on every rank, bit for bit
        for name, case in other["results"].items():
            for key in ("state", "whole", "resumed"):
                for k, v in case.get(key, {}).items():
                    assert torch.equal(v, main[name][key][k]), (name, key, k)
            assert case.get("report") == main[name].get("report")

    for name, (net, report) in one_process.items():
        got = main[name]
        for k, v in net.state_dict().items():
            diff = float((got["state"][k] - v).abs().max())
            assert diff < 1e-5, (name, k, diff)
        rep = got["report"]
        assert (rep["epochs_run"], rep["best_epoch"], rep["stopped"], rep["resumed_from"]) == (
            report["epochs_run"],
            report["best_epoch"],
            report["stopped"],
            0,
        ), name
        for key in ("train_loss", "val_score"):
            assert_allclose(
                [h[key] for h in rep["history"]],
                [h[key] for h in report["history"]],
                rtol=1e-5,
                err_msg=f"{name}: {key}",
            )
        assert rep["epochs_run"] == 4 or rep["stopped"] == "early-stop"

    # Dropout, interrupted after epoch 2 and resumed by every rank from rank 0's checkpoint: exact.
    resume = main["resume"]
    assert resume["resumed_from"] == 2
    for k, v in resume["whole"].items():
        assert torch.equal(resume["resumed"][k], v), k


@pytest.mark.parametrize(("rows", "world"), [(32, 2), (33, 2), (2, 3), (1, 2), (7, 4), (0, 2)])
def test_shards_are_contiguous_and_differ_by_at_most_one_row(rows, world):
    bounds = [distributed.shard(rows, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in pairwise(bounds))
    sizes = np.array([hi - lo for lo, hi in bounds])
    assert sizes.max() - sizes.min() <= 1 and np.all(np.diff(sizes) <= 0)  # larger shards first


def test_a_single_process_has_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.shutdown()  # nothing to leave
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(PressoError, match=r"WORLD_SIZE environment variable must be an int\. Got 'two'"):
        distributed.init_from_env()
