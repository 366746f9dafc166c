"""Peak memory of running an ONNX model, measured in a fresh process.

A separate process is the only honest way to attribute peak RSS to one model: in the
compressing process the baseline, the PyTorch model and every variant share one heap.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def peak_memory_mb(
    model_path: str | Path, inputs: dict[str, np.ndarray], threads: int, timeout: float = 300
) -> float | None:
    """Peak RSS growth (MiB) from creating a session and running ``inputs`` once."""
    with tempfile.TemporaryDirectory(prefix="presso-mem-") as tmp:
        feed = Path(tmp) / "inputs.npz"
        # mypy checks a **dict's values against every keyword savez has, allow_pickle: bool too
        np.savez(feed, **inputs)  # type: ignore[arg-type]
        cmd = [sys.executable, "-m", "presso.measure._memprobe", str(model_path), str(feed), str(threads)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
            return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])
        except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
            return None  # reported as unknown rather than failing the whole run


def process_peak_mb() -> tuple[float, float]:
    """(peak RSS of this process, largest peak RSS of any finished child) in MiB, so far.

    The kernel's high-water marks (``getrusage``): they cost nothing to read and catch the
    short peaks a sampler would miss. Children are the latency and memory probes this run
    started; their peak is not added to this process's (they did not all run at once).
    """
    import resource
    import sys

    # ru_maxrss is in KiB on Linux, in bytes on macOS
    unit = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 2**20
    return own, children
