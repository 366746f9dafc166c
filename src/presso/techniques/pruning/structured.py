"""Structured pruning: physically remove output channels / neurons and rewire dependants.

Analysis (which layers are coupled through residual additions, concatenations,
normalisation layers, flatten-into-linear) and surgery come from Torch-Pruning's
dependency graph. This module adds presso's policy and safety on top:

* the model's output shape never changes (layers that feed the output are left alone);
* every pruned group is checked on the example inputs: the pruned model must still run,
  keep its output shape, and give the same outputs as the *masked* original (the removed
  channels' outgoing connections zeroed). A group that fails is refused with a
  :class:`~presso.errors.PressoError` naming the layer and suggesting ``ignored_layers``;
* the user's model is changed only once the whole plan has passed.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
>>> report = prune_channels(model, (torch.randn(4, 8),), ratio=0.5)
>>> model[0].out_features, report.params_after < report.params_before
(16, True)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters

IMPORTANCES = ("l2", "l1", "taylor", "activation", "random")
SCOPES = ("layer", "global")
# Layers whose normalisation statistics mix channels: removing a channel changes the
# others, so no masked model is exactly equivalent (the group is still pruned, unchecked).
_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)
_EQUIV_RTOL = 1e-4
_EQUIV_ATOL = 1e-5


@dataclass(frozen=True)
class LayerChange:
    """One dimension of one layer: ``dim`` is ``"out"`` (its channels) or ``"in"``."""

    name: str
    dim: str
    before: int
    removed: tuple[int, ...]  # indices in the *original* layer

    @property
    def kept(self) -> int:
        return self.before - len(self.removed)


@dataclass
class StructuredReport:
    """What :func:`prune_channels` removed; feed it to :func:`masked_equivalent`."""

    params_before: int
    params_after: int
    layers: dict[tuple[str, str], LayerChange] = field(default_factory=dict)
    unchecked: tuple[str, ...] = ()  # roots of groups with no exact masked equivalent

    def summary(self) -> list[dict]:
        """Per layer and dimension: kept and removed counts (for reports)."""
        return [
            {"layer": c.name, "dim": c.dim, "kept": c.kept, "removed": len(c.removed)}
            for c in self.layers.values()
        ]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Exact fully qualified name, a ``re:`` pattern (fullmatch), or a parent prefix."""
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif name == p or name.startswith(p + "."):
            return True
    return False


def _activations(work: nn.Module, inputs: tuple) -> dict[nn.Module, torch.Tensor]:
    """Mean |input| of every Linear / Conv input channel over the example inputs (rows,
    positions): what a channel's consumers receive, after its activation function."""
    from presso.techniques.pruning.criteria import activation_importance

    acts: dict[nn.Module, torch.Tensor] = {}

    def hook(layer, inp):
        axis = 1 if isinstance(layer, nn.modules.conv._ConvNd) else -1  # Linear: (N, ..., C)
        acts[layer] = activation_importance(inp[0].detach(), axis=axis)

    layers = [m for m in work.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        _forward(work, inputs)
    finally:
        for h in handles:
            h.remove()
    return acts


def _activation_importance(acts: dict[nn.Module, torch.Tensor]):
    """Activation-based channel importance (mean |activation|) summed over a coupled group.

    A channel is scored by what its consumers receive (their input activations, after
    ReLU / pooling), so a dead neuron scores 0 whatever its pre-activation. Torch-Pruning
    has no activation criterion; this reuses its group reduction and normalisation so
    global ranking treats it like the magnitude ones."""
    import torch_pruning as tp
    from torch_pruning.pruner import function

    ins = (function.prune_conv_in_channels, function.prune_linear_in_channels)

    class ActivationImportance(tp.importance.GroupMagnitudeImportance):
        @torch.no_grad()
        def __call__(self, group):
            imps, idxs_of = [], []
            for i, (dep, idxs) in enumerate(group):
                if dep.pruning_fn in ins and dep.layer in acts:
                    imps.append(acts[dep.layer][idxs])
                    idxs_of.append(group[i].root_idxs)
            if not imps:
                return None
            # Sum onto the root's channels (a flattened consumer has several inputs per channel).
            position = {int(c): k for k, c in enumerate(group[0].root_idxs)}
            score = torch.zeros(len(position))
            for imp, roots in zip(imps, idxs_of, strict=True):
                score.index_add_(0, torch.tensor([position[int(c)] for c in roots]), imp.float())
            return self._normalize(score, self.normalizer)

    return ActivationImportance()


def _importance(kind: str, acts: dict | None = None):
    import torch_pruning as tp

    if kind == "activation":
        return _activation_importance(acts or {})
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.RandomImportance()


def _validate(ratio, importance, scope, round_to) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise PressoError(
            f"The 'ratio' of structured pruning must be a float in [0, 1). Got {ratio!r} instead."
        )
    if importance not in IMPORTANCES:
        raise PressoError(
            f"The 'importance' of structured pruning must be one of "
            f"{', '.join(IMPORTANCES)}. Got {importance!r} instead."
        )
    if scope not in SCOPES:
        raise PressoError(
            f"The 'scope' of structured pruning must be one of {', '.join(SCOPES)}. Got {scope!r} instead."
        )
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PressoError(
            f"The 'round_to' of structured pruning must be a positive int or None. Got {round_to!r} instead."
        )


def _forward(module: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return module(*inputs)


def _refuse(layer: str, why: str, fix: str = "") -> PressoError:
    fix = fix or f"Add '{layer}' to ignored_layers to keep it whole."
    return PressoError(
        f"Structured pruning cannot safely prune the output channels of layer '{layer}': {why}. {fix}"
    )


class _Watched:
    """An importance that remembers which group it last scored (to name it on failure)."""

    def __init__(self, importance, names: dict) -> None:
        self.importance, self.names, self.root = importance, names, "?"

    def __call__(self, group):
        target = group[0].dep.target
        self.root = self.names.get(target.module, str(target.name))
        return self.importance(group)


def _zero_inputs(layer: nn.Module, name: str, idx: list[int]) -> None:
    """Zero the weights through which the input channels ``idx`` reach ``layer``."""
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            layer.weight[:, idx] = 0  # (out, in)
        elif isinstance(layer, nn.modules.conv._ConvTransposeNd) and layer.groups == 1:
            layer.weight[idx] = 0  # (in, out, *k)
        elif isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1:
            layer.weight[:, idx] = 0  # (out, in, *k)
        elif (
            isinstance(layer, nn.modules.conv._ConvNd)
            and layer.groups == layer.in_channels
            and layer.out_channels == layer.in_channels
        ):
            layer.weight[idx] = 0  # depthwise: channel c reads c only
            if layer.bias is not None:
                layer.bias[idx] = 0
        else:
            raise PressoError(
                f"No masked equivalent for the inputs of layer '{name}' "
                f"({type(layer).__name__}); only Linear and ungrouped or "
                f"depthwise Conv layers are supported."
            )


def masked_equivalent(original: nn.Module, report: StructuredReport) -> nn.Module:
    """A copy of the *unpruned* ``original`` where the removed channels are cut off.

    Every input channel that :func:`prune_channels` removed from a consumer layer gets zero
    weight in that consumer, so the removed channels still exist but influence nothing.
    Channel-wise layers between producer and consumer (BatchNorm, activations, residual
    additions, pooling) never mix channels, so the copy's outputs equal the physically
    pruned model's outputs up to float rounding.
    """
    if report.unchecked:
        raise PressoError(
            f"Layers {', '.join(report.unchecked)} were pruned through a "
            f"LayerNorm or GroupNorm, which mixes channels; no masked model is "
            f"exactly equivalent."
        )
    masked = copy.deepcopy(original)
    modules = dict(masked.named_modules())
    for change in report.layers.values():
        if change.dim == "in" and change.removed:
            _zero_inputs(modules[change.name], change.name, list(change.removed))
    return masked


def _dependency_graph(work: nn.Module, inputs: tuple):
    import torch_pruning as tp

    try:
        return tp.DependencyGraph().build_dependency(work, example_inputs=inputs)
    except Exception as err:
        raise PressoError(
            f"Structured pruning could not trace the model's channel "
            f"dependencies on the example inputs ({type(err).__name__}: {err}). "
            f"Check example_inputs, or prune a traceable sub-module."
        ) from err


def _pruner(
    work: nn.Module,
    inputs: tuple,
    graph,
    names: dict,
    ratio: float,
    importance: str,
    scope: str,
    ignored: Sequence[str],
    round_to: int | None,
):
    """Torch-Pruning's pruner for ``work`` and the importance it scores with (watched, so
    that a scoring failure can name its layer)."""
    import torch_pruning as tp

    # Layers whose outputs are the model's outputs: never pruned (output shape is fixed).
    ignored_modules = [m for m, node in graph.module2node.items() if m in names and not node.outputs]
    ignored_modules += [m for m, n in names.items() if n and _matches(n, ignored)]
    if importance == "taylor":
        work.zero_grad()
        out = work(*inputs)
        out.float().pow(2).mean().backward()
    acts = _activations(work, inputs) if importance == "activation" else None
    watched = _Watched(_importance(importance, acts), names)
    pruner = tp.pruner.MetaPruner(
        work,
        inputs,
        importance=watched,
        global_pruning=scope == "global",
        pruning_ratio=ratio,
        ignored_layers=ignored_modules,
        round_to=round_to,
    )
    return pruner, watched


def _removed(
    group, names: dict, graph, remaining: dict[tuple[str, str], list[int]]
) -> list[tuple[str, str, list[int]]]:
    """(layer, dim, original indices) the group removes, read before it is pruned: its
    indices count the channels earlier groups left, ``remaining`` maps them back."""
    touched = []
    for dep, idxs in group:
        name = names.get(dep.target.module)
        fn = getattr(dep.handler, "__name__", "")
        if name is None or fn not in ("prune_out_channels", "prune_in_channels"):
            continue  # an op of the traced graph, not a layer with parameters
        dim = "out" if fn == "prune_out_channels" else "in"
        size = (
            graph.get_out_channels(dep.target.module)
            if dim == "out"
            else graph.get_in_channels(dep.target.module)
        )
        alive = remaining.setdefault((name, dim), list(range(size)))
        gone = sorted({alive[i] for i in idxs})
        touched.append((name, dim, gone))
    return touched


def _record(
    touched: list[tuple[str, str, list[int]]],
    remaining: dict[tuple[str, str], list[int]],
    changes: dict[tuple[str, str], LayerChange],
    masked_modules: dict[str, nn.Module],
    mixing: bool,
) -> None:
    """Book a pruned group's removals (merged with earlier groups' on the same layer) and
    zero the same inputs in the masked copy, unless a mixing norm makes that no equivalent."""
    for name, dim, gone in touched:
        alive = remaining[(name, dim)]
        before = changes[(name, dim)].before if (name, dim) in changes else len(alive)
        prev = changes[(name, dim)].removed if (name, dim) in changes else ()
        remaining[(name, dim)] = [c for c in alive if c not in set(gone)]
        changes[(name, dim)] = LayerChange(name, dim, before, tuple(sorted(set(prev) | set(gone))))
        if dim == "in" and not mixing:
            _zero_inputs(masked_modules[name], name, gone)


def _plan_and_prune(
    work: nn.Module,
    original: nn.Module,
    inputs: tuple,
    ratio: float,
    importance: str,
    scope: str,
    ignored: Sequence[str],
    round_to: int | None,
    seed: int,
) -> StructuredReport:
    """Prune ``work`` (a copy) group by group, checking each group against a masked copy."""
    names = {m: n for n, m in work.named_modules()}
    ref = _forward(work, inputs)
    graph = _dependency_graph(work, inputs)
    pruner, watched = _pruner(work, inputs, graph, names, ratio, importance, scope, ignored, round_to)
    masked = copy.deepcopy(original)
    masked_modules = dict(masked.named_modules())
    remaining: dict[tuple[str, str], list[int]] = {}
    changes: dict[tuple[str, str], LayerChange] = {}
    unchecked: list[str] = []
    root = "?"
    try:
        for group in _seeded(pruner.step(interactive=True), seed):
            root = names.get(group[0].dep.target.module, str(group[0].dep.target.name))
            if _feeds_output(group):
                continue  # the output's channels are fixed; leave this group whole
            _check_group(group, names, root)
            touched = _removed(group, names, graph, remaining)
            mixing = any(isinstance(m, _MIXING_NORMS) for m in (dep.target.module for dep, _ in group))
            group.prune()
            _record(touched, remaining, changes, masked_modules, mixing)
            _check_outputs(work, masked, inputs, ref, root, check_equal=not mixing)
            if mixing:
                unchecked.append(root)
            root = "?"  # failures until the next group is yielded come from scoring it
    except PressoError:
        raise
    except Exception as err:
        where = root if root != "?" else watched.root
        raise _refuse(
            where, f"the dependency graph could not rewire it ({type(err).__name__}: {err})"
        ) from err
    return StructuredReport(count_parameters(original), count_parameters(work), changes, tuple(unchecked))


def _seeded(groups, seed: int):
    """Run the pruner's generator under a fixed seed (random importance is reproducible)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield from groups


def _feeds_output(group) -> bool:
    """Whether pruning ``group`` would remove channels of the model's output."""
    return any(
        not dep.target.outputs and getattr(dep.handler, "__name__", "") == "prune_out_channels"
        for dep, _ in group
    )


def _check_group(group, names: dict, root: str) -> None:
    """Refuse grouped (not depthwise) convolutions: their channels cannot move freely."""
    for dep, _ in group:
        m = dep.target.module
        if (
            isinstance(m, nn.modules.conv._ConvNd)
            and m.groups > 1
            and not (m.groups == m.in_channels == m.out_channels)
        ):
            conv = names.get(m, "?")
            what = (
                "it is a grouped convolution"
                if conv == root
                else f"its channels feed grouped convolution '{conv}'"
            )
            raise _refuse(
                root,
                f"{what} (groups={m.groups}), whose channel groups would no longer line up",
                f"Add '{conv}' and the layers feeding it to ignored_layers.",
            )


def _check_outputs(work, masked, inputs, ref, root: str, check_equal: bool) -> None:
    try:
        out = _forward(work, inputs)
    except Exception as err:
        raise _refuse(
            root,
            f"the pruned model no longer runs ({type(err).__name__}: "
            f"{err}); a reshape or view probably folds its channels into "
            f"another dimension",
        ) from err
    if out.shape != ref.shape:
        raise _refuse(
            root, f"the model's output shape would change from {tuple(ref.shape)} to {tuple(out.shape)}"
        )
    if check_equal:
        expect = _forward(masked, inputs)
        if not torch.allclose(out, expect, rtol=_EQUIV_RTOL, atol=_EQUIV_ATOL):
            diff = (out - expect).abs().max().item()
            raise _refuse(
                root,
                f"removing its channels changes the outputs of the kept "
                f"channels (max difference {diff:.3g} from the masked model); "
                f"a reshape or channel-mixing op the tracer cannot follow "
                f"consumes them",
            )


def _transplant(dst: nn.Module, src: nn.Module) -> None:
    """Move the pruned parameters and sizes of ``src`` into the same modules of ``dst``."""
    for (_, d), (_, s) in zip(dst.named_modules(), src.named_modules(), strict=True):
        for key, value in s.__dict__.items():
            if key in ("_parameters", "_buffers") or not key.startswith("_"):
                d.__dict__[key] = value


def prune_channels(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ratio: float,
    importance: str = "l2",
    scope: str = "layer",
    ignored_layers: Sequence[str] = (),
    round_to: int | None = None,
    seed: int = 0,
) -> StructuredReport:
    """Physically remove ``ratio`` of the output channels of every prunable layer, in place.

    Parameters
    ----------
    module : nn.Module
        The model, changed in place only if every pruned group passes its checks.
    example_inputs : tuple of Tensor
        Inputs the model is traced and checked on (a small batch is enough).
    ratio : float in [0, 1)
        Fraction of channels / neurons removed from each Conv / Linear layer (``scope=
        "layer"``), or overall with per-group shares from a global ranking (``"global"``).
    importance : {"l2", "l1", "taylor", "activation", "random"}
        Channel score summed over the coupled group. ``"taylor"`` is ``|w * grad|`` with
        the gradient of the mean squared output on ``example_inputs``; ``"activation"``
        the mean ``|output|`` of each channel on ``example_inputs``.
    ignored_layers : sequence of str
        Fully qualified layer names (or ``re:`` patterns) whose output channels are kept.
    round_to : int, optional
        Keep channel counts a multiple of this (e.g. 8 for vector units).
    seed : int
        Seed of the ``"random"`` importance.

    Returns
    -------
    StructuredReport
        Parameter counts before and after, and the removed indices per layer.

    Raises
    ------
    PressoError
        Naming the layer whose channels cannot be removed safely.
    """
    _validate(ratio, importance, scope, round_to)
    inputs = tuple(example_inputs)
    was_training = module.training
    module.eval()
    try:
        work = copy.deepcopy(module)
        report = _plan_and_prune(
            work, module, inputs, float(ratio), importance, scope, tuple(ignored_layers), round_to, seed
        )
        work.zero_grad(set_to_none=True)
        _transplant(module, work)
    finally:
        module.train(was_training)
    return report
