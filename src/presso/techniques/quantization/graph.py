"""Reading ONNX graphs: which nodes carry weights, and which of those are still float."""

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
