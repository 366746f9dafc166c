"""Physically remove attention heads and feed-forward neurons of BERT-style encoders.

A BERT layer (``BertLayer`` of transformers, also RoBERTa/ELECTRA/MiniLM) couples:

* head ``h`` = rows ``h*d:(h+1)*d`` of ``attention.self.{query,key,value}`` and the same
  columns of ``attention.output.dense`` (``d`` = ``attention_head_size``);
* neuron ``n`` = row ``n`` of ``intermediate.dense`` and column ``n`` of ``output.dense``.

The four concerns stay apart: analysis (:func:`find_encoder_layers`), scoring (one score per
head / neuron, :func:`_scores`), policy (how many to remove, :func:`_plan`) and surgery
(:func:`_cut_heads`, :func:`_cut_neurons`: given indices, no ratios). Each pruned layer is
checked on the example inputs against the *masked* model (the removed heads' / neurons'
columns of the output projections zeroed); a layer that fails is refused with a
:class:`~presso.errors.PressoError` naming it and the model is left as it was.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters, first_tensor

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


def _path(m: nn.Module, path: str) -> Any:
    """``m.a.b`` for ``path`` ``"a.b"``, by plain attribute access (AttributeError where it
    fails). torch types ``Module.__getattr__`` as ``Tensor | Module``, so chained access to
    a submodule does not type-check; callers declare what they expect to find."""
    found: Any = m
    for name in path.split("."):
        found = getattr(found, name)
    return found


class _Layer:
    """The six projections of one BERT layer, checked to line up."""

    def __init__(self, name: str, layer: nn.Module) -> None:
        self.name, self.layer = name, layer
        # find_encoder_layers only returns layers whose six projections are nn.Linear.
        self.attn: nn.Module = _path(layer, "attention.self")
        self.q: nn.Linear = _path(self.attn, "query")
        self.k: nn.Linear = _path(self.attn, "key")
        self.v: nn.Linear = _path(self.attn, "value")
        self.attn_out: nn.Linear = _path(layer, "attention.output.dense")
        self.inter: nn.Linear = _path(layer, "intermediate.dense")
        self.out: nn.Linear = _path(layer, "output.dense")
        width = self.q.out_features
        heads = getattr(self.attn, "num_attention_heads", None)
        self.head_size = int(getattr(self.attn, "attention_head_size", 0) or width // max(heads or 1, 1))
        if (
            self.head_size < 1
            or width % self.head_size
            or self.k.out_features != width
            or self.v.out_features != width
            or self.attn_out.in_features != width
            or self.inter.out_features != self.out.in_features
        ):
            raise PressoError(
                f"Layer '{name}' looks BERT-like but its projections do not line up "
                f"(query/key/value {self.q.out_features}/{self.k.out_features}/"
                f"{self.v.out_features} wide, head size {self.head_size}, "
                f"attention.output.dense reads {self.attn_out.in_features}); "
                f"transformer pruning supports standard multi-head attention only."
            )
        self.n_heads, self.n_ffn = width // self.head_size, self.inter.out_features

    def head_columns(self, heads: Iterable[int]) -> list[int]:
        d = self.head_size
        return [h * d + j for h in heads for j in range(d)]


def _is_bert_layer(m: nn.Module) -> bool:
    try:
        parts = (
            _path(m, "attention.self.query"),
            _path(m, "attention.self.key"),
            _path(m, "attention.self.value"),
            _path(m, "attention.output.dense"),
            _path(m, "intermediate.dense"),
            _path(m, "output.dense"),
        )
    except AttributeError:
        return False
    return all(isinstance(p, nn.Linear) for p in parts)


def find_encoder_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BERT-like layer inside ``module``, with its qualified name, in module order.

    A layer qualifies when it has ``attention.self.{query,key,value}``,
    ``attention.output.dense``, ``intermediate.dense`` and ``output.dense`` (all Linear).

    >>> from torch import nn
    >>> find_encoder_layers(nn.Sequential(nn.Linear(4, 4)))
    []
    """
    return [(name, m) for name, m in module.named_modules() if _is_bert_layer(m)]


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


# ---------------------------------------------------------------- scoring


def _group_sums(L: _Layer, f) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``f(param)`` (elementwise) over the weights of each head and each neuron."""
    H, d = L.n_heads, L.head_size
    heads = f(L.attn_out.weight).reshape(-1, H, d).sum((0, 2))  # columns of (C, H*d)
    for lin in (L.q, L.k, L.v):
        heads = heads + f(lin.weight).reshape(H, d, -1).sum((1, 2))  # rows of (H*d, C)
        if lin.bias is not None:
            heads = heads + f(lin.bias).reshape(H, d).sum(1)
    ffn = f(L.inter.weight).sum(1) + f(L.out.weight).sum(0)  # (N,)
    if L.inter.bias is not None:
        ffn = ffn + f(L.inter.bias)
    return heads, ffn


def _taylor_grads(module: nn.Module, layers: list[_Layer], inputs) -> dict:
    params = [
        p for L in layers for lin in (L.q, L.k, L.v, L.attn_out, L.inter, L.out) for p in lin.parameters()
    ]
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


def _activations(module: nn.Module, layers: list[_Layer], inputs) -> list[tuple]:
    """Mean norm of each head's context vector and mean |activation| of each neuron."""
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def hook(i: int, kind: str, L: _Layer):
        def record(_m, _args, out):
            out = first_tensor(out).detach().float()
            if kind == "heads":  # (B, T, H*d)
                out = out.reshape(*out.shape[:-1], L.n_heads, L.head_size).norm(dim=-1)
            seen[(i, kind)] = out.abs().reshape(-1, out.shape[-1]).mean(0)

        return record

    handles = []
    for i, L in enumerate(layers):
        handles.append(L.attn.register_forward_hook(hook(i, "heads", L)))
        handles.append(_path(L.layer, "intermediate").register_forward_hook(hook(i, "ffn", L)))
    try:
        with torch.no_grad():
            _run(module, inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [L.name for i, L in enumerate(layers) if (i, "heads") not in seen or (i, "ffn") not in seen]
    if missing:
        raise PressoError(
            f"The 'activation' importance saw no activations of layer '{missing[0]}' on "
            f"the example inputs; use importance 'l2' or 'taylor'."
        )
    return [(seen[(i, "heads")], seen[(i, "ffn")]) for i in range(len(layers))]


def _scores(
    module: nn.Module, layers: list[_Layer], inputs, importance: str, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One score per head and per neuron of every layer (higher = more important)."""
    if importance == "activation":
        return _activations(module, layers, inputs)
    if importance == "random":
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(L.n_heads, generator=g), torch.rand(L.n_ffn, generator=g)) for L in layers]
    if importance == "taylor":
        grads = _taylor_grads(module, layers, inputs)
        sums = [_group_sums(L, lambda p: (p * grads[p]).detach().float()) for L in layers]
        return [(h.abs(), n.abs()) for h, n in sums]
    sums = [_group_sums(L, lambda p: p.detach().float().pow(2)) for L in layers]
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


def _cut_heads(L: _Layer, removed: tuple[int, ...], undo: list) -> None:
    """Remove heads ``removed``; the reshape reads ``attention_head_size`` (kept) and -1 heads."""
    keep_heads = [h for h in range(L.n_heads) if h not in set(removed)]
    cols = L.head_columns(keep_heads)
    for attr in ("query", "key", "value"):
        _set(undo, L.attn, attr, _sliced(getattr(L.attn, attr), cols, 0))
    _set(undo, _path(L.layer, "attention.output"), "dense", _sliced(L.attn_out, cols, 1))
    _set(undo, L.attn, "num_attention_heads", len(keep_heads))
    _set(undo, L.attn, "all_head_size", len(cols))


def _cut_neurons(L: _Layer, removed: tuple[int, ...], undo: list) -> None:
    keep = [n for n in range(L.n_ffn) if n not in set(removed)]
    _set(undo, _path(L.layer, "intermediate"), "dense", _sliced(L.inter, keep, 0))
    _set(undo, _path(L.layer, "output"), "dense", _sliced(L.out, keep, 1))


def _zero_columns(L: _Layer, heads: tuple[int, ...], neurons: tuple[int, ...]) -> None:
    with torch.no_grad():
        L.attn_out.weight[:, L.head_columns(heads)] = 0  # (C, H*d)
        L.out.weight[:, list(neurons)] = 0  # (C, N)


def _masked_output(module: nn.Module, L: _Layer, heads, neurons, inputs) -> torch.Tensor:
    """The outputs with layer ``L``'s removed heads / neurons cut off by zeroed columns."""
    saved = (L.attn_out.weight.detach().clone(), L.out.weight.detach().clone())
    try:
        _zero_columns(L, heads, neurons)
        with torch.no_grad():
            return _run(module, inputs)
    finally:
        with torch.no_grad():
            L.attn_out.weight.copy_(saved[0])
            L.out.weight.copy_(saved[1])


def _check(module: nn.Module, L: _Layer, inputs, ref: torch.Tensor, expect: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = _run(module, inputs)
    except Exception as err:
        raise PressoError(
            f"Transformer pruning broke layer '{L.name}': the model no longer runs "
            f"({type(err).__name__}: {err}); its attention probably reshapes with a "
            f"fixed head count."
        ) from err
    if out.shape != ref.shape:
        raise PressoError(
            f"Transformer pruning of layer '{L.name}' would change the model's output "
            f"shape from {tuple(ref.shape)} to {tuple(out.shape)}."
        )
    if not torch.allclose(out, expect, rtol=_EQUIV_RTOL, atol=_EQUIV_ATOL):
        diff = (out - expect).abs().max().item()
        raise PressoError(
            f"Transformer pruning of layer '{L.name}' changes the outputs of the kept "
            f"heads / neurons (max difference {diff:.3g} from the masked model); its "
            f"attention does not lay heads out as contiguous blocks of query/key/value."
        )


# ---------------------------------------------------------------- entry points


def _layers(module: nn.Module) -> list[_Layer]:
    found = find_encoder_layers(module)
    if not found:
        raise PressoError(
            "Transformer pruning found no BERT-style encoder layer (attention.self.query/"
            "key/value, attention.output.dense, intermediate.dense, output.dense) in this "
            "model; use the 'slim' channel pruning for CNNs/MLPs."
        )
    return [_Layer(name, m) for name, m in found]


def _sizes(layers: list[_Layer]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Names, head counts and feed-forward widths: what a report records of the unpruned model."""
    return tuple(L.name for L in layers), tuple(L.n_heads for L in layers), tuple(L.n_ffn for L in layers)


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
    module: nn.Module, layers: list[_Layer], heads: dict, neurons: dict, inputs, ref: torch.Tensor, undo: list
) -> None:
    """Cut layer by layer, each checked before the next: a failure then names its layer, and
    the masked reference of each layer is taken with the layers before it already cut."""
    for i, L in enumerate(layers):
        if not heads[i] and not neurons[i]:
            continue
        expect = _masked_output(module, L, heads[i], neurons[i], inputs)
        if heads[i]:
            _cut_heads(L, heads[i], undo)
        if neurons[i]:
            _cut_neurons(L, neurons[i], undo)
        _check(module, L, inputs, ref, expect)


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
    """Remove attention heads and feed-forward neurons of every BERT-style layer, in place.

    Parameters
    ----------
    module : nn.Module
        A model containing BERT-like layers (e.g. ``BertModel`` or presso's
        ``MeanPooledEncoder``). Changed in place only if every layer passes its checks.
    example_inputs : tuple of Tensor or dict
        What ``module`` is called with (positionally, or as keyword arguments).
    heads_ratio, ffn_ratio : float in [0, 1)
        Fraction of heads / intermediate neurons removed: ``round(ratio * n)`` per layer
        (``scope="layer"``), or of all layers' together ranked by score (``"global"``).
        At least one head and ``round_to`` (or 1) neurons stay in every layer.
    importance : {"l2", "taylor", "activation", "random"}
        ``"l2"``: norm of the weights and biases removed with the head / neuron (its rows of
        Q, K, V or ``intermediate.dense`` and columns of the output projection).
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
        For bad options, a model without BERT-style layers, or a layer whose pruned form
        no longer runs or differs from its masked form (the model is then left unchanged).

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
    layers = _layers(module)
    before = count_parameters(module)
    was_training = module.training
    module.eval()
    undo: list = []
    try:
        ref = _reference(module, inputs)
        scores = _scores(module, layers, inputs, importance, seed)
        heads, neurons = _plan(scores, float(heads_ratio), float(ffn_ratio), scope, round_to)
        _cut_and_check(module, layers, heads, neurons, inputs, ref, undo)
    except BaseException:
        for obj, attr, old in reversed(undo):
            setattr(obj, attr, old)
        raise
    finally:
        module.train(was_training)
    return TransformerPruneReport(before, count_parameters(module), heads, neurons, *_sizes(layers))


def attention_shape(module: nn.Module) -> dict[str, int]:
    """``{"num_heads", "hidden_size"}`` of the attention layers, as ONNX Runtime's fusion needs.

    BERT exports reshape Q/K/V to ``(B, T, -1, head_size)``, so ONNX Runtime's transformer
    optimizer cannot read the head count and applies the ``num_heads`` it is given to every
    layer; its ``hidden_size`` must be ``num_heads * head_size`` (the Q/K/V width). After head
    pruning the config's values are wrong: the fused graph computes other heads (MiniLM-L6,
    9 of 12 heads left, fused with 12/384: embeddings off by 0.39). Layers left with different
    head counts share no value: ``{"num_heads": 0, "hidden_size": 0}`` (no Attention fusion).
    """
    shapes = {(L.n_heads, L.head_size) for L in _layers(module)}
    if len(shapes) != 1:
        return {"num_heads": 0, "hidden_size": 0}
    heads, size = shapes.pop()
    return {"num_heads": heads, "hidden_size": heads * size}


def masked_transformer(original: nn.Module, report: TransformerPruneReport) -> nn.Module:
    """A copy of the *unpruned* ``original`` whose removed heads / neurons influence nothing.

    The removed heads' columns of ``attention.output.dense`` and the removed neurons'
    columns of ``output.dense`` are zeroed, so the copy's outputs equal the physically
    pruned model's up to float rounding. ``original`` is a deep copy taken before
    :func:`prune_transformer` (which prunes in place).
    """
    masked = copy.deepcopy(original)
    layers = _layers(masked)
    if _sizes(layers) != (report.layer_names, report.heads_before, report.ffn_before):
        raise PressoError(
            "masked_transformer needs the model as it was before pruning (its layers, "
            "heads or feed-forward sizes differ from the report's); keep a "
            "copy.deepcopy of it before calling prune_transformer."
        )
    for i, L in enumerate(layers):
        _zero_columns(L, report.heads.get(i, ()), report.neurons.get(i, ()))
    return masked
