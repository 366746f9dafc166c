"""Python under an emulated x86 CPU without VNNI, to measure ONNX Runtime's other int8 kernel.

ORT's u8 x s8 GEMM sums products exactly with VNNI and saturates pairs of them at int16
without it (presso.runtime.cpu); a test machine shows only one of the two. Under
``qemu-x86_64 -cpu Haswell`` (user-mode emulation: AVX2 and FMA, no AVX-512, no VNNI) ORT
dispatches to the saturating kernel, so tests measure that path on ORT itself whatever CPU
runs them. Emulation is ~100x slower than the host: only small measurements run there.

Needs Debian's qemu-user (apt-get install qemu-user). Tests are skipped without it, unless
PRESSO_REQUIRE_QEMU=1 (CI), where a missing emulator fails instead of passing silently.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

QEMU = shutil.which("qemu-x86_64") if platform.machine() in ("x86_64", "AMD64") else None
# Haswell minus the features TCG does not emulate (each would print a warning).
CPU = "Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid"


def require_emulator() -> str:
    if QEMU is not None:
        return QEMU
    fix = "install Debian's qemu-user (apt-get install qemu-user)"
    if os.environ.get("PRESSO_REQUIRE_QEMU") == "1":
        pytest.fail(f"PRESSO_REQUIRE_QEMU=1 but qemu-x86_64 is not on PATH: {fix}.", pytrace=False)
    pytest.skip(f"qemu-x86_64 not on PATH ({fix}); set PRESSO_REQUIRE_QEMU=1 to require it")


def run_python_without_vnni(code: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -c code args`` of this environment, on the emulated CPU; raises if it fails."""
    if os.environ.get("PRESSO_EMULATED_CPU") == "Haswell":  # already emulated (.ci/pytest-without-vnni)
        cmd = [sys.executable, "-c", code, *args]
    else:
        # -0 keeps sys.executable (and so this virtual environment) as the child sees it.
        cmd = [
            require_emulator(),
            "-cpu",
            CPU,
            "-0",
            sys.executable,
            os.path.realpath(sys.executable),
            "-c",
            code,
            *args,
        ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
