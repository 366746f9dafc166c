"""A Ctrl-C during a held import lands after the import, which completes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A module that is sent SIGINT while it imports, then goes on (like a C extension's init).
SLOW_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
DONE = True
"""

# The default Ctrl-C handler, set explicitly: a process started in the background by a
# non-interactive shell (as CI may be) inherits SIGINT ignored, and Python then keeps it so.
SCRIPT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {folder!r})
from presso.runtime.held_import import held_import
try:
    {call}
except KeyboardInterrupt:
    mod = sys.modules.get("slowmod")
    print("interrupted, module whole:", bool(mod is not None and getattr(mod, "DONE", False)))
"""


def _run(tmp_path, call: str) -> str:
    (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
    script = SCRIPT.format(folder=str(tmp_path), call=call)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_signal_during_a_held_import_lands_after_it(tmp_path):
    assert _run(tmp_path, 'held_import("slowmod")') == "interrupted, module whole: True"


def test_without_holding_the_signal_breaks_the_import(tmp_path):  # the control
    assert _run(tmp_path, "import slowmod") == "interrupted, module whole: False"
