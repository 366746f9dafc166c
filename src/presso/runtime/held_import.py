"""Importing a C extension with Ctrl-C and SIGTERM held until the import is whole."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import ModuleType

HELD = (signal.SIGINT, signal.SIGTERM)


def held_import(name: str) -> ModuleType:
    """``importlib.import_module(name)``, with SIGINT / SIGTERM that arrive meanwhile held
    and raised once it returns.

    Why: a KeyboardInterrupt raised while onnxruntime's pybind11 module initialises becomes
    an ImportError that onnxruntime keeps, and every later import fails ("type ... is already
    registered"). A Ctrl-C at that moment was reported as a model ONNX Runtime cannot run
    (exit 2), not as an interruption (130). Held, the signal lands after the import, as the
    KeyboardInterrupt (or presso's SIGTERM exit) it is.
    """
    if name in sys.modules or threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)  # handlers can only be set from the main thread
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in HELD}
    try:
        module = importlib.import_module(name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if arrived:
        signal.raise_signal(arrived[0])
    return module
