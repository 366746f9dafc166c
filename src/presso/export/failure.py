"""When no exporter produces a faithful graph: one line for the user, the details in a log."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from torch import nn

from presso.cache import cache_root
from presso.errors import PressoError
from presso.files import write_text_atomic


class ExportError(PressoError):
    """No exporter gave a graph that matches PyTorch; ``log_path`` holds what they printed."""

    def __init__(self, message: str, log_path: Path):
        super().__init__(message)
        self.log_path = log_path


KEEP_LOGS = 20  # the newest export logs kept; older ones go when a new one is written


def log_dir() -> Path:
    """Where export logs go: ``logs/`` in presso's cache folder."""
    return cache_root() / "logs"


def write_log(details: str, what: str) -> Path:
    """The exporters' output, tracebacks included, in a new timestamped file."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")  # sorts by time, to the microsecond
    path = log_dir() / f"export-{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', what)}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, details)
    for old in sorted(path.parent.glob("export-*.log"))[:-KEEP_LOGS]:  # oldest first
        old.unlink(missing_ok=True)
    return path


# "Exporting the operator 'aten::histc' to ONNX opset version 17 is not supported"
_TORCHSCRIPT_OP = re.compile(r"operator '([\w.:]+)'")
# "No ONNX function found for <OpOverload(op='aten.cummax', overload='default')>"
_DYNAMO_OP = re.compile(r"No ONNX function found for <OpOverload\(op='(\w+)\.(\w+)'")


def unsupported_op(details: str) -> str | None:
    """The operator an exporter could not translate, as ``aten::name``."""
    found = _TORCHSCRIPT_OP.search(details)
    if found:
        return found.group(1)
    found = _DYNAMO_OP.search(details)
    return f"{found.group(1)}::{found.group(2)}" if found else None


def submodule_of(op: str, details: str, module: nn.Module) -> str | None:
    """The submodule that calls ``op``, read from the TorchScript graph in the log
    (``scope: pkg.Model::/torch.nn.modules.linear.Linear::lin``): "Linear 'lin'"."""
    found = re.search(rf"= {re.escape(op)}\(.*scope: (\S+)", details)
    if not found:
        return None
    path = [part.split("::")[-1] for part in found.group(1).split("/")[1:]]
    name = ".".join(p for p in path if p)
    if not name:
        return None
    try:
        return f"{type(module.get_submodule(name)).__name__} '{name}'"
    except AttributeError:
        return f"'{name}'"


def failure_message(module: nn.Module, problems: list[tuple[str, str]], details: str, log: Path) -> str:
    """One line: the model, the operator (and submodule) no exporter handles or how the
    graphs disagree, what to do, and where the full output is."""
    model = type(module).__name__
    op = unsupported_op(details)
    if op is not None:
        where = submodule_of(op, details, module)
        inside = f" (called in {where})" if where else ""
        return (
            f"Cannot export {model} to ONNX: no exporter translates operator {op}{inside}. "
            "Rewrite that operation with common tensor ops, or give presso an ONNX file of the model. "
            f"Exporter output: {log}"
        )
    tried = "; ".join(f"{exporter}: {problem}" for exporter, problem in dict(problems).items())
    return (
        f"Cannot export {model} to ONNX faithfully ({tried}). Remove data-dependent Python control "
        f"flow from forward, or give presso an ONNX file of the model. Exporter output: {log}"
    )
