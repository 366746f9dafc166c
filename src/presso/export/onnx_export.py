"""PyTorch -> ONNX, checked against the module's own outputs before it is kept.

The TorchScript exporter goes first (ONNX Runtime's fusions and quantizer recognise its
graphs: a BERT's attention fuses from its graph, not from dynamo's, measured); when it
fails, or its graph disagrees with PyTorch at another batch size, the dynamo exporter is
tried. A sequence axis is kept dynamic when a graph holds parity at another length, from
either exporter before a fixed-length one. What the exporters print goes to a log file,
named when every one fails.
"""

from __future__ import annotations

import copy
import re
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError
from presso.export.exporters import OUTPUT, Axes, captured, dynamo, torchscript
from presso.export.failure import ExportError, failure_message, write_log
from presso.model.loaded import LoadedModel, SelectedForward, first_tensor, with_output

EXPORTERS = ("torchscript", "dynamo")
# What an exported graph must reproduce: (what, inputs, PyTorch's outputs on them).
Check = tuple[str, dict[str, np.ndarray], np.ndarray]


@dataclass
class _Attempt:
    exporter: str
    sequence: bool  # whether the sequence axes were dynamic
    problem: str | None = None  # None: exported and held parity
    raised: bool = False  # the exporter itself failed (not the parity check)


def export_onnx(model: LoadedModel, sample: dict[str, np.ndarray], path: Path) -> Path:
    """Export ``model.module`` to ``path``; the input names are the forward arguments.

    The graph has one output, ``"output"``: the forward's first tensor, or the one
    ``model.output`` names. It is kept only when ONNX Runtime reproduces PyTorch on
    ``sample`` at its batch size and at batch 1 (and at a shorter length for a dynamic
    sequence axis). Records on ``model`` the exporter used (``exporter``), a sequence axis
    found dynamic (``dynamic_axes``) and, in ``notes``, a length kept fixed.
    """
    if model.module is None:
        raise ValueError("not a PyTorch model")  # callers export PyTorch models only
    sample = _two_rows(sample, model.input_names)
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in model.input_names)
    # A trained copy may come in train mode: references, like the export, are in eval mode.
    module = copy.deepcopy(model.module).eval()
    reference = _torch_outputs(module, args)
    declared = [n for n in model.input_names if 1 in model.dynamic_axes.get(n, {}) and sample[n].ndim >= 2]
    candidates = _sequence_candidates(model, sample)
    short = _shorter(module, sample, model.input_names, [*declared, *candidates])
    del module
    fixed = {n: dict(model.dynamic_axes.get(n, {0: "batch"})) for n in model.input_names}
    checks: list[Check] = [
        (f"batch {len(reference)}", sample, reference),
        ("batch 1", {n: a[:1] for n, a in sample.items()}, reference[:1]),
    ]
    output_axes = {0: "batch"}
    plans = [(e, False) for e in EXPORTERS]
    if short is not None:
        output_axes.update(
            {d: f"output_{d}" for d in range(1, reference.ndim) if reference.shape[d] != short[2].shape[d]}
        )
        # A dynamic length from either exporter before a fixed one from TorchScript: the
        # attention of nn.MultiheadAttention traced by TorchScript keeps its length (measured).
        plans = [(e, True) for e in EXPORTERS] + plans
    attempts: list[_Attempt] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        for exporter, sequence in plans:
            if exporter == "torchscript" and any(a.exporter == exporter and a.raised for a in attempts):
                continue  # it failed on an op, which other axes do not change
            attempt = _Attempt(exporter, sequence)
            attempts.append(attempt)
            axes, tried = fixed, checks
            if sequence and short is not None:
                axes = {n: {**a, 1: "sequence"} if n in candidates else a for n, a in fixed.items()}
                tried = [*checks, short]
            log.write(f"\n===== {exporter} exporter, dynamic axes {axes} =====\n")
            attempt.problem, attempt.raised = _try(model, args, path, exporter, axes, output_axes, tried, log)
            if attempt.problem is None:
                _record(model, attempt, attempts, candidates, sample, short)
                return path
            log.write(f"----- rejected: {attempt.problem}\n")
        log.flush()
        log.seek(0)
        details = log.read()
    path.unlink(missing_ok=True)
    log_path = write_log(details, type(model.module).__name__)
    message = failure_message(
        model.module, [(a.exporter, a.problem or "") for a in attempts if a.problem], details, log_path
    )
    raise ExportError(message, log_path)


def _try(
    model: LoadedModel,
    args: tuple,
    path: Path,
    exporter: str,
    axes: Axes,
    output_axes: dict[int, str],
    checks: list[Check],
    log: IO[str],
) -> tuple[str | None, bool]:
    """Export with one exporter and check it: (the problem or None, whether it raised)."""
    assert model.module is not None  # export_onnx checked
    # A deep copy is exported: the TorchScript exporter alters live transformers
    # modules (outputs off by up to 4.0 afterwards, measured).
    module = _one_output(copy.deepcopy(model.module).eval())
    names = list(model.input_names)
    # ONNX Runtime logs a failing node from C++ too: the checks are captured as well.
    with captured(log):
        try:
            if exporter == "torchscript":
                torchscript(module, args, path, names, axes, output_axes)
            else:
                dynamo(module, args, path, names, axes)
        except Exception as exc:
            traceback.print_exc(file=log)
            return _first_line(exc), True
        return _check(path, checks, log), False


def _check(path: Path, checks: list[Check], log: IO[str]) -> str | None:
    """Why the graph at ``path`` does not reproduce PyTorch on ``checks`` (None: it does)."""
    from presso.runtime.session import make_session, run_session

    what = "session creation"
    try:
        session = make_session(path)
        for what, inputs, expected in checks:
            got = run_session(session, inputs, len(next(iter(inputs.values()))))
            gap = parity_gap(expected, got)
            if gap is not None:
                return f"its ONNX graph differs from PyTorch at {what}: {gap}"
    except Exception as exc:
        traceback.print_exc(file=log)
        return f"its ONNX graph does not run on ONNX Runtime at {what}: {_first_line(exc)}"
    return None


def _record(
    model: LoadedModel,
    chosen: _Attempt,
    attempts: list[_Attempt],
    lengths: dict[str, int],
    sample: dict[str, np.ndarray],
    short: Check | None,
) -> None:
    """Note on ``model`` what the kept export is: its exporter, its dynamic axes."""
    model.exporter = chosen.exporter
    if chosen.exporter != EXPORTERS[0]:
        why = next(a.problem for a in attempts if a.exporter == EXPORTERS[0])
        _note(model, f"exported with the dynamo exporter: with the TorchScript exporter, {why}")
    if chosen.sequence:
        model.dynamic_axes = {
            n: {**model.dynamic_axes.get(n, {}), **({1: "sequence"} if n in lengths else {})}
            for n in model.input_names
        }
    elif lengths and short is not None:
        fixed = ", ".join(f"'{n}' (length {sample[n].shape[1]})" for n in lengths)
        _note(
            model,
            f"input {fixed} keeps its length fixed in ONNX: the exported graph did not match "
            f"PyTorch at {short[0]}; feed it rows of the fixed length",
        )


def _note(model: LoadedModel, line: str) -> None:
    if line not in model.notes:  # stage exports of trained copies share the notes list
        model.notes.append(line)


def _one_output(module: nn.Module) -> nn.Module:
    """The module answering with exactly one tensor (the graph's one output)."""
    if not isinstance(module.__dict__.get("forward"), SelectedForward):
        with_output(module, None)
    return module


def _two_rows(sample: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """At least two rows, so the graph is checked at two batch sizes."""
    if len(sample[names[0]]) >= 2:
        return {n: sample[n] for n in names}
    return {n: np.concatenate([sample[n], sample[n]]) for n in names}


@torch.no_grad()
def _torch_outputs(module: nn.Module, args: tuple) -> np.ndarray:
    return first_tensor(module(*args)).float().numpy()


def _sequence_candidates(model: LoadedModel, sample: dict[str, np.ndarray]) -> dict[str, int]:
    """Inputs that look like sequences and whose axis 1 is not dynamic yet, with their
    length: integer ids (B, T) and float steps (B, T, F)."""
    found = {}
    for n in model.input_names:
        a = sample[n]
        if 1 in model.dynamic_axes.get(n, {}) or a.ndim < 2 or a.shape[1] < 2:
            continue
        if (np.issubdtype(a.dtype, np.integer) and a.ndim == 2) or (
            np.issubdtype(a.dtype, np.floating) and a.ndim == 3
        ):
            found[n] = a.shape[1]
    return found


def _shorter(
    module: nn.Module, sample: dict[str, np.ndarray], names: list[str], sequences: list[str]
) -> Check | None:
    """The sample cut to half its length on the ``sequences`` inputs, with PyTorch's
    outputs on it; None when the model itself does not take another length."""
    if not sequences:
        return None
    short = {n: (a[:, : max(1, a.shape[1] // 2)] if n in sequences else a) for n, a in sample.items()}
    try:
        out = _torch_outputs(module, tuple(torch.from_numpy(np.ascontiguousarray(short[n])) for n in names))
    except Exception:  # a fixed-length model (e.g. flattens its steps into a Linear)
        return None
    if out.shape[0] != len(sample[names[0]]):
        return None
    return f"length {max(short[n].shape[1] for n in sequences)}", short, out


def _first_line(exc: BaseException) -> str:
    """The line of an exporter's error that says what went wrong."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the dynamo exporter colours its text
    # The dynamo exporter starts with generic next steps; its cause follows this heading.
    summary = re.search(r"## Exception summary\s*<class '(?:[\w.]*\.)?(\w+)'>: (.+)", text)
    if summary:
        return f"{summary.group(1)}: {summary.group(2)}"[:300]
    text = text.replace("[ONNXRuntimeError] : 1 : FAIL : ", "").split(" Status Message:")[0]
    return text.splitlines()[0][:300] if text else type(exc).__name__


def parity_gap(reference: np.ndarray, exported: np.ndarray) -> str | None:
    """Why ``exported`` does not reproduce ``reference`` (None: it does, within 1e-3 of
    the outputs' scale)."""
    if reference.shape != exported.shape:
        return f"output shape {exported.shape} instead of PyTorch's {reference.shape}"
    diff = float(np.max(np.abs(reference - exported))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    if not np.isfinite(diff) or diff > 1e-3 * max(1.0, scale):
        return f"outputs differ by up to {diff:.3g} (outputs up to {scale:.3g})"
    return None


def check_parity(reference: np.ndarray, exported: np.ndarray, what: str) -> float:
    """Max abs difference of exported vs reference outputs; an error if they disagree."""
    if reference.shape != exported.shape:
        raise PressoError(f"{what}: output shape {exported.shape} differs from PyTorch's {reference.shape}.")
    diff = float(np.max(np.abs(reference - exported))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    if not np.isfinite(diff) or diff > 1e-3 * max(1.0, scale):
        raise PressoError(
            f"{what}: ONNX outputs differ from PyTorch's by up to {diff:.3g} "
            f"(outputs up to {scale:.3g}). The model may use an op the exporter does not translate faithfully."
        )
    return diff


__all__ = ["OUTPUT", "ExportError", "check_parity", "export_onnx", "parity_gap"]
