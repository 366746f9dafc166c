"""PyTorch -> ONNX, checked against outputs taken before the export."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError
from presso.model.loaded import LoadedModel

OPSET = 17


def export_onnx(model: LoadedModel, sample: dict[str, np.ndarray], path: Path) -> Path:
    """Export ``model.module`` to ``path``; the input names are the forward arguments.

    A deep copy is exported: the TorchScript exporter alters live transformers
    modules (outputs off by up to 4.0 afterwards, measured).
    """
    if model.module is None:
        raise ValueError("not a PyTorch model")  # callers export PyTorch models only
    module = copy.deepcopy(model.module).eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in model.input_names)
    dynamic_axes = dict(model.dynamic_axes)
    dynamic_axes["output"] = {0: "batch"}
    # The TorchScript exporter: its graphs are the ones ONNX Runtime's quantizer and
    # transformer fusions recognise (the dynamo exporter's are not fused, measured).
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(model.input_names),
                output_names=["output"],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PressoError(
            f"Exporting {model.name} to ONNX failed: {first}. presso needs a model that "
            "torch.onnx.export can trace (no data-dependent Python control flow)."
        ) from exc
    return path


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
