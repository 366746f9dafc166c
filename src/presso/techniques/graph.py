"""Reading ONNX graphs: which nodes carry weights, and which of those are still float; shared
by every technique that rewrites an ONNX graph."""

from __future__ import annotations

_WEIGHTED = {
    "MatMul": 1,
    "Gemm": 1,
    "Conv": 1,
    "ConvTranspose": 1,
    "LSTM": 1,
    "GRU": 1,
    "RNN": 1,
    "Attention": 1,
}
_FLOAT = {1, 10, 16}  # float, float16, bfloat16


def input_uses(graph) -> dict[str, int]:
    """How many node inputs of ``graph`` read each tensor (a weight used once is private)."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return uses


def weighted_nodes(model) -> list[str]:
    """Names of nodes whose weight operand is an initializer, in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in _WEIGHTED
        and len(n.input) > _WEIGHTED[n.op_type]
        and n.input[_WEIGHTED[n.op_type]] in inits
    ]


def float_weight_nodes(model) -> list[tuple[str, str]]:
    """(name, op) of nodes that still multiply by a float weight initializer."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        slot = _WEIGHTED.get(n.op_type)
        if slot is not None and len(n.input) > slot and inits.get(n.input[slot]) in _FLOAT:
            out.append((n.name, n.op_type))
    return out


# Operand that holds the weight: MatMul/Gemm/Conv multiply by input 1; an embedding
# table (Gather) is input 0, indexed by token ids.
_WEIGHT_SLOT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}


def float_weight_plans(model, keep: set[str]) -> list[tuple[str, str, str]]:
    """(node, op, weight initializer) of MatMul/Gemm/Conv nodes and embedding lookups
    (Gather of a 2-D table) with a float weight of their own."""
    inits = {i.name: i for i in model.graph.initializer}
    uses = input_uses(model.graph)
    out = []
    for node in model.graph.node:
        slot = _WEIGHT_SLOT.get(node.op_type)
        if slot is None or node.name in keep or len(node.input) < 2:
            continue
        w = inits.get(node.input[slot])
        if w is None or w.data_type != 1 or uses.get(w.name, 0) != 1:
            continue  # not a float constant of this node alone
        if node.op_type != "Conv" and len(w.dims) != 2:
            continue
        if node.op_type == "Gather" and any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue  # not a row lookup
        out.append((node.name, node.op_type, w.name))
    return out


def to_opset(model, opset: int):
    """``model`` at ``opset`` or later (int4/uint4 tensors need opset 21)."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return model if current >= opset else version_converter.convert_version(model, opset)
