"""Find the encoder blocks of a transformer from its data flow, not its attribute names.

The model runs once on example inputs under a :class:`~torch.overrides.TorchFunctionMode`
that tags every tensor with the ``nn.Linear`` calls it derives from *directly* (a Linear's
output starts a new tag: what reached its input stays behind it). From the tags:

* the *attention output* projection is a Linear whose input derives from at least three
  Linears called on one and the same tensor (query, key, value; ``softmax(q k^T) v`` mixes
  them). Every Linear its input derives from is a *head projection*: its output rows are
  grouped by head (q, k, v, and DeBERTa's relative-position projections);
* the feed-forward *down* projection is a Linear whose input derives only from one or two
  Linears called on one tensor (up, or up and gate), that widen the hidden size to its input
  width and are read back to the hidden size;
* an ``nn.MultiheadAttention`` is one opaque step (its fused ``in_proj_weight`` and head size
  ``embed_dim / num_heads`` are fixed by its input width): its block's heads stay, its
  feed-forward neurons can go.

A block is an attention followed by a feed-forward in call order; its module is the lowest
common ancestor of their Linears, wherever it sits in the module tree (a wrapper does not
hide it). A block whose Linears run more than once per forward shares its weights across
depth (ALBERT) and cannot be pruned per layer.

>>> import torch
>>> from transformers import DistilBertConfig, DistilBertModel
>>> model = DistilBertModel(DistilBertConfig(dim=32, n_heads=4, hidden_dim=64, n_layers=2,
...                                          vocab_size=50)).eval()
>>> blocks = find_encoder_blocks(model, (torch.randint(0, 50, (1, 6)),))
>>> [(b.name, b.n_heads, b.head_size, b.n_ffn) for b in blocks]
[('transformer.layer.0', 4, 8, 64), ('transformer.layer.1', 4, 8, 64)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from presso.errors import PressoError

# Integer attributes of an attention module that hold its head count (names ending in
# "heads") or its all-heads width: updated when heads go.
WIDTH_NAMES = ("all_head_size", "all_head_dim", "inner_dim", "dim", "embed_dim")


@dataclass
class Block:
    """One encoder block: its attention and feed-forward projections, by qualified name."""

    name: str  # qualified name of the block (lowest common ancestor of its Linears)
    heads_in: tuple[str, ...]  # Linears whose output rows are grouped by head (q, k, v, ...)
    attn_out: str  # the Linear reading the heads' context (columns grouped by head), or the MHA
    attention: str  # the module holding head-count attributes (ancestor of heads_in, attn_out)
    head_size: int
    n_heads: int
    ffn_in: tuple[str, ...]  # Linears whose output rows are the neurons (up; up and gate)
    ffn_out: str  # the Linear reading the neurons
    n_ffn: int
    heads_refusal: str | None = None  # why this block's heads cannot be removed
    calls: int = 1  # times the block's Linears run per forward (> 1: weights shared across depth)

    def head_columns(self, heads) -> list[int]:
        d = self.head_size
        return [h * d + j for h in heads for j in range(d)]


@dataclass
class _Call:
    bit: int
    name: str  # the Linear's (or MultiheadAttention's) qualified name
    kind: str  # "linear" or "mha"
    source: int  # serial of the input tensor
    deps: int  # bits of the Linear calls and parameters the input derives from directly


class _Flow(TorchFunctionMode):
    """Tags each tensor with the Linear calls and parameters it derives from since the last Linear."""

    def __init__(self, linears: dict[int, str], mhas: dict[int, str], params: dict[int, str]) -> None:
        super().__init__()
        self.linears, self.mhas, self.params = linears, mhas, params
        self.tags: Any = WeakIdKeyDictionary()  # tensor -> (serial, deps)
        self.calls: list[_Call] = []
        self.nodes: list[str] = []  # bit -> "linear:<name>" / "param:<name>"
        self.param_bits: dict[str, int] = {}
        self.serial = 0

    def _tag(self, t: torch.Tensor) -> tuple[int, int]:
        if t not in self.tags:
            self.serial += 1
            self.tags[t] = (self.serial, 0)
        return self.tags[t]

    def _bit(self, node: str) -> int:
        self.nodes.append(node)
        return 1 << (len(self.nodes) - 1)

    def _param(self, t: torch.Tensor) -> int:
        name = self.params.get(id(t))
        if name is None:
            return 0
        if name not in self.param_bits:
            self.param_bits[name] = self._bit(f"param:{name}")
        return self.param_bits[name]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        deps = 0
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if func is F.linear and id(weight) in self.linears and isinstance(args[0], torch.Tensor):
            serial, before = self._tag(args[0])
            deps = self._bit(f"linear:{self.linears[id(weight)]}")
            self.calls.append(_Call(deps, self.linears[id(weight)], "linear", serial, before))
        elif func is F.multi_head_attention_forward and any(id(t) in self.mhas for t in ins):
            name = next(self.mhas[id(t)] for t in ins if id(t) in self.mhas)
            deps = self._bit(f"mha:{name}")
            self.calls.append(_Call(deps, name, "mha", self._tag(ins[0])[0], 0))
        else:
            for t in ins:
                deps |= self._tag(t)[1] | self._param(t)
        known = {id(t) for t in ins}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                if id(t) in known and t in self.tags:  # in place: the tensor keeps its serial
                    serial, old = self.tags[t]
                    self.tags[t] = (serial, old | deps)
                else:
                    self.serial += 1
                    self.tags[t] = (self.serial, deps)
        return out


def _run(module: nn.Module, inputs) -> Any:
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def trace_flow(module: nn.Module, inputs) -> _Flow:
    """The Linear calls of one forward, with what each input derives from."""
    linears = {id(m.weight): n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    mhas = {
        id(t): n
        for n, m in module.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for t in (m.in_proj_weight, m.q_proj_weight)
        if t is not None
    }
    linear_params = {
        id(p) for n, m in module.named_modules() if isinstance(m, nn.Linear) for p in m.parameters()
    }
    params = {id(p): n for n, p in module.named_parameters() if id(p) not in linear_params}
    flow = _Flow(linears, mhas, params)
    try:
        with torch.no_grad(), flow:
            _run(module, inputs)
    except Exception as err:
        raise PressoError(
            f"Transformer analysis could not run the model on the example inputs "
            f"({type(err).__name__}: {err}). Pass what the model's forward takes, "
            f"as a tuple (positional) or a dict (keywords)."
        ) from err
    return flow


def _ancestor(names) -> str:
    """The lowest common ancestor of qualified module names ("" is the root)."""
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return ".".join(common)


def _sources(flow: _Flow, deps: int) -> list[_Call]:
    return [c for c in flow.calls if c.kind == "linear" and deps & c.bit]


def _heads(module: nn.Module, attention: str, block: str, width: int) -> int | None:
    """The head count: an int attribute ending in "heads" of the attention module (current
    after pruning), else one ending in "head_size" / "head_dim", else the model's config."""
    mods = [m for m in module.get_submodule(attention).modules() if not isinstance(m, nn.Linear)]
    for suffixes, to_heads in ((("heads",), lambda v: v), (("head_size", "head_dim"), lambda v: width // v)):
        for m in mods:
            for key, value in vars(m).items():
                if (
                    key.endswith(suffixes)
                    and not key.startswith("all_")
                    and isinstance(value, int)
                    and not isinstance(value, bool)
                    and value > 0
                    and width % value == 0
                ):
                    return to_heads(value)
    path = block.split(".") if block else []
    for i in range(len(path), -1, -1):
        config = getattr(module.get_submodule(".".join(path[:i])), "config", None)
        heads = getattr(config, "num_attention_heads", None)
        if isinstance(heads, int) and heads > 0 and width % heads == 0:
            return heads
    return None


def _per_head_params(flow: _Flow, deps: int, heads: int, module: nn.Module) -> list[str]:
    """Parameters outside the projections that the attention scores read, one value per head."""
    shapes = dict(module.named_parameters())
    found = []
    for name, bit in flow.param_bits.items():
        if deps & bit and heads in tuple(shapes[name].shape):
            found.append(name)
    return found


def _attention_units(module: nn.Module, flow: _Flow) -> list[tuple[int, dict]]:
    """(call position, description) of each attention: the output projection and its sources."""
    linear = dict(module.named_modules())
    units = []
    for pos, c in enumerate(flow.calls):
        if c.kind == "mha":
            units.append((pos, {"out": c.name, "mha": True}))
            continue
        sources = _sources(flow, c.deps)
        by_input: dict[int, set[str]] = {}
        for s in sources:
            by_input.setdefault(s.source, set()).add(s.name)
        if not any(len(names) >= 3 for names in by_input.values()):
            continue
        names = tuple(dict.fromkeys(s.name for s in sources))
        width = linear[c.name].in_features
        units.append((pos, {"out": c.name, "in": names, "width": width, "deps": c.deps}))
    return units


def _ffn_unit(module: nn.Module, flow: _Flow, c: _Call, after: int) -> tuple[str, ...] | None:
    """The up (and gate) Linears of a feed-forward whose down projection is call ``c``, all
    called after position ``after`` (the attention) on one tensor."""
    if c.kind != "linear":
        return None
    mods = dict(module.named_modules())
    down = mods[c.name]
    sources = [s for s in flow.calls if c.deps & s.bit]  # an attention among them: a residual
    names = tuple(dict.fromkeys(s.name for s in sources))
    if (
        not 1 <= len(names) <= 2
        or len({s.source for s in sources}) != 1
        or any(s.kind != "linear" or s.bit <= flow.calls[after].bit for s in sources)  # bits grow
    ):
        return None
    ups = [mods[n] for n in names]
    if all(u.out_features == down.in_features and u.in_features == down.out_features for u in ups):
        return names
    return None


def _block(module: nn.Module, flow: _Flow, attn: dict, ups: tuple[str, ...], down: str) -> Block:
    mods = dict(module.named_modules())
    n_ffn = mods[down].in_features
    refusal: str | None
    heads: int | None
    if attn.get("mha"):
        mha = mods[attn["out"]]
        name = _ancestor([attn["out"], *ups, down])
        refusal = (
            f"its attention '{attn['out']}' is an nn.MultiheadAttention, whose head size is fixed "
            f"by embed_dim / num_heads"
        )
        heads = int(getattr(mha, "num_heads", 1))
        size = int(getattr(mha, "head_dim", 0))
        return Block(name, (), attn["out"], attn["out"], size, heads, ups, down, n_ffn, refusal)
    width, heads_in = attn["width"], attn["in"]
    attention = _ancestor([*heads_in, attn["out"]])
    name = _ancestor([attention, *ups, down])
    heads = _heads(module, attention, name, width)
    refusal = None
    if any(mods[n].out_features != width for n in heads_in):
        refusal = (
            f"the projections its attention output '{attn['out']}' reads are not all "
            f"{width} wide (grouped or multi-query attention)"
        )
    elif heads is None:
        refusal = f"its head count is neither an attribute of '{attention}' nor in the model's config"
    else:
        shared = _per_head_params(flow, attn["deps"], heads, module)
        if shared:
            refusal = (
                f"its attention scores add '{shared[0]}', a per-head term computed outside the "
                f"layer (shared by every layer's heads)"
            )
    n_heads = heads or 1
    return Block(name, heads_in, attn["out"], attention, width // n_heads, n_heads, ups, down, n_ffn, refusal)


def find_encoder_blocks(module: nn.Module, example_inputs) -> list[Block]:
    """Every encoder block of ``module`` in call order, found from one forward's data flow.

    ``example_inputs`` is what ``module`` is called with: a tuple (positional), a dict
    (keywords) or one tensor. A block whose weights run more than once per forward (shared
    across depth) is listed once, with ``calls`` > 1.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    flow = trace_flow(module, inputs)
    attention = _attention_units(module, flow)
    starts = [pos for pos, _ in attention] + [len(flow.calls)]
    blocks: dict[str, Block] = {}
    for (pos, attn), end in zip(attention, starts[1:], strict=True):
        for c in flow.calls[pos + 1 : end]:
            ups = _ffn_unit(module, flow, c, pos)
            if ups is not None:
                if attn["out"] in blocks:
                    blocks[attn["out"]].calls += 1
                else:
                    blocks[attn["out"]] = _block(module, flow, attn, ups, c.name)
                break
    return list(blocks.values())


def shared_refusal(blocks: list[Block], what: str) -> None:
    """Refuse blocks whose weights serve several layers (ALBERT): one cut would hit them all."""
    for b in blocks:
        if b.calls > 1:
            raise PressoError(
                f"{what} cannot change '{b.name}': it runs {b.calls} times per forward (its "
                f"layers share weights, as in ALBERT); compress it with int8 or a factory student."
            )
