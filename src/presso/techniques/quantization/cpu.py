"""What the CPU can do for int8 (VNNI decides whether u8 x s8 products can saturate)."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    avx2: bool
    avx512: bool
    vnni: bool

    def describe(self) -> dict:
        return {"cpu": self.model, "avx2": self.avx2, "avx512": self.avx512, "vnni": self.vnni}


@functools.cache
def cpu_features() -> CpuFeatures:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return CpuFeatures(
        model=model, avx2="avx2" in flags, avx512="avx512f" in flags,
        vnni=bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}),
    )
