"""Data-parallel fits for tests/train/test_train_distributed.py, run under torchrun (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/distributed_fit_script.py OUT_DIR

Every rank writes ``OUT_DIR/rank-<r>.pt``: per case, the final weights and the FitReport
fields, so the test can compare ranks with each other and with one process. The builders
below are what the test imports to run the same fits in one process.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from presso.train import FitSettings, distributed, fit

# name: (rows, batch size); 40 rows are held back for validation.
CASES = {
    "even": (200, 32),  # 160 training rows: 5 batches of 32
    "uneven": (200, 33),  # 4 x 33 + 28: shards 17/16 then 14/14 (11/11/11 then 10/9/9 on 3 ranks)
    "short-last": (200, 79),  # 2 x 79 + 2: on 3 ranks the last batch leaves rank 2 empty
    "one-row": (41, 32),  # 1 training row: one rank holds it, the others have empty shards
}


def data(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(1)  # (rows,) labels of a random linear teacher
    return ({"x": x[:-40]}, y[:-40]), ({"x": x[-40:]}, y[-40:])


def mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def settings(batch_size: int) -> FitSettings:
    # patience and a (never reached) time cap: both decisions must be the same on every rank
    return FitSettings(epochs=4, lr=1e-2, batch_size=batch_size, patience=2, seed=0, max_seconds=3600)


def run(name: str) -> tuple[nn.Module, dict]:
    rows, batch = CASES[name]
    net = mlp()
    report = fit(net, *data(rows), F.cross_entropy, settings=settings(batch))
    return net, dataclasses.asdict(report)


def main(out: Path) -> None:
    started = distributed.init_from_env()
    torch.set_num_threads(1)
    results = {}
    try:
        for name in CASES:
            net, report = run(name)
            results[name] = {"state": net.state_dict(), "report": report}

        # With dropout (a stream per rank): interrupted after epoch 2, resumed, against uninterrupted.
        train, val = data(200)
        whole = mlp(0.3)
        fit(whole, train, val, F.cross_entropy, settings=settings(33))
        ckpt = out / "fit.pt"

        def stop(row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

        try:
            fit(mlp(0.3), train, val, F.cross_entropy, settings=settings(33), on_epoch=stop, checkpoint=ckpt)
        except KeyboardInterrupt:
            pass
        resumed = mlp(0.3)
        report = fit(resumed, train, val, F.cross_entropy, settings=settings(33), checkpoint=ckpt)
        results["resume"] = {
            "whole": whole.state_dict(),
            "resumed": resumed.state_dict(),
            "resumed_from": report.resumed_from,
        }
        torch.save(
            {"world_size": distributed.world_size(), "results": results},
            out / f"rank-{distributed.rank()}.pt",
        )
    finally:
        if started:
            distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
