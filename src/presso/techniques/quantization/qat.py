"""Quantization-aware training of weights: fake-quantized weights, straight-through gradients.

:func:`prepare_qat` registers a :class:`FakeQuantWeight` parametrization on the weight of
every Linear / Conv1d / Conv2d (``torch.nn.utils.parametrize``: module structure and
parameter names stay, so the model exports as before); fine-tune with
:func:`presso.train.fit`; :func:`convert` then removes the parametrizations and leaves each
weight exactly on its integer grid, returning the scales a writer stores it with.

Granularity follows presso's int4 writer: Linear weights per group of ``group_size``
consecutive input features ("auto": 32 where 32 divides them, else per output channel),
conv weights per output channel. The value math is presso's fake-quantize, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from presso.errors import PressoError
from presso.techniques.quantization.quantizers import (
    _EPS,
    QuantParams,
    _check_bits,
    _is_int,
    compute_qparams,
    fake_quantize,
)

AUTO_GROUP = 32
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


def grad_scale(x: Tensor, g: float) -> Tensor:
    """``x`` forward, gradient times ``g`` backward (LSQ's gradient scaling).

    Written ``x.detach() + (x - x.detach()) * g`` rather than the paper's
    ``(x - x * g).detach() + x * g`` so that the forward value is ``x`` bit for bit.
    """
    return x.detach() + (x - x.detach()) * g


class FakeQuantWeight(nn.Module):
    """Parametrization: a weight as its integer grid sees it, with the clipped STE gradient.

    Rows (output channels) are split into groups of ``group_size`` consecutive values
    (None: one group per row), each with its own scale. Forward:
    ``round(clamp(w / s, qmin - z, qmax - z)) * s`` (equal to presso's
    ``fake_quantize``); backward: the weight gradient passes where ``w / s`` lies inside
    the clamp range and is zero outside. ``learned_scale``: the scale is a parameter
    initialised from min-max and trained by LSQ (Esser et al. 2020) with gradient scale
    ``1 / sqrt(values_per_scale * qmax)``; otherwise it is min-max of the current weight
    in every forward, without gradient. ``enabled = False`` passes the weight unchanged.

    Examples
    --------
    >>> import torch
    >>> fq = FakeQuantWeight(torch.tensor([[-1.0, 0.3, 0.5, 0.7]]), bits=2, learned_scale=False)
    >>> fq(torch.tensor([[-1.0, 0.3, 0.5, 0.7]])).tolist()  # scale 1, grid {-2, -1, 0, 1}
    [[-1.0, 0.0, 0.0, 1.0]]
    """

    # Registered in __init__ with learned_scale only (parameter and buffer); declared here
    # because mypy types nn.Module's attribute lookup as Tensor | Module.
    scale: nn.Parameter  # (out, G)
    zero_point: Tensor  # (out, G) int32

    def __init__(
        self,
        weight: Tensor,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = True,
        learned_scale: bool = True,
    ):
        super().__init__()
        _check_bits(bits)
        per_row = weight[0].numel()
        if group_size is not None and not (
            _is_int(group_size) and group_size >= 1 and per_row % group_size == 0
        ):
            raise PressoError(
                f"The 'group_size' option ({group_size!r}) must be a positive int dividing "
                f"the {per_row} values of a weight row."
            )
        self.bits, self.symmetric, self.learned_scale = bits, symmetric, learned_scale
        self.group_size = group_size  # None: per output channel
        self.enabled = True
        qp = self._minmax(weight)
        self.qmin, self.qmax = qp.qmin, qp.qmax
        self.grad_factor = 1.0 / math.sqrt(self._g(weight) * qp.qmax)
        if learned_scale:
            self.scale = nn.Parameter(qp.scale.clone())  # (out, G)
            self.register_buffer("zero_point", qp.zero_point.to(weight.device))  # (out, G) int32

    def extra_repr(self) -> str:
        grid = "symmetric" if self.symmetric else "affine"
        group = "per channel" if self.group_size is None else f"group {self.group_size}"
        return (
            f"bits={self.bits}, {grid}, {group}, learned_scale={self.learned_scale}, enabled={self.enabled}"
        )

    def _g(self, w: Tensor) -> int:
        return w[0].numel() if self.group_size is None else self.group_size

    def _minmax(self, w: Tensor) -> QuantParams:
        w2 = w.detach().float().reshape(len(w), -1)  # (out, K)
        return compute_qparams(w2, self.bits, self.symmetric, group_size=self._g(w))  # scale (out, G)

    def _scale_zp(self, w: Tensor) -> tuple[Tensor, Tensor]:
        if self.learned_scale:
            return self.scale.clamp(min=_EPS), self.zero_point
        qp = self._minmax(w)
        return qp.scale, qp.zero_point.to(w.device)

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        x = w.float().reshape(len(w), -1, self._g(w))  # (out, G, g)
        s, z = self._scale_zp(w)
        if self.learned_scale:
            s = grad_scale(s, self.grad_factor)
        s, z = s.unsqueeze(-1), z.unsqueeze(-1).float()  # (out, G, 1)
        v = x * (1.0 / s)  # float32 reciprocal, as presso's quantize
        q = round_ste(v.clamp(self.qmin - z, self.qmax - z))  # == clamp(round(v) + z, ..) - z
        return (q * s).reshape(w.shape).to(w.dtype)

    @torch.no_grad()
    def reset_scale(self, w: Tensor) -> None:
        """Set a learned scale and zero point to min-max of ``w`` (no-op without learned scale)."""
        if self.learned_scale:
            qp = self._minmax(w)
            self.scale.copy_(qp.scale)
            self.zero_point.copy_(qp.zero_point)

    @torch.no_grad()
    def qparams(self, w: Tensor) -> QuantParams:
        """Current parameters for weight ``w`` in presso's layout (per group, or per channel on axis 0).

        On the CPU, whatever the weight's device.
        """
        s, z = self._scale_zp(w)
        s, z = s.detach().cpu().clone(), z.cpu().clone()
        if self.group_size is None:
            return QuantParams(s.reshape(-1), z.reshape(-1), self.qmin, self.qmax, axis=0)  # (out,)
        return QuantParams(s, z, self.qmin, self.qmax, group_size=self.group_size)  # (out, in/g)


def _group_for(name: str, layer: nn.Module, group_size) -> int | None:
    if not isinstance(layer, nn.Linear) or group_size is None:
        return None  # conv weights: per output channel, as the int4 writer
    k = layer.in_features
    if group_size == "auto":
        return AUTO_GROUP if k % AUTO_GROUP == 0 else None
    if k % group_size:
        near = sorted((d for d in range(1, k + 1) if k % d == 0), key=lambda d: abs(d - group_size))
        raise PressoError(
            f"The 'group_size' option ({group_size}) does not divide the {k} input features "
            f"of layer '{name}'. Use a divisor of {k} such as {' or '.join(map(str, near[:2]))}, "
            "or skip the layer."
        )
    return group_size


def prepare_qat(
    module: nn.Module,
    bits: int = 4,
    group_size: int | str | None = "auto",
    symmetric: bool = True,
    learned_scale: bool = True,
    skip: Iterable[str] = frozenset(),
    layers: list[str] | None = None,
) -> list[str]:
    """Fake-quantize the weights of ``module``'s Linear / Conv1d / Conv2d layers, in place.

    Parameters
    ----------
    bits : int in [2, 8]
    group_size : "auto", int or None
        Linear weights per group of this many input features ("auto": 32 where it
        divides, else per output channel; None: per output channel). Conv: per channel.
    symmetric : bool
        Signed grid ``[-2**(bits-1), 2**(bits-1) - 1]`` with zero point 0; else affine.
    learned_scale : bool
        Train the scales (LSQ) instead of min-max of the current weights.
    skip, layers : layer names (from ``named_modules()``)
        Layers to leave float; if ``layers`` is given, only those are quantized.

    Returns
    -------
    list of str
        The names of the quantized layers, in model order.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> prepare_qat(net, bits=4, skip={"2"})
    ['0']
    """
    _check_bits(bits)
    # not str: narrows the type for mypy (_is_int already rejects strings)
    if not (
        group_size in ("auto", None)
        or (_is_int(group_size) and not isinstance(group_size, str) and group_size >= 1)
    ):
        raise PressoError(
            f"The 'group_size' option must be 'auto', None or a positive int. Got {group_size!r} instead."
        )
    skip = set(skip)
    found = {name: m for name, m in module.named_modules() if isinstance(m, _LAYERS)}
    for option, names in (("skip", skip), ("layers", layers or [])):
        unknown = [n for n in names if n not in found]
        if unknown:
            raise PressoError(
                f"Layer '{unknown[0]}' in the '{option}' option is not a Linear or Conv layer "
                f"of the model; those are: {', '.join(list(found)[:20]) or 'none'}."
            )
    chosen = [n for n in found if n not in skip and (layers is None or n in layers)]
    uses: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    plans = []
    for name in chosen:
        layer = found[name]
        if parametrize.is_parametrized(layer, "weight"):
            raise PressoError(
                f"The weight of layer '{name}' is already parametrized (prepared twice?); "
                "call convert() first or skip the layer."
            )
        if uses[id(layer.weight)] > 1:
            raise PressoError(
                f"The weight of layer '{name}' is shared with another layer (tied weights); add it to 'skip'."
            )
        plans.append((layer, _group_for(name, layer, group_size)))
    for layer, g in plans:
        fq = FakeQuantWeight(layer.weight.detach(), bits, g, symmetric, learned_scale)
        parametrize.register_parametrization(layer, "weight", fq)
    return chosen


def _fake_quant(module: nn.Module, name: str) -> FakeQuantWeight:
    layer = dict(module.named_modules()).get(name)
    plist = getattr(getattr(layer, "parametrizations", None), "weight", None)
    fq = [p for p in plist or [] if isinstance(p, FakeQuantWeight)]
    if not fq:
        raise PressoError(f"Layer '{name}' is not prepared for QAT; use a name that prepare_qat() returned.")
    return fq[0]


def set_enabled(module: nn.Module, names: Iterable[str], enabled: bool) -> None:
    """Switch fake quantization of the named layers on or off (off: the float weight, exactly).

    A learned scale switched back on restarts from min-max of the layer's current weight,
    which may have moved while it trained in float.
    """
    names = list(names)
    fqs = [(_fake_quant(module, n), dict(module.named_modules())[n]) for n in names]
    for fq, layer in fqs:
        if enabled and not fq.enabled:
            fq.reset_scale(layer.parametrizations.weight.original)
        fq.enabled = bool(enabled)


def progressive_schedule(names: list[str], stages: int, epochs: int) -> dict[int, list[str]]:
    """Epoch (1-based) at which each group of layers starts fake-quantizing.

    Layers, in model order, split into ``stages`` contiguous groups of near-equal size
    (``stages`` is capped at the number of layers); group ``i`` starts at epoch
    ``1 + i * epochs // stages``.

    Examples
    --------
    >>> progressive_schedule(["a", "b", "c", "d", "e"], stages=2, epochs=6)
    {1: ['a', 'b', 'c'], 4: ['d', 'e']}
    """
    for option, v in (("stages", stages), ("epochs", epochs)):
        if not (_is_int(v) and v >= 1):
            raise PressoError(f"The '{option}' option must be an int >= 1. Got {v!r} instead.")
    names = list(names)
    n_groups = min(stages, len(names))
    schedule: dict[int, list[str]] = {}
    start = 0
    for i in range(n_groups):
        size = len(names) // n_groups + (i < len(names) % n_groups)
        schedule.setdefault(1 + i * epochs // n_groups, []).extend(names[start : start + size])
        start += size
    return schedule


def progressive_hook(module: nn.Module, schedule: dict[int, list[str]]) -> Callable[[int], bool]:
    """A ``before_epoch`` hook for :func:`presso.train.fit` that follows ``schedule``.

    Switches every scheduled layer off now and each group on at its epoch; it returns
    True on those epochs so that ``fit`` re-validates the weights as the new reference.
    """
    set_enabled(module, [n for group in schedule.values() for n in group], False)

    def before_epoch(epoch: int) -> bool:
        names = schedule.get(epoch, [])
        if names:
            set_enabled(module, names, True)
        return bool(names)

    return before_epoch


@torch.no_grad()
def convert(module: nn.Module) -> dict[str, QuantParams]:
    """Remove the QAT parametrizations; each weight keeps its fake-quantized values, exactly.

    For every converted layer ``fake_quantize(layer.weight, qparams=qp)`` equals the weight
    bit for bit and ``quantize(layer.weight, qp)`` recovers the integers, so a writer stores
    them losslessly with these scales (recomputing min-max scales from the weights would
    not: a learned scale need not span the whole grid). A layer still switched off is
    quantized with min-max of its current weight.

    Returns
    -------
    dict of layer name -> QuantParams
        Per group: scale ``(out, in / group_size)`` with ``group_size`` set; per channel:
        scale ``(out,)`` with ``axis=0``.
    """
    result = {}
    for name, layer in list(module.named_modules()):
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        fq = [p for p in layer.parametrizations.weight if isinstance(p, FakeQuantWeight)]
        if not fq:
            continue
        w = layer.parametrizations.weight.original.detach()
        if not fq[0].enabled:
            fq[0].reset_scale(w)
        qp = fq[0].qparams(w)
        deq = fake_quantize(w.float().cpu(), qparams=qp)  # presso's own math, on the CPU
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        for key in [k for k in layer._parameters if k != "weight"]:  # weight first again, as before
            layer._parameters[key] = layer._parameters.pop(key)
        layer.weight.copy_(deq)
        result[name] = qp
    return result
