"""Loading a user's ONNX file (checked now, so a corrupt file fails before any work)."""

from __future__ import annotations

from pathlib import Path

from presso.errors import PressoError
from presso.model.loaded import LoadedModel


def fixed_batch_sizes(graph) -> dict[str, int]:
    """Graph inputs (not initializers) whose first axis has a fixed size, with that size."""
    initializers = {i.name for i in graph.initializer}
    return {
        i.name: i.type.tensor_type.shape.dim[0].dim_value
        for i in graph.input
        if i.name not in initializers
        and i.type.tensor_type.shape.dim
        and i.type.tensor_type.shape.dim[0].dim_value
    }


def load_onnx(path: Path) -> LoadedModel:
    import onnx

    if not path.is_file():
        raise PressoError(f"ONNX file '{path}' not found.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PressoError(
            f"'{path}' is not a valid ONNX model ({reason}). Re-export it, e.g. with torch.onnx.export."
        ) from exc
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    dynamic = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        # No shape recorded: nothing is fixed, the row axis included.
        dynamic[i.name] = (
            {k: d.dim_param or f"dim{k}" for k, d in enumerate(dims) if not d.dim_value}
            if dims
            else {0: "batch"}
        )
    fixed = {name: n for name, n in fixed_batch_sizes(proto.graph).items() if n != 1}
    if fixed:
        raise PressoError(
            f"'{path}' has a fixed batch size ({fixed}); presso runs rows one at a time and in "
            "batches. Re-export it with a dynamic first axis (dynamic_axes={name: {0: 'batch'}})."
        )
    return LoadedModel(
        name=path.stem,
        source=f"ONNX file {path}",
        onnx_path=path.resolve(),
        input_names=[i.name for i in inputs],
        dynamic_axes=dynamic,
    )
