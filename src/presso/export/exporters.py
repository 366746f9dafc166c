"""The two PyTorch -> ONNX exporters presso tries, and what they print kept off the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from presso.runtime.onnx_files import save_onnx

OPSET = 17  # TorchScript exporter
DYNAMO_OPSET = 18  # the dynamo exporter's lowest well-supported opset (onnxscript)
OUTPUT = "output"

Axes = dict[str, dict[int, str]]


@contextlib.contextmanager
def fastpath_off() -> Iterator[None]:
    """Eval-mode transformer layers without their fused kernels.

    Under ``no_grad`` in eval mode, nn.TransformerEncoderLayer and nn.MultiheadAttention
    run ``aten::_transformer_encoder_layer_fwd`` / ``_native_multi_head_attention``, which
    no exporter translates; the same switch keeps TransformerEncoder from nested tensors.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextlib.contextmanager
def captured(log: IO[str]) -> Iterator[None]:
    """Everything written to stdout / stderr goes to ``log`` instead, Python's and C's alike.

    The TorchScript exporter prints its whole graph from C++ when it fails, and the dynamo
    exporter prints its steps: neither belongs on a user's terminal. File descriptors 1
    and 2 go to a file of their own (sharing ``log``'s would let its buffered writes and
    C's overwrite each other), appended to ``log`` at the end.
    """
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, log):
        if stream is not None:
            stream.flush()
    with tempfile.TemporaryFile() as native:
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(native.fileno(), fd)
        except OSError:  # no such descriptor (a detached process): nothing to redirect
            pass
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _to(log)  # restored by catch_warnings
                yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            native.seek(0)
            log.write(native.read().decode("utf-8", errors="replace"))


def _to(log: IO[str]):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


def torchscript(
    module: nn.Module, args: tuple, path: Path, names: list[str], axes: Axes, output_axes: dict[int, str]
) -> None:
    """The TorchScript exporter: its graphs are the ones ONNX Runtime's quantizer and
    transformer fusions recognise."""
    with fastpath_off(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: output_axes},
            do_constant_folding=True,
        )


def dynamo(module: nn.Module, args: tuple, path: Path, names: list[str], axes: Axes) -> None:
    """The torch.export-based exporter: it translates ops the TorchScript one has no
    symbolic for (e.g. ``aten::fft_rfft``) and keeps more shapes symbolic."""
    dims = tuple({a: torch.export.Dim.DYNAMIC for a in axes.get(n, {})} for n in names)
    with fastpath_off(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=DYNAMO_OPSET,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_shapes=dims,
            external_data=False,
        )
    tidy_dynamo_graph(path)


def tidy_dynamo_graph(path: Path, max_elements: int = 1 << 16) -> None:
    """The dynamo exporter's graph made like TorchScript's where presso depends on it.

    - Its per-node debug metadata (module path, class hierarchy, FX node: 1.4 kB a node)
      goes: it made a 35 kB TransformerEncoder's file 228 kB, and every size ratio with it.
    - Each node gets its own copy of a small float initializer that several nodes read: it
      lets both halves of an attention's projection read one bias and dedupes equal weights,
      and ONNX Runtime's static quantizer refuses a graph with a weight shared that way
      ("shared mode is not supported for weight", measured on nn.TransformerEncoder).
      Large shared tensors (tied embeddings) stay shared: copies would grow the model.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
    small = {
        i.name: i
        for i in graph.initializer
        if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and 0 < int(np.prod(i.dims)) <= max_elements
    }
    seen: dict[str, int] = {}
    copies = []
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in small:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(small[name])
                copy.name = f"{name}__{seen[name]}"
                copies.append(copy)
                node.input[k] = copy.name
    graph.initializer.extend(copies)
    save_onnx(proto, path)
