"""Physically remove attention heads and feed-forward neurons of transformer encoders.

The blocks are found from the model's data flow (:mod:`.transformer_find`), not from one
family's attribute names: BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, MPNet, DeBERTa-v2 and
PyTorch's ``nn.TransformerEncoder`` alike. In each block:

* head ``h`` = rows ``h*d:(h+1)*d`` of every head projection (query, key, value, and
  DeBERTa's relative-position projections) and the same columns of the attention output
  projection (``d`` = the head size);
* neuron ``n`` = row ``n`` of the up (and gate) projection and column ``n`` of the down one.

The four concerns stay apart: analysis (:func:`find_encoder_blocks`), scoring (one score per
head / neuron, :func:`_scores`), policy (how many to remove, :func:`_plan`) and surgery
(:func:`_cut_heads`, :func:`_cut_neurons`: given indices, no ratios). Removing heads also
updates the attention module's integer attributes that hold the head count (names ending in
``heads``) or the all-heads width (``all_head_size``, ``dim``...). Each pruned layer is
checked on the example inputs against the *masked* model (the removed heads' / neurons'
columns of the output projections zeroed); a layer that fails is refused with a
:class:`~presso.errors.PressoError` naming it and the model is left as it was. Refused with
one line: heads of an attention that adds a per-head term shared by all layers (MPNet's
relative position bias) or of an ``nn.MultiheadAttention`` (its head size is fixed), and
any block whose weights serve several layers (ALBERT).

>>> import torch
>>> from transformers import BertConfig, BertModel
>>> bert = BertModel(BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
...                             num_hidden_layers=2, vocab_size=100))
>>> ids = torch.randint(0, 100, (2, 8))
>>> report = prune_transformer(bert, {"input_ids": ids}, heads_ratio=0.5, ffn_ratio=0.5)
>>> block = bert.encoder.layer[0]
>>> block.attention.self.num_attention_heads, block.intermediate.dense.out_features
(2, 64)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters, first_tensor
from presso.techniques.pruning.transformer_find import (
    WIDTH_NAMES,
    Block,
    find_encoder_blocks,
    shared_refusal,
)

__all__ = [
    "IMPORTANCES",
    "SCOPES",
    "Block",
    "TransformerPruneReport",
    "attention_shape",
    "find_encoder_blocks",
    "find_encoder_layers",
    "masked_transformer",
    "prune_transformer",
    "shared_refusal",
]

IMPORTANCES = ("l2", "taylor", "activation", "random")
SCOPES = ("layer", "global")
_EQUIV_RTOL = 1e-4
_EQUIV_ATOL = 1e-5


@dataclass
class TransformerPruneReport:
    """What :func:`prune_transformer` removed (indices in the original numbering)."""

    params_before: int
    params_after: int
    heads: dict[int, tuple[int, ...]]  # layer index -> removed head indices
    neurons: dict[int, tuple[int, ...]]  # layer index -> removed intermediate neurons
    layer_names: tuple[str, ...] = ()  # qualified name of layer i
    heads_before: tuple[int, ...] = ()  # heads of layer i before pruning
    ffn_before: tuple[int, ...] = ()  # intermediate neurons of layer i before pruning
    parts: tuple[tuple[str, str, int], ...] = ()  # layer i: attention output, FFN down, head size

    def summary(self) -> list[dict]:
        """Per layer: heads and feed-forward neurons kept and removed (for reports)."""
        return [
            {
                "layer": name,
                "heads_kept": self.heads_before[i] - len(self.heads.get(i, ())),
                "heads_removed": len(self.heads.get(i, ())),
                "ffn_kept": self.ffn_before[i] - len(self.neurons.get(i, ())),
                "ffn_removed": len(self.neurons.get(i, ())),
            }
            for i, name in enumerate(self.layer_names)
        ]


def _validate(heads_ratio, ffn_ratio, importance, scope, round_to) -> None:
    for key, ratio in (("heads_ratio", heads_ratio), ("ffn_ratio", ffn_ratio)):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise PressoError(
                f"The '{key}' of transformer pruning must be a float in [0, 1). Got {ratio!r} instead."
            )
    if importance not in IMPORTANCES:
        raise PressoError(
            f"The 'importance' of transformer pruning must be one of "
            f"{', '.join(IMPORTANCES)}. Got {importance!r} instead."
        )
    if scope not in SCOPES:
        raise PressoError(
            f"The 'scope' of transformer pruning must be one of {', '.join(SCOPES)}. Got {scope!r} instead."
        )
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise PressoError(
            f"The 'round_to' of transformer pruning must be a positive int or None. Got {round_to!r} instead."
        )


def _run(module: nn.Module, inputs) -> torch.Tensor:
    out = module(**inputs) if isinstance(inputs, dict) else module(*inputs)
    return first_tensor(out)


# ---------------------------------------------------------------- analysis


def _linear(root: nn.Module, name: str) -> nn.Linear:
    found = root.get_submodule(name)
    if not isinstance(found, nn.Linear):  # a model other than the one analysed
        raise PressoError(f"'{name}' is no longer an nn.Linear; analyse the model again.")
    return found


def _n_heads(root: nn.Module, name: str, head_size: int) -> int:
    """Heads of the attention whose output projection is ``name``, as the model is now."""
    found = root.get_submodule(name)
    if isinstance(found, nn.MultiheadAttention):
        return found.num_heads
    return _linear(root, name).in_features // head_size


def _remember(root: nn.Module, blocks: list[Block]) -> None:
    """Keep where the attentions are on the model (deep copies keep it): :func:`attention_shape`
    reads the pruned model without example inputs."""
    root.__dict__["_presso_attention"] = tuple((b.attn_out, b.head_size) for b in blocks)


def find_encoder_layers(module: nn.Module, example_inputs) -> list[tuple[str, nn.Module]]:
    """Every encoder block inside ``module``, with its qualified name, in call order.

    >>> from torch import nn
    >>> find_encoder_layers(nn.Sequential(nn.Linear(4, 4)), (torch.randn(1, 4),))
    []
    """
    inputs = _call_form(example_inputs)
    return [(b.name, module.get_submodule(b.name)) for b in find_encoder_blocks(module, inputs)]


def _blocks(module: nn.Module, inputs, heads: bool) -> list[Block]:
    found = find_encoder_blocks(module, inputs)
    if not found:
        raise PressoError(
            "Transformer pruning found no encoder block (query/key/value Linears on one input "
            "read by an attention output Linear, then a feed-forward Linear pair) in this "
            "model; use the 'slim' channel pruning for CNNs/MLPs."
        )
    shared_refusal(found, "Transformer pruning")
    for b in found:
        if heads and b.heads_refusal:
            raise PressoError(
                f"Transformer pruning cannot remove heads of '{b.name}': {b.heads_refusal}; "
                f"set heads to 0 to remove feed-forward neurons only."
            )
    return found


# ---------------------------------------------------------------- scoring


def _linears(root: nn.Module, B: Block) -> list[nn.Linear]:
    heads = [*B.heads_in, B.attn_out] if not B.heads_refusal else []
    return [_linear(root, n) for n in (*heads, *B.ffn_in, B.ffn_out)]


def _group_sums(root: nn.Module, B: Block, f) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``f(param)`` (elementwise) over the weights of each head and each neuron."""
    H, d = B.n_heads, B.head_size
    heads = torch.zeros(H)
    if not B.heads_refusal:
        heads = f(_linear(root, B.attn_out).weight).reshape(-1, H, d).sum((0, 2))  # columns of (C, H*d)
        for lin in (_linear(root, n) for n in B.heads_in):
            heads = heads + f(lin.weight).reshape(H, d, -1).sum((1, 2))  # rows of (H*d, C)
            if lin.bias is not None:
                heads = heads + f(lin.bias).reshape(H, d).sum(1)
    ffn = f(_linear(root, B.ffn_out).weight).sum(0)  # columns of (C, N)
    for lin in (_linear(root, n) for n in B.ffn_in):
        ffn = ffn + f(lin.weight).sum(1)  # rows of (N, C)
        if lin.bias is not None:
            ffn = ffn + f(lin.bias)
    return heads, ffn


def _taylor_grads(module: nn.Module, blocks: list[Block], inputs) -> dict:
    params = [p for B in blocks for lin in _linears(module, B) for p in lin.parameters()]
    params = list(dict.fromkeys(params))
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = _run(module, inputs).float().pow(2).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return {p: torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)}


def _activations(module: nn.Module, blocks: list[Block], inputs) -> list[tuple]:
    """Mean norm of each head's context vector (the attention output projection's input) and
    mean |activation| of each neuron (the down projection's input)."""
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def hook(i: int, kind: str, B: Block):
        def record(_m, args):
            x = args[0].detach().float()
            if kind == "heads":  # (B, T, H*d)
                x = x.reshape(*x.shape[:-1], B.n_heads, B.head_size).norm(dim=-1)
            seen[(i, kind)] = x.abs().reshape(-1, x.shape[-1]).mean(0)

        return record

    handles = []
    for i, B in enumerate(blocks):
        if not B.heads_refusal:
            handles.append(_linear(module, B.attn_out).register_forward_pre_hook(hook(i, "heads", B)))
        else:
            seen[(i, "heads")] = torch.zeros(B.n_heads)
        handles.append(_linear(module, B.ffn_out).register_forward_pre_hook(hook(i, "ffn", B)))
    try:
        with torch.no_grad():
            _run(module, inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [B.name for i, B in enumerate(blocks) if (i, "heads") not in seen or (i, "ffn") not in seen]
    if missing:
        raise PressoError(
            f"The 'activation' importance saw no activations of layer '{missing[0]}' on "
            f"the example inputs; use importance 'l2' or 'taylor'."
        )
    return [(seen[(i, "heads")], seen[(i, "ffn")]) for i in range(len(blocks))]


def _scores(
    module: nn.Module, blocks: list[Block], inputs, importance: str, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One score per head and per neuron of every block (higher = more important)."""
    if importance == "activation":
        return _activations(module, blocks, inputs)
    if importance == "random":
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(B.n_heads, generator=g), torch.rand(B.n_ffn, generator=g)) for B in blocks]
    if importance == "taylor":
        grads = _taylor_grads(module, blocks, inputs)
        sums = [_group_sums(module, B, lambda p: (p * grads[p]).detach().float()) for B in blocks]
        return [(h.abs(), n.abs()) for h, n in sums]
    sums = [_group_sums(module, B, lambda p: p.detach().float().pow(2)) for B in blocks]
    return [(h.sqrt(), n.sqrt()) for h, n in sums]


# ---------------------------------------------------------------- policy


def _global_counts(scores: list[torch.Tensor], budget: int, floors: list[int]) -> list[int]:
    """Per layer, how many of the globally lowest ``budget`` scores to remove (floors kept)."""
    ranked = sorted((float(s), li, j) for li, layer in enumerate(scores) for j, s in enumerate(layer))
    counts = [0] * len(scores)
    for _, li, _ in ranked:
        if budget == 0:
            break
        if len(scores[li]) - counts[li] > floors[li]:
            counts[li] += 1
            budget -= 1
    return counts


def _lowest(scores: torch.Tensor, k: int) -> tuple[int, ...]:
    return tuple(sorted(torch.argsort(scores, stable=True)[:k].tolist()))


def _plan(scores, heads_ratio: float, ffn_ratio: float, scope: str, round_to: int | None):
    """Removed head and neuron indices per layer."""
    head_scores, ffn_scores = [s[0] for s in scores], [s[1] for s in scores]
    ffn_floors = [min(len(s), round_to or 1) for s in ffn_scores]
    if scope == "global":
        head_counts = _global_counts(
            head_scores, round(heads_ratio * sum(map(len, head_scores))), [1] * len(head_scores)
        )
        ffn_counts = _global_counts(ffn_scores, round(ffn_ratio * sum(map(len, ffn_scores))), ffn_floors)
    else:
        head_counts = [min(round(heads_ratio * len(s)), len(s) - 1) for s in head_scores]
        ffn_counts = [
            min(round(ffn_ratio * len(s)), len(s) - f) for s, f in zip(ffn_scores, ffn_floors, strict=True)
        ]
    if round_to:  # kept neurons rounded *up* to a multiple of round_to (never above the layer's size)
        ffn_counts = [
            len(s) - min(len(s), math.ceil((len(s) - c) / round_to) * round_to)
            for s, c in zip(ffn_scores, ffn_counts, strict=True)
        ]
    heads = {i: _lowest(s, c) for i, (s, c) in enumerate(zip(head_scores, head_counts, strict=True))}
    neurons = {i: _lowest(s, c) for i, (s, c) in enumerate(zip(ffn_scores, ffn_counts, strict=True))}
    return heads, neurons


# ---------------------------------------------------------------- surgery


def _sliced(lin: nn.Linear, keep: list[int], dim: int) -> nn.Linear:
    """A smaller copy of ``lin`` keeping outputs (``dim=0``) or inputs (``dim=1``) ``keep``."""
    idx = torch.tensor(keep, dtype=torch.long, device=lin.weight.device)
    weight = lin.weight.detach().index_select(dim, idx)  # (out, in)
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=lin.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach().index_select(0, idx) if dim == 0 else lin.bias.detach())
    new.train(lin.training)
    new.requires_grad_(lin.weight.requires_grad)
    return new


def _set(undo: list, obj, attr: str, value) -> None:
    undo.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, value)


def _replace(root: nn.Module, name: str, keep: list[int], dim: int, undo: list) -> None:
    """The Linear ``name`` replaced by its slice (rows ``dim=0`` or columns ``dim=1``)."""
    parent, _, attr = name.rpartition(".")
    _set(undo, root.get_submodule(parent), attr, _sliced(_linear(root, name), keep, dim))


def _cut_heads(root: nn.Module, B: Block, removed: tuple[int, ...], undo: list) -> None:
    """Remove heads ``removed``, and update the attention's head count and width attributes."""
    keep_heads = [h for h in range(B.n_heads) if h not in set(removed)]
    cols = B.head_columns(keep_heads)
    for name in B.heads_in:
        _replace(root, name, cols, 0, undo)
    _replace(root, B.attn_out, cols, 1, undo)
    width = B.n_heads * B.head_size
    for m in root.get_submodule(B.attention).modules():
        if isinstance(m, nn.Linear):
            continue
        for key, value in list(vars(m).items()):
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if key.endswith("heads") and value == B.n_heads:
                _set(undo, m, key, len(keep_heads))
            elif (key in WIDTH_NAMES or key.endswith("all_head_size")) and value == width:
                _set(undo, m, key, len(cols))


def _cut_neurons(root: nn.Module, B: Block, removed: tuple[int, ...], undo: list) -> None:
    keep = [n for n in range(B.n_ffn) if n not in set(removed)]
    for name in B.ffn_in:
        _replace(root, name, keep, 0, undo)
    _replace(root, B.ffn_out, keep, 1, undo)


def _zero_columns(root: nn.Module, part: tuple[str, str, int], heads, neurons) -> None:
    attn_out, ffn_out, d = part
    with torch.no_grad():
        if heads:
            _linear(root, attn_out).weight[:, [h * d + j for h in heads for j in range(d)]] = 0  # (C, H*d)
        _linear(root, ffn_out).weight[:, list(neurons)] = 0  # (C, N)


def _part(B: Block) -> tuple[str, str, int]:
    return B.attn_out, B.ffn_out, B.head_size


def _masked_output(module: nn.Module, B: Block, heads, neurons, inputs) -> torch.Tensor:
    """The outputs with block ``B``'s removed heads / neurons cut off by zeroed columns."""
    lins = [_linear(module, B.ffn_out)] + ([_linear(module, B.attn_out)] if heads else [])
    saved = [lin.weight.detach().clone() for lin in lins]
    try:
        _zero_columns(module, _part(B), heads, neurons)
        with torch.no_grad():
            return _run(module, inputs)
    finally:
        with torch.no_grad():
            for lin, w in zip(lins, saved, strict=True):
                lin.weight.copy_(w)


def _check(module: nn.Module, B: Block, inputs, ref: torch.Tensor, expect: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = _run(module, inputs)
    except Exception as err:
        raise PressoError(
            f"Transformer pruning broke layer '{B.name}': the model no longer runs "
            f"({type(err).__name__}: {err}); its attention probably reshapes with a "
            f"fixed head count."
        ) from err
    if out.shape != ref.shape:
        raise PressoError(
            f"Transformer pruning of layer '{B.name}' would change the model's output "
            f"shape from {tuple(ref.shape)} to {tuple(out.shape)}."
        )
    if not torch.allclose(out, expect, rtol=_EQUIV_RTOL, atol=_EQUIV_ATOL):
        diff = (out - expect).abs().max().item()
        raise PressoError(
            f"Transformer pruning of layer '{B.name}' changes the outputs of the kept "
            f"heads / neurons (max difference {diff:.3g} from the masked model); its "
            f"attention does not lay heads out as contiguous blocks of query/key/value."
        )


# ---------------------------------------------------------------- entry points


def _sizes(blocks: list[Block]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Names, head counts and feed-forward widths: what a report records of the unpruned model."""
    return tuple(B.name for B in blocks), tuple(B.n_heads for B in blocks), tuple(B.n_ffn for B in blocks)


def _call_form(example_inputs: tuple | dict | torch.Tensor) -> tuple | dict:
    """Keyword inputs as they are; a lone tensor is the one positional input."""
    if isinstance(example_inputs, dict):
        return example_inputs
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _reference(module: nn.Module, inputs) -> torch.Tensor:
    """The unpruned outputs; a model that does not run on the inputs is the caller's mistake."""
    try:
        with torch.no_grad():
            return _run(module, inputs)
    except Exception as err:
        raise PressoError(
            f"Transformer pruning could not run the model on the example inputs "
            f"({type(err).__name__}: {err}). Pass what the model's forward takes, "
            f"as a tuple (positional) or a dict (keywords)."
        ) from err


def _cut_and_check(
    module: nn.Module, blocks: list[Block], heads: dict, neurons: dict, inputs, ref: torch.Tensor, undo: list
) -> None:
    """Cut block by block, each checked before the next: a failure then names its block, and
    the masked reference of each block is taken with the blocks before it already cut."""
    for i, B in enumerate(blocks):
        if not heads[i] and not neurons[i]:
            continue
        expect = _masked_output(module, B, heads[i], neurons[i], inputs)
        if heads[i]:
            _cut_heads(module, B, heads[i], undo)
        if neurons[i]:
            _cut_neurons(module, B, neurons[i], undo)
        _check(module, B, inputs, ref, expect)


def prune_transformer(
    module: nn.Module,
    example_inputs: tuple | dict,
    heads_ratio: float = 0.0,
    ffn_ratio: float = 0.5,
    importance: str = "l2",
    scope: str = "layer",
    round_to: int | None = 8,
    seed: int = 0,
) -> TransformerPruneReport:
    """Remove attention heads and feed-forward neurons of every encoder block, in place.

    Parameters
    ----------
    module : nn.Module
        A model containing transformer encoder blocks (e.g. ``BertModel``, a
        ``DistilBertForSequenceClassification``, an ``nn.TransformerEncoder`` or presso's
        wrappers of them). Changed in place only if every block passes its checks.
    example_inputs : tuple of Tensor or dict
        What ``module`` is called with (positionally, or as keyword arguments).
    heads_ratio, ffn_ratio : float in [0, 1)
        Fraction of heads / intermediate neurons removed: ``round(ratio * n)`` per layer
        (``scope="layer"``), or of all layers' together ranked by score (``"global"``).
        At least one head and ``round_to`` (or 1) neurons stay in every layer.
    importance : {"l2", "taylor", "activation", "random"}
        ``"l2"``: norm of the weights and biases removed with the head / neuron (its rows of
        the head projections or of the up projection and columns of the output projection).
        ``"taylor"``: ``|sum w * grad|`` over those, for the mean squared output.
        ``"activation"``: mean norm of the head's context vector / mean ``|activation|`` of the
        neuron on ``example_inputs``. ``"random"``: seeded by ``seed``.
    round_to : int, optional
        Kept neurons per layer are rounded *up* to a multiple of this (vector-friendly GEMMs).

    Returns
    -------
    TransformerPruneReport
        Parameter counts and removed indices per layer. Keep a deep copy of the model from
        before pruning to build :func:`masked_transformer`. After removing heads, fuse the
        exported graph with :func:`attention_shape`, not the config's head count.

    Raises
    ------
    PressoError
        For bad options, a model without encoder blocks, heads asked of an attention whose
        heads cannot go (see the module docstring), blocks that share weights across depth,
        or a layer whose pruned form no longer runs or differs from its masked form (the
        model is then left unchanged).

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
    ...                             num_hidden_layers=1, vocab_size=50))
    >>> report = prune_transformer(bert, (torch.randint(0, 50, (1, 6)),), heads_ratio=0.25)
    >>> report.summary()[0]["heads_kept"], report.summary()[0]["ffn_kept"]
    (3, 32)
    """
    _validate(heads_ratio, ffn_ratio, importance, scope, round_to)
    inputs = _call_form(example_inputs)
    before = count_parameters(module)
    was_training = module.training
    module.eval()
    undo: list = []
    try:
        ref = _reference(module, inputs)
        blocks = _blocks(module, inputs, heads=heads_ratio > 0)
        scores = _scores(module, blocks, inputs, importance, seed)
        heads, neurons = _plan(scores, float(heads_ratio), float(ffn_ratio), scope, round_to)
        _cut_and_check(module, blocks, heads, neurons, inputs, ref, undo)
    except BaseException:
        for obj, attr, old in reversed(undo):
            setattr(obj, attr, old)
        raise
    finally:
        module.train(was_training)
    _remember(module, blocks)
    parts = tuple(_part(B) for B in blocks)
    return TransformerPruneReport(before, count_parameters(module), heads, neurons, *_sizes(blocks), parts)


def attention_shape(module: nn.Module, example_inputs: tuple | dict | None = None) -> dict[str, int]:
    """``{"num_heads", "hidden_size"}`` of the attention layers, as ONNX Runtime's fusion needs.

    BERT exports reshape Q/K/V to ``(B, T, -1, head_size)``, so ONNX Runtime's transformer
    optimizer cannot read the head count and applies the ``num_heads`` it is given to every
    layer; its ``hidden_size`` must be ``num_heads * head_size`` (the Q/K/V width). After head
    pruning the config's values are wrong: the fused graph computes other heads (MiniLM-L6,
    9 of 12 heads left, fused with 12/384: embeddings off by 0.39). Layers left with different
    head counts share no value: ``{"num_heads": 0, "hidden_size": 0}`` (no Attention fusion).

    Without ``example_inputs`` the attentions are those the last analysis of this model (or of
    the model it was deep-copied from) found: :func:`prune_transformer` and students' depth /
    width leave them on it.
    """
    if example_inputs is not None:
        parts = [(B.attn_out, B.head_size) for B in find_encoder_blocks(module, _call_form(example_inputs))]
    else:
        parts = list(module.__dict__.get("_presso_attention", ()))
    if not parts:
        raise PressoError(
            "attention_shape found no attention in this model; pass its example inputs "
            "(what its forward takes) so its encoder blocks can be traced."
        )
    shapes = {(_n_heads(module, name, d), d) for name, d in parts}
    if len(shapes) != 1:
        return {"num_heads": 0, "hidden_size": 0}
    heads, size = shapes.pop()
    return {"num_heads": heads, "hidden_size": heads * size}


def masked_transformer(original: nn.Module, report: TransformerPruneReport) -> nn.Module:
    """A copy of the *unpruned* ``original`` whose removed heads / neurons influence nothing.

    The removed heads' columns of each attention output projection and the removed neurons'
    columns of each down projection are zeroed, so the copy's outputs equal the physically
    pruned model's up to float rounding. ``original`` is a deep copy taken before
    :func:`prune_transformer` (which prunes in place).
    """
    masked = copy.deepcopy(original)
    try:
        sizes = tuple(
            (_n_heads(masked, o, d), _linear(masked, down).in_features) for o, down, d in report.parts
        )
    except (AttributeError, PressoError):
        sizes = ()
    if sizes != tuple(zip(report.heads_before, report.ffn_before, strict=True)):
        raise PressoError(
            "masked_transformer needs the model as it was before pruning (its layers, "
            "heads or feed-forward sizes differ from the report's); keep a "
            "copy.deepcopy of it before calling prune_transformer."
        )
    for i, part in enumerate(report.parts):
        _zero_columns(masked, part, report.heads.get(i, ()), report.neurons.get(i, ()))
    return masked
