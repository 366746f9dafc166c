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


def process_peak_mb() -> float:
    """Peak RSS of this process so far, in MiB: the kernel's high-water mark (``getrusage``),
    which costs nothing to read and catches the short peaks a sampler would miss.

    Child processes are not added: on Linux a child's ``ru_maxrss`` starts from its
    parent's RSS at fork (the kernel keeps the old high-water mark across exec), so the
    children's figure only repeats this one's.
    """
    import resource
    import sys

    # ru_maxrss is in KiB on Linux, in bytes on macOS
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
