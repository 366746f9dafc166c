"""Child process of :mod:`presso.measure.memory`: prints peak RSS growth as JSON."""

import json
import resource
import sys

import numpy as np
import onnxruntime  # noqa: F401  (imported before the first reading on purpose)

from presso.runtime.session import make_session


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) so imports' peaks do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    model, feed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with np.load(feed) as npz:
        inputs = {k: npz[k] for k in npz.files}
    before = _status_mb("VmRSS")
    if before is not None and _reset_peak():
        session = make_session(model, threads=threads)
        session.run(None, inputs)
        high_water = _status_mb("VmHWM")
        assert high_water is not None  # /proc/self/status has VmHWM wherever it has VmRSS
        peak = high_water - before
    else:  # no /proc: fall back to the process-lifetime peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        session = make_session(model, threads=threads)
        session.run(None, inputs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - before
    print(json.dumps({"peak_mb": round(max(peak, 0.0), 3)}))


if __name__ == "__main__":
    main()
