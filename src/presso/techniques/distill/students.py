"""Students for knowledge distillation, derived from the teacher or built from scratch.

:func:`derive_student` copies a PyTorch teacher (never changing it) and makes it

* shallower (``depth``): keeps ``depth`` of the transformer encoder's layers (DistilBERT
  style; the layers are found from the teacher's data flow, so BERT, RoBERTa, DistilBERT,
  DeBERTa-v2, MPNet, ``nn.TransformerEncoder``... alike; ALBERT, whose layers share weights,
  is refused) or of the longest stack of same-shape blocks in an ``nn.Sequential`` /
  ``nn.ModuleList``. Which ones (``layers``): ``"even"`` spaces them evenly,
  ``numpy.linspace(0, L - 1, depth).round()`` (numpy rounds halves to even), so the first and
  last are always kept: 6 -> 3 keeps 0, 2, 5; 4 -> 2 keeps 0, 3; ``depth=1`` keeps the first.
  ``"auto"`` measures instead (:func:`greedy_layers`): it repeatedly drops the layer whose
  removal keeps the output closest to the teacher's (mean cosine per row on the calibration
  inputs; ties to the lower index); on all-MiniLM-L6-v2 that beats even spacing before any
  training. A list of indices keeps exactly those;
* narrower (``width``): presso's structured pruning physically removes channels / neurons
  (:func:`~presso.techniques.pruning.structured.prune_channels`, the output layer keeps its
  size) or attention heads and feed-forward neurons
  (:func:`~presso.techniques.pruning.transformer.prune_transformer`; where heads cannot go,
  MPNet's shared relative bias or an ``nn.MultiheadAttention``, only the neurons, and the
  note says why). Depth goes first;
* MobileNet-style (``blocks="separable"``, Howard et al. 2017): every ``Conv1d`` / ``Conv2d``
  with a kernel > 1 in each dim, groups 1 and more than one input channel becomes a depthwise
  conv (one kernel per input channel, same stride / padding / dilation) then a 1x1 pointwise
  conv (:func:`separable_pair`); the output shapes stay. This goes last.

``init="teacher"`` keeps the surviving weights (the student starts close to the teacher);
``init="random"`` re-initialises the same architecture from a seed: a student trained from
scratch is the classic baseline that shows what distillation adds.

:func:`mlp_student` is the student for teachers presso cannot take apart (ONNX files,
scikit-learn models): a plain MLP on flat rows that standardises its raw inputs.

>>> import torch
>>> from torch import nn
>>> teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
...                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
>>> student, notes = derive_student(teacher, (torch.randn(4, 8),), StudentPlan(width=0.5, depth=1))
>>> notes[0]
'kept 1 of 2 same-shape blocks of the Sequential (blocks 0): 2,466 -> 1,410 parameters'
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from presso.errors import PressoError
from presso.model.layers import Standardize, seeded
from presso.model.loaded import count_parameters, first_tensor
from presso.techniques.pruning.structured import prune_channels
from presso.techniques.pruning.transformer import find_encoder_blocks, prune_transformer, shared_refusal

if TYPE_CHECKING:
    from transformers import PreTrainedModel

INITS = ("teacher", "random")
BLOCKS = ("standard", "separable")
LAYER_CHOICES = ("auto", "even")


@dataclass(frozen=True)
class StudentPlan:
    """How :func:`derive_student` shrinks the teacher; validated at construction.

    width : kept fraction of channels / neurons (of a transformer's heads and FFN neurons), (0, 1].
    heads : kept fraction of a transformer's attention heads, (0, 1]; None: ``width``. ``heads=1``
        with ``width`` < 1 narrows the feed-forward layers only (on all-MiniLM-L6-v2, halving
        heads and FFN together cost far more fidelity than dropping a layer:
        benchmarks/encoder_students.py).
    depth : blocks / transformer layers kept, or a float in (0, 1): that fraction of them (rounded,
        at least 1; ``0.67`` keeps 4 of 6, 8 of 12); None keeps all (or as many as ``layers`` lists).
    layers : which are kept: ``"even"`` (evenly spaced), ``"auto"`` (greedy removal measured on
        the calibration inputs) or a tuple of indices (0-based, in the teacher's order).
    init : ``"teacher"`` keeps the surviving weights; ``"random"``: same architecture, seeded init.
    blocks : ``"standard"`` keeps the convolutions; ``"separable"`` makes them depthwise + pointwise pairs.
    """

    width: float = 1.0
    depth: int | float | None = None
    init: str = "teacher"
    blocks: str = "standard"
    layers: str | tuple[int, ...] = "even"
    heads: float | None = None

    def __post_init__(self) -> None:
        for name, w in (("width", self.width), ("heads", 1.0 if self.heads is None else self.heads)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w <= 1.0:
                raise PressoError(f"The '{name}' of a student must be a float in (0, 1]. Got {w!r} instead.")
        d = self.depth
        count = isinstance(d, int) and not isinstance(d, bool) and d >= 1
        fraction = isinstance(d, float) and 0.0 < d < 1.0
        if d is not None and not (count or fraction):
            raise PressoError(
                "The 'depth' of a student must be an int >= 1 (layers kept), a float in (0, 1) "
                f"(the fraction of the teacher's layers kept) or None (keep all). Got {d!r} instead."
            )
        if self.init not in INITS:
            raise PressoError(
                f"The 'init' of a student must be one of {', '.join(INITS)}. Got {self.init!r} instead."
            )
        if self.blocks not in BLOCKS:
            raise PressoError(
                f"The 'blocks' of a student must be one of {', '.join(BLOCKS)}. Got {self.blocks!r} instead."
            )
        _check_layers(self.layers, d)

    @property
    def shallower(self) -> bool:
        return self.depth is not None or not isinstance(self.layers, str)

    @property
    def kept_heads(self) -> float:
        return self.width if self.heads is None else self.heads

    @property
    def narrower(self) -> bool:
        return self.width < 1.0 or self.kept_heads < 1.0


def _check_layers(layers: object, depth: int | float | None) -> None:
    if isinstance(layers, str):
        if layers not in LAYER_CHOICES:
            raise PressoError(
                f"The 'layers' of a student must be auto, even or a list of layer indices. Got {layers!r} instead."
            )
        return
    if (
        not isinstance(layers, tuple)
        or not layers
        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers)
        or len(set(layers)) != len(layers)
    ):
        raise PressoError(
            f"The 'layers' of a student must list distinct layer indices >= 0, e.g. (0, 2, 5). Got {layers!r} instead."
        )
    if depth is not None and depth != len(layers):
        raise PressoError(
            f"The student's 'depth' {depth} differs from the {len(layers)} 'layers' listed; give one of them."
        )


def _run(module: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return first_tensor(module(*inputs))


def _evenly(count: int, depth: int, what: str) -> list[int]:
    """Indices of the ``depth`` of ``count`` items kept (first and last included)."""
    if depth > count:
        raise PressoError(
            f"A student 'depth' of {depth} exceeds the teacher's {count} {what}; "
            f"give a depth in [1, {count}]."
        )
    return sorted({int(i) for i in np.linspace(0, count - 1, depth).round()})


def _mean_cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over rows of the cosine between each row's flattened output and the teacher's."""
    rows = len(ref)
    return float(
        torch.nn.functional.cosine_similarity(
            out.double().reshape(rows, -1), ref.double().reshape(rows, -1), dim=1, eps=1e-12
        ).mean()
    )


def greedy_layers(
    container: nn.Module, groups: list[list[int]], depth: int, run: Callable[[], torch.Tensor]
) -> tuple[list[int], list[tuple[int, float]]]:
    """The ``depth`` of ``len(groups)`` layers to keep, by greedy removal: each step drops the
    layer whose removal (the layer made identity: its residual stream passes on unchanged) keeps
    ``run()``'s output closest to the output with every layer (mean cosine per row), ties to the
    lower index. ``groups[k]`` are the positions in ``container`` of layer ``k``'s children.

    Returns the kept layer indices and, per step, (the layer dropped, the cosine measured with it
    gone). ``container`` is left as it was."""
    original = container._modules
    items = list(original.items())

    def output_without(dropped: set[int]) -> torch.Tensor:
        container._modules = _without(items, {j for k in dropped for j in groups[k]})
        try:
            return run()
        finally:
            container._modules = original

    ref = output_without(set())
    dropped: set[int] = set()
    steps: list[tuple[int, float]] = []
    while len(groups) - len(dropped) > depth:
        best, best_cos = -1, -float("inf")
        for k in range(len(groups)):
            if k in dropped:
                continue
            cos = _mean_cosine(output_without(dropped | {k}), ref)
            if cos > best_cos:  # strictly better: a tie keeps the lower index found first
                best, best_cos = k, cos
        dropped.add(best)
        steps.append((best, best_cos))
    return [k for k in range(len(groups)) if k not in dropped], steps


def _choose_layers(
    container: nn.Module,
    groups: list[list[int]],
    plan: StudentPlan,
    run: Callable[[], torch.Tensor],
    what: str,
) -> tuple[list[int], str]:
    """The kept layer indices and the words saying how they were chosen."""
    count = len(groups)
    if not isinstance(plan.layers, str):
        bad = [i for i in plan.layers if i >= count]
        if bad:
            raise PressoError(
                f"The student 'layers' {list(plan.layers)} name {bad[0]}, but the teacher has {count} "
                f"{what} (indices 0 to {count - 1}); give indices in that range."
            )
        return sorted(plan.layers), "as listed"
    assert plan.depth is not None  # shallower without a list means a depth
    depth = plan.depth if isinstance(plan.depth, int) else max(1, round(plan.depth * count))
    if depth > count:
        raise PressoError(
            f"A student 'depth' of {depth} exceeds the teacher's {count} {what}; "
            f"give a depth in [1, {count}]."
        )
    if plan.layers == "even":
        return _evenly(count, depth, what), "evenly spaced"
    keep, steps = greedy_layers(container, groups, depth, run)
    measured = ", then ".join(f"{k} (cosine {cos:.4f})" for k, cos in steps)
    how = f"by greedy removal on the calibration inputs: dropped {measured}" if steps else "all of them"
    return keep, how


def _without(items: list[tuple[str, nn.Module | None]], drop: set[int]) -> OrderedDict:
    """``items`` (a container's children) but those at positions ``drop``; numbered names are
    renumbered, as torch does (``nn.TransformerEncoder`` reads ``layers[0]``)."""
    kept = [(k, m) for j, (k, m) in enumerate(items) if j not in drop]
    numbered = all(k.isdigit() for k, _ in items)
    return OrderedDict((str(j) if numbered else k, m) for j, (k, m) in enumerate(kept))


def _keep_children(container: nn.Module, drop: set[int]) -> None:
    """Remove the children at positions ``drop``."""
    container._modules = _without(list(container._modules.items()), drop)


# ---------------------------------------------------------------- depth: transformers


def _shallower_transformer(student: nn.Module, plan: StudentPlan, inputs: tuple, calibration: tuple) -> str:
    blocks = find_encoder_blocks(student, inputs)
    shared_refusal(blocks, "A student's depth")
    parents = {b.name.rpartition(".")[0] for b in blocks}
    owner = parents.pop() if len(parents) == 1 else None
    parent = student.get_submodule(owner) if owner is not None else None
    if not isinstance(parent, nn.ModuleList) or len(parent) != len(blocks):
        raise PressoError(
            "depth needs the encoder's layers in one nn.ModuleList of nothing else (as in "
            "BERT's encoder.layer); this model spreads them out — use width."
        )
    count = len(blocks)
    keep, how = _choose_layers(
        parent, [[j] for j in range(count)], plan, lambda: _run(student, calibration), "encoder layers"
    )
    _keep_children(parent, set(range(count)) - set(keep))
    student.__dict__.pop("_presso_attention", None)  # where a pruned teacher's attentions were
    for new_idx, layer in enumerate(parent):  # cache slots of HF attention follow the layer's position
        for sub in layer.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                # setattr: torch types a Module's attributes as Tensor | Module, not int
                setattr(sub, "layer_idx", new_idx)  # noqa: B010
    path = owner.split(".")[:-1] if owner else []  # modules from the root down to the list's owner
    for i in range(len(path) + 1):
        holder = student.get_submodule(".".join(path[:i]))
        config = getattr(holder, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(keep)  # DistilBERT's n_layers too (attribute_map)
        if i == len(path):  # the list's owner may count its layers (nn.TransformerEncoder.num_layers)
            for key, value in list(vars(holder).items()):
                if key.endswith("layers") and isinstance(value, int) and value == count:
                    setattr(holder, key, len(keep))
    # Which teacher layer each student layer started as: layer hints compare them (copied_layers).
    prefix = f"{owner}." if owner else ""
    student.__dict__[_COPIED] = [(f"{prefix}{j}", f"{prefix}{k}") for j, k in enumerate(keep)]
    chosen = "" if how == "evenly spaced" else f" ({how})"
    return f"kept encoder layers {', '.join(map(str, keep))} of {count}{chosen}"


_COPIED = "_presso_copied_layers"


def copied_layers(student: nn.Module) -> list[tuple[str, str]]:
    """``(student layer, teacher layer)`` names of a student derived with fewer transformer
    layers: each kept layer and the teacher layer it was copied from (their outputs are
    comparable token by token); empty for any other student."""
    return list(student.__dict__.get(_COPIED, []))


# ---------------------------------------------------------------- depth: stacks of blocks


def _same_shape_calls(student: nn.Module, containers: list, inputs: tuple) -> dict[int, list[bool]]:
    """For every child of ``containers``: per call, whether it mapped a tensor to one of the same shape."""
    calls: dict[int, list[bool]] = {}

    def hook(child, args, out):
        same = (
            len(args) >= 1
            and isinstance(args[0], torch.Tensor)
            and isinstance(out, torch.Tensor)
            and out.shape == args[0].shape
        )
        calls.setdefault(id(child), []).append(same)

    handles = [c.register_forward_hook(hook) for _, box in containers for c in box.children()]
    try:
        _run(student, inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def _runs(box: nn.Module, calls: dict[int, list[bool]]) -> list[list[list[int]]]:
    """Runs of consecutive blocks of ``box``; a block is a child with parameters that keeps its
    input's shape, followed by the parameter-free shape-keeping children after it (activations)."""
    runs: list[list[list[int]]] = []
    current: list[list[int]] = []
    for j, child in enumerate(box.children()):
        seen = calls.get(id(child), [])
        if not seen or not all(seen):  # changes the shape, or never called: the run ends
            if current:
                runs.append(current)
            current = []
        elif any(True for _ in child.parameters()):
            current.append([j])
        elif current:
            current[-1].append(j)
    if current:
        runs.append(current)
    return runs


def _shallower_stack(student: nn.Module, plan: StudentPlan, inputs: tuple, calibration: tuple) -> str:
    containers = [(n, m) for n, m in student.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    calls = _same_shape_calls(student, containers, inputs)
    best_name = ""
    best_box: nn.Module | None = None
    best: list[list[int]] = []
    for name, box in containers:
        for run in _runs(box, calls):
            if len(run) > len(best):
                best_name, best_box, best = name, box, run
    if not best:
        raise PressoError(
            "depth needs a transformer encoder or a stack of same-shape blocks (nn.Sequential / "
            "nn.ModuleList); this model has none — use width."
        )
    assert best_box is not None  # set with best
    what = f"same-shape blocks of '{best_name or type(best_box).__name__}'"
    keep, how = _choose_layers(best_box, best, plan, lambda: _run(student, calibration), what)
    _keep_children(best_box, {j for b, block in enumerate(best) if b not in keep for j in block})
    where = f"'{best_name}'" if best_name else f"the {type(best_box).__name__}"
    chosen = "" if how == "evenly spaced" else f", {how}"
    return f"kept {len(keep)} of {len(best)} same-shape blocks of {where} (blocks {', '.join(map(str, keep))}{chosen})"


# ---------------------------------------------------------------- width


def _narrower_transformer(student: nn.Module, width: float, heads: float, inputs: tuple) -> str:
    blocks = find_encoder_blocks(student, inputs)
    fixed = next((b for b in blocks if b.heads_refusal), None)
    report = prune_transformer(
        student,
        inputs,
        heads_ratio=0.0 if fixed else 1 - heads,
        ffn_ratio=1 - width,
        importance="l2",
        scope="layer",
        round_to=8,
    )
    rows = report.summary()
    head_counts = sorted({(r["heads_kept"], r["heads_kept"] + r["heads_removed"]) for r in rows})
    ffn_counts = sorted({(r["ffn_kept"], r["ffn_kept"] + r["ffn_removed"]) for r in rows})
    heads_words = (
        f"all heads kept: {fixed.heads_refusal}"
        if fixed
        else ", ".join(f"{k} of {n}" for k, n in head_counts)
    )
    return (
        f"kept {width:.0%} of FFN neurons per layer (heads {heads_words}; "
        f"FFN {', '.join(f'{k} of {n}' for k, n in ffn_counts)}; "
        f"fuse its ONNX export with attention_shape(student))"
    )


def _narrower(student: nn.Module, width: float, inputs: tuple) -> str:
    prune_channels(student, inputs, ratio=1 - width, importance="l2", scope="layer")
    return f"kept {width:.0%} of channels / neurons (the output layer keeps its size)"


# ---------------------------------------------------------------- blocks: depthwise-separable


def _separable_candidate(m: nn.Module) -> TypeGuard[nn.Conv1d | nn.Conv2d]:
    """A plain Conv1d / Conv2d (not a subclass with its own forward) that a pair can stand in for."""
    if type(m) not in (nn.Conv1d, nn.Conv2d):
        return False
    conv = cast(nn.Conv1d | nn.Conv2d, m)
    return conv.groups == 1 and conv.in_channels > 1 and all(k > 1 for k in conv.kernel_size)


def separable_pair(conv: nn.Conv1d | nn.Conv2d) -> nn.Sequential:
    """``conv`` as ``Sequential(depthwise, pointwise)``, started from its weights; same output shapes.

    >>> pair = separable_pair(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    >>> [tuple(p.shape) for p in pair.parameters()]
    [(16, 1, 3, 3), (32, 16, 1, 1), (32,)]
    """
    cls, cin, w = type(conv), conv.in_channels, conv.weight.detach()  # w: (out, in, *k)
    where = {"device": w.device, "dtype": w.dtype}
    depthwise = skip_init(
        cls,
        cin,
        cin,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=cin,
        bias=False,
        padding_mode=conv.padding_mode,
        **where,
    )
    pointwise = skip_init(cls, cin, conv.out_channels, 1, bias=conv.bias is not None, **where)
    # The pair's weight is W_hat[o, c] = pointwise[o, c] * depthwise[c]: for each input channel c
    # the (out, K) matrix W_hat[:, c] has rank 1, and the channels are independent. By Eckart-Young
    # the closest rank-1 matrix in Frobenius norm is the top singular triple s u v^T of W[:, c], so
    # depthwise[c] = s v, pointwise[:, c] = u is the best separable pair (exact if W[:, c] is rank 1).
    u, s, vh = torch.linalg.svd(w.double().transpose(0, 1).flatten(2), full_matrices=False)  # (in, out, K)
    with torch.no_grad():
        depthwise.weight.copy_((s[:, :1] * vh[:, 0]).reshape(depthwise.weight.shape))  # (in, 1, *k)
        pointwise.weight.copy_(u[:, :, 0].T.reshape(pointwise.weight.shape))  # (out, in, 1..)
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    pair = nn.Sequential(OrderedDict(depthwise=depthwise, pointwise=pointwise))
    return pair.requires_grad_(conv.weight.requires_grad)


def _separable(student: nn.Module, inputs: tuple) -> tuple[nn.Module, str]:
    """Every candidate convolution of ``student`` replaced (in place; the root too) by its pair."""
    pairs: dict[int, nn.Sequential] = {}  # a conv shared by two parents: one pair

    def pair(conv: nn.Conv1d | nn.Conv2d) -> nn.Sequential:
        if id(conv) not in pairs:
            pairs[id(conv)] = separable_pair(conv)
        return pairs[id(conv)]

    for parent in list(student.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and _separable_candidate(child):
                parent._modules[name] = pair(child)
    if _separable_candidate(student):
        student = pair(student)
    if not pairs:
        raise PressoError(
            "blocks: separable replaces Conv1d / Conv2d layers with a kernel > 1, groups 1 and "
            "more than one input channel; this model has none — use blocks: standard."
        )
    try:
        _run(student, inputs)
    except Exception as err:
        raise PressoError(
            f"The student with depthwise-separable blocks no longer runs "
            f"({type(err).__name__}: {err}); its forward probably reads a convolution's weight "
            f"— use blocks: standard."
        ) from err
    plural = "" if len(pairs) == 1 else "s"
    return student, f"replaced {len(pairs)} convolution{plural} by depthwise-separable blocks"


# ---------------------------------------------------------------- init


def _hf_models(student: nn.Module) -> list[PreTrainedModel]:
    """The outermost Hugging Face PreTrainedModels inside ``student`` (transformers only if loaded)."""
    if "transformers" not in sys.modules:
        return []
    from transformers import PreTrainedModel

    found: list[tuple[str, PreTrainedModel]] = []
    for name, m in student.named_modules():
        if isinstance(m, PreTrainedModel) and not any(name.startswith(f + ".") or f == "" for f, _ in found):
            found.append((name, m))
    return [m for _, m in found]


def _reinitialise(student: nn.Module, seed: int) -> list[str]:
    """Fresh weights everywhere but in Standardize layers (fitted input statistics, not weights)."""
    fixed = {id(m) for s in student.modules() if isinstance(s, Standardize) for m in s.modules()}
    owners = set()
    with seeded(seed):
        for m in student.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if id(m) not in fixed and callable(reset):
                reset()
                owners.add(id(m))
        for hf in _hf_models(student):
            # The model's own scheme (normal(0, initializer_range), LayerNorm 1/0); transformers 5
            # skips tensors flagged as loaded, so the flags go first.
            for t in (*hf.parameters(), *hf.buffers()):
                if getattr(t, "_is_hf_initialized", False):
                    setattr(t, "_is_hf_initialized", False)  # noqa: B010 - a flag transformers adds
            hf.apply(hf._init_weights)
            owners.update(id(m) for m in hf.modules())
    missed = [
        n
        for n, m in student.named_modules()
        if id(m) not in owners
        for p, _ in m.named_parameters(recurse=False)
    ]
    notes = [f"re-initialised all weights from seed {seed} (a from-scratch student of the same shape)"]
    if missed:
        notes.append(
            f"kept the teacher's values of {len(missed)} parameters whose module has no "
            f"reset_parameters (first: {missed[0]})"
        )
    if fixed:
        notes.append("kept the fitted input standardisation (Standardize layers)")
    return notes


# ---------------------------------------------------------------- entry points


def _teacher_outputs(student: nn.Module, inputs: tuple) -> torch.Tensor:
    """The copy's outputs before shrinking: the shape every student must keep."""
    try:
        return _run(student, inputs)
    except Exception as err:
        raise PressoError(
            f"derive_student could not run the teacher on the example inputs "
            f"({type(err).__name__}: {err}); pass what its forward takes, as a tuple."
        ) from err


def _is_transformer(student: nn.Module, transformer: dict | None, inputs: tuple) -> bool:
    """Whether depth and width work on encoder blocks (found from the data flow, any family);
    a teacher marked as a transformer without them is refused rather than shrunk as a plain stack."""
    is_transformer = bool(find_encoder_blocks(student, inputs))
    if transformer is not None and not is_transformer:
        raise PressoError(
            "The teacher is marked as a transformer but has no encoder blocks (query/key/value "
            "Linears read by an attention output, then a feed-forward Linear pair); "
            "derive_student shrinks transformer encoders only — give a factory student."
        )
    return is_transformer


def _shrink(
    student: nn.Module, plan: StudentPlan, inputs: tuple, is_transformer: bool, calibration: tuple
) -> tuple[nn.Module, list[str]]:
    """Depth, width, then blocks, in the order the module docstring gives, one note each. In
    place, but the student is returned: separable blocks replace a bare convolution root."""
    notes = []
    for step, wanted in (
        ("depth", plan.shallower),
        ("width", plan.narrower),
        ("blocks", plan.blocks == "separable"),
    ):
        if not wanted:
            continue
        before = count_parameters(student)
        if step == "depth":
            shallower = _shallower_transformer if is_transformer else _shallower_stack
            note = shallower(student, plan, inputs, calibration)
        elif step == "width":
            if is_transformer:
                note = _narrower_transformer(student, plan.width, plan.kept_heads, inputs)
            elif plan.heads is not None and plan.heads < 1.0:
                raise PressoError(
                    f"A student's 'heads' ({plan.heads:g}) removes attention heads of a transformer "
                    "encoder; this model has none. Use width."
                )
            else:
                note = _narrower(student, plan.width, inputs)
        else:
            student, note = _separable(student, inputs)
        notes.append(f"{note}: {before:,} -> {count_parameters(student):,} parameters")
    return student, notes


def _check_student(student: nn.Module, inputs: tuple, ref: torch.Tensor) -> None:
    """Refuse a student whose forward no longer fits what was removed from it."""
    try:
        out = _run(student, inputs)
    except Exception as err:
        raise PressoError(
            f"The derived student no longer runs ({type(err).__name__}: {err}); its forward "
            f"probably indexes the removed blocks — use width only, or a factory student."
        ) from err
    if out.shape != ref.shape:
        raise PressoError(
            f"The derived student's output shape {tuple(out.shape)} differs from the teacher's "
            f"{tuple(ref.shape)}; use width only, or a factory student."
        )


def derive_student(
    teacher: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    plan: StudentPlan,
    *,
    transformer: dict | None = None,
    seed: int = 0,
    calibration: tuple[torch.Tensor, ...] | None = None,
) -> tuple[nn.Module, list[str]]:
    """A smaller copy of ``teacher``: ``plan.depth`` blocks / layers, ``plan.width`` of its channels,
    depthwise-separable convolutions with ``plan.blocks="separable"``.

    Parameters
    ----------
    teacher : nn.Module
        Left unchanged (the student is built on a deep copy).
    example_inputs : tuple of Tensor
        What the teacher's forward takes, positionally (a small batch is enough).
    plan : StudentPlan
        ``width``, ``depth``, ``blocks`` and ``init`` (see the module docstring for the rules).
    transformer : dict, optional
        ``LoadedModel.transformer`` of a transformer encoder; encoder blocks found in the
        teacher's traced forward (any family, see ``find_encoder_blocks``) make it a
        transformer too.
    seed : int
        Seed of ``init="random"``.
    calibration : tuple of Tensor, optional
        Inputs ``layers="auto"`` measures the teacher's layers on (a few hundred rows of real
        data; trimmed padding makes it fast); ``example_inputs`` when not given.

    Returns
    -------
    (nn.Module, list of str)
        The student (in the teacher's train / eval mode) and one line per thing done.

    Raises
    ------
    PressoError
        For a depth the model has no stack for or more than it has, a layer that structured
        pruning refuses, ``blocks="separable"`` on a model without a convolution to replace, or a
        student that no longer runs or gives another output shape.

    Examples
    --------
    >>> from presso.examples.digits import DigitsCNN
    >>> student, notes = derive_student(DigitsCNN(), (torch.rand(2, 1, 8, 8),), StudentPlan(width=0.45))
    >>> notes[-1]
    'kept 45% of channels / neurons (the output layer keeps its size): 38,282 -> 7,556 parameters'
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    student = copy.deepcopy(teacher).eval()
    student.__dict__.pop(_COPIED, None)  # a teacher that was itself a student: not this one's layers
    ref = _teacher_outputs(student, inputs)
    measured = inputs if calibration is None else tuple(calibration)
    student, notes = _shrink(student, plan, inputs, _is_transformer(student, transformer, inputs), measured)
    _check_student(student, inputs, ref)
    if plan.init == "random":
        notes += _reinitialise(student, seed)
    if not notes:
        notes.append(
            f"kept the teacher whole ({count_parameters(student):,} parameters): width 1, all blocks"
        )
    return student.train(teacher.training), notes


class MLPStudent(nn.Module):
    """(N, n_inputs) raw features -> (N, n_outputs): standardise, then Linear/ReLU layers."""

    def __init__(self, standardize: Standardize, net: nn.Sequential) -> None:
        super().__init__()
        self.standardize, self.net = standardize, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))  # (N, n_outputs)


def mlp_student(
    n_inputs: int,
    n_outputs: int,
    hidden: tuple[int, ...] = (64, 64),
    seed: int = 0,
    inputs: np.ndarray | None = None,
) -> MLPStudent:
    """A plain MLP student for flat float rows, for teachers without a PyTorch architecture.

    ``inputs`` (N, n_inputs) rows fit the standardisation (mean / std per feature, kept as
    buffers), so the student takes raw features; without them it passes inputs through.
    The weights come from ``seed``; the forward's one input is named ``x``.

    >>> student = mlp_student(30, 2, hidden=(16,), inputs=np.random.rand(50, 30) * 1000)
    >>> student(torch.rand(4, 30) * 1000).shape
    torch.Size([4, 2])
    """
    for key, value in (("n_inputs", n_inputs), ("n_outputs", n_outputs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PressoError(f"The '{key}' of an MLP student must be a positive int. Got {value!r} instead.")
    sizes = tuple(hidden)
    if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
        raise PressoError(
            f"The 'hidden' sizes of an MLP student must be one or more positive ints, "
            f"e.g. (64, 64). Got {hidden!r} instead."
        )
    standardize = Standardize(n_inputs)
    if inputs is not None:
        rows = np.asarray(inputs, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != n_inputs or len(rows) < 2:
            raise PressoError(
                f"The inputs fitting an MLP student's standardisation must be (N >= 2, "
                f"{n_inputs}) rows. Got shape {rows.shape}; reshape to (-1, {n_inputs})."
            )
        if not np.isfinite(rows).all():
            raise PressoError(
                "The inputs fitting an MLP student's standardisation contain NaN or inf; "
                "impute or drop those rows first."
            )
        standardize = Standardize.fit(torch.from_numpy(rows))
    widths = (n_inputs, *sizes)
    with seeded(seed):
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers, nn.Linear(widths[-1], n_outputs))
    return MLPStudent(standardize, net).eval()
