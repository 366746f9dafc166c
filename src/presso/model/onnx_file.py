"""Loading a user's ONNX file (checked now, so a corrupt file fails before any work)."""

from __future__ import annotations

from pathlib import Path

from presso.errors import PressoError, reason
from presso.model.loaded import LoadedModel
from presso.runtime.onnx_files import save_onnx


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


def graph_output_names(path: Path) -> list[str]:
    """The graph outputs of the ONNX file ``path``, in order."""
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def keep_output(path: Path, name: str) -> None:
    """Rewrite the ONNX file ``path`` so its graph has the one output ``name`` (what
    ``--output`` chose); nodes that fed only the others go too."""
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    kept = [o for o in graph.output if o.name == name]
    del graph.output[:]
    graph.output.extend(kept)
    # Subgraphs (If, Loop) read outer names their node does not list: keep every node then.
    if not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        needed, nodes = {name}, []
        for node in reversed(graph.node):  # nodes are topologically sorted: walk back from the output
            if needed.intersection(node.output):
                nodes.append(node)
                needed.update(node.input)
        del graph.node[:]
        graph.node.extend(reversed(nodes))
        initializers = [i for i in graph.initializer if i.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(initializers)
    save_onnx(proto, path)


_FLOATS = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def check_runnable(proto, path: Path, scores: bool = True) -> None:
    """What onnx's checker lets through but no run can use: an opset newer than this onnx
    knows, no outputs, or (``scores``: to be compressed) only non-float outputs (class ids,
    strings: nothing a quality budget can compare)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise PressoError(
                f"'{path}' needs ONNX opset {opset.version}; this onnx knows up to {newest}. "
                f"Re-export it with opset_version={newest} or lower."
            )
    outputs = list(proto.graph.output)
    if not outputs:
        raise PressoError(f"'{path}' has no graph outputs. Re-export it with its outputs named.")
    kinds = {o.name: o.type.tensor_type.elem_type for o in outputs}
    if scores and not any(k in _FLOATS for k in kinds.values()):
        described = ", ".join(f"{name} ({_dtype_name(k)})" for name, k in kinds.items())
        raise PressoError(
            f"'{path}' outputs no floating-point scores ({described}): presso compares a model's "
            "scores, logits or embeddings. Export it without its final argmax / post-processing."
        )


def _dtype_name(elem_type: int) -> str:
    import onnx

    if not elem_type:
        return "not a tensor"
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):  # a type number onnx does not know
        return f"element type {elem_type}"


def load_onnx(path: Path, scores: bool = True) -> LoadedModel:
    """``path`` checked and described; ``scores=False`` (to run it, not compress it) lets a
    model whose outputs are class ids or strings through."""
    import onnx

    if not path.is_file():
        raise PressoError(f"ONNX file '{path}' not found.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:
        why = reason(exc)
        raise PressoError(
            f"'{path}' is not a valid ONNX model ({why}). Re-export it, e.g. with torch.onnx.export."
        ) from exc
    check_runnable(proto, path, scores)
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
