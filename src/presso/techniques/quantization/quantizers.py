"""Linear quantizer math: scales, zero points, (fake-)quantize, binary and half weights.

Bit for bit as torch's fake-quantize kernels: ``q = clamp(round(x * (1 / scale)) +
zero_point, qmin, qmax)`` (float32 reciprocal, not ``x / scale``, which differs by an ulp
next to ties; round half to even; zero point added after rounding) and ``xq = (q -
zero_point) * scale``. Pure torch; nothing here knows about ONNX.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from presso.errors import PressoError

_EPS = torch.finfo(torch.float32).eps  # smallest scale: guards a zero range, as torch observers
_HALF = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale and zero point of a linear quantizer, and the granularity they apply at.

    ``scale`` is float32 and ``zero_point`` int32, both of shape ``()`` per tensor,
    ``(C,)`` per channel along ``axis``, or ``(*x.shape[:-1], x.shape[-1] // group_size)``
    per group of ``group_size`` consecutive elements along the last axis.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None
    group_size: int | None = None

    @property
    def bits(self) -> int:
        """Bit width of the integer range (a narrow range counts as its full width)."""
        return int(self.qmax - self.qmin).bit_length()

    @property
    def shift(self) -> torch.Tensor | None:
        """Integer ``p`` with ``scale == 2**-p`` (``x / scale == x * 2**p``), or None."""
        mantissa, exponent = torch.frexp(self.scale)  # scale = m * 2**e, m in [0.5, 1)
        if not bool((mantissa == 0.5).all()):
            return None
        return (1 - exponent).to(torch.int32)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_bits(bits) -> None:
    if not (_is_int(bits) and 2 <= bits <= 8):
        hint = " For 1-bit weights use binarize()." if bits == 1 else ""
        raise PressoError(f"The 'bits' option must be an int in [2, 8]. Got {bits!r} instead.{hint}")


def _check_axis(axis, ndim: int) -> int:
    if not (_is_int(axis) and -ndim <= axis < ndim):
        raise PressoError(
            f"The 'axis' option must be an int in [{-ndim}, {ndim - 1}] for a "
            f"{ndim}-d tensor. Got {axis!r} instead."
        )
    return int(axis) % ndim


def _check_group(x: torch.Tensor, group_size) -> int:
    if not (_is_int(group_size) and group_size >= 1 and x.ndim >= 1):
        raise PressoError(
            f"The 'group_size' option must be a positive int and the tensor have at "
            f"least one axis. Got {group_size!r} and shape {tuple(x.shape)} instead."
        )
    n = x.shape[-1]
    if n % group_size:
        near = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - group_size))
        raise PressoError(
            f"group_size {group_size} does not divide the layer's {n} input features "
            f"(last axis of shape {tuple(x.shape)}); use a divisor of {n} such as "
            f"{' or '.join(map(str, near[:2]))}."
        )
    return int(group_size)


def _as_float(x) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if not x.is_floating_point():
        raise PressoError(
            f"Expected a floating-point tensor; got dtype {x.dtype}. Convert it with .float() first."
        )
    return x.float()


def qparams_from_range(
    lo,
    hi,
    bits: int,
    symmetric: bool,
    power_of_two: bool = False,
    narrow: bool = False,
    *,
    axis: int | None = None,
    group_size: int | None = None,
) -> QuantParams:
    """Scale and zero point that map ``[lo, hi]`` (widened to include 0) onto ``bits`` bits.

    Affine uses ``[0, 2**bits - 1]`` and a zero point that makes 0 exactly representable;
    symmetric uses ``[-2**(bits-1), 2**(bits-1) - 1]`` (``narrow``: from ``-(2**(bits-1) - 1)``),
    zero point 0 and ``scale = max(|lo|, |hi|) / qmax``, so neither end is clipped.
    ``power_of_two`` rounds each scale *up* to ``2**-p``, so ``x / scale`` is a shift.

    Examples
    --------
    >>> import torch
    >>> qp = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), bits=8, symmetric=False)
    >>> round(qp.scale.item() * 255, 4), qp.zero_point.item()
    (4.0, 64)
    """
    _check_bits(bits)
    lo = torch.as_tensor(lo, dtype=torch.float32).clamp(max=0.0)  # 0 is always in range
    hi = torch.as_tensor(hi, dtype=torch.float32).clamp(min=0.0)
    if lo.shape != hi.shape:
        raise PressoError(f"lo and hi must have the same shape; got {tuple(lo.shape)} and {tuple(hi.shape)}.")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax if narrow else -qmax - 1
        scale = torch.maximum(-lo, hi) / qmax
    else:
        if narrow:
            raise PressoError(
                "narrow=True applies to symmetric quantization only; drop it or set symmetric=True."
            )
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / (qmax - qmin)
    scale = scale.clamp(min=_EPS)
    if power_of_two:
        mantissa, exponent = torch.frexp(scale)  # scale = m * 2**e, m in [0.5, 1)
        exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)  # already 2**(e-1)
        scale = torch.ldexp(torch.ones_like(scale), exponent)
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32)
    else:
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return QuantParams(scale, zero_point, qmin, qmax, axis, group_size)


def compute_qparams(
    x,
    bits: int = 8,
    symmetric: bool = False,
    axis: int | None = None,
    group_size: int | None = None,
    power_of_two: bool = False,
    narrow: bool = False,
) -> QuantParams:
    """Min-max quantization parameters of ``x``: per tensor, per channel or per group.

    ``axis`` keeps one scale per index of that axis (per channel); ``group_size`` keeps
    one scale per ``group_size`` consecutive elements of the last axis, per row (reshape
    conv weights to ``(out, -1)`` first). Use one or the other.

    Examples
    --------
    >>> import torch
    >>> w = torch.randn(64, 128)
    >>> compute_qparams(w, bits=4, symmetric=True, axis=0).scale.shape
    torch.Size([64])
    >>> compute_qparams(w, bits=4, group_size=32).scale.shape
    torch.Size([64, 4])
    """
    x = _as_float(x)
    _check_bits(bits)
    if x.numel() == 0:
        raise PressoError("Cannot compute quantization parameters of an empty tensor.")
    if not bool(torch.isfinite(x).all()):
        raise PressoError("The tensor holds NaN or inf values; quantization needs finite values.")
    if group_size is not None:
        if axis is not None:
            raise PressoError(
                "Use either 'axis' (per channel) or 'group_size' (per group along the last axis), not both."
            )
        g = _check_group(x, group_size)
        xg = x.reshape(*x.shape[:-1], x.shape[-1] // g, g)  # (..., G, g)
        lo, hi = xg.amin(-1), xg.amax(-1)  # (..., G)
    elif axis is not None:
        axis = _check_axis(axis, x.ndim)
        xc = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, rest)
        lo, hi = xc.amin(1), xc.amax(1)  # (C,)
    else:
        lo, hi = x.min(), x.max()  # ()
    return qparams_from_range(lo, hi, bits, symmetric, power_of_two, narrow, axis=axis, group_size=group_size)


def _view(x: torch.Tensor, qp: QuantParams):
    """``x`` reshaped so that scale and zero point broadcast: (x_view, scale, zero_point)."""
    s, z = qp.scale, qp.zero_point
    if qp.group_size is not None:
        g = _check_group(x, qp.group_size)
        if tuple(x.shape[:-1]) + (x.shape[-1] // g,) != tuple(s.shape):
            raise PressoError(
                f"Per-group parameters of shape {tuple(s.shape)} do not fit a tensor "
                f"of shape {tuple(x.shape)} with group_size {g}."
            )
        return x.reshape(*x.shape[:-1], -1, g), s.unsqueeze(-1), z.unsqueeze(-1)  # (..., G, g), (..., G, 1)
    if qp.axis is not None:
        if qp.axis >= x.ndim or x.shape[qp.axis] != s.numel():
            raise PressoError(
                f"Per-channel parameters for {s.numel()} channels on axis {qp.axis} "
                f"do not fit a tensor of shape {tuple(x.shape)}."
            )
        shape = [1] * x.ndim
        shape[qp.axis] = -1
        return x, s.reshape(shape), z.reshape(shape)
    if s.numel() != 1:
        raise PressoError(f"Per-tensor parameters must hold one scale; got shape {tuple(s.shape)}.")
    return x, s.reshape(()), z.reshape(())


def _int_dtype(qp: QuantParams) -> torch.dtype:
    if 0 <= qp.qmin and qp.qmax <= 255:
        return torch.uint8
    return torch.int8 if -128 <= qp.qmin and qp.qmax <= 127 else torch.int32


def quantize(x, qp: QuantParams) -> torch.Tensor:
    """Integers ``clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)``, shape of ``x``.

    The dtype is uint8 for an unsigned range and int8 for a signed one.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    >>> quantize(x, compute_qparams(x, bits=8)).tolist()
    [0, 64, 96, 255]
    """
    x = _as_float(x)
    xv, s, z = _view(x, qp)
    q = torch.round(xv * (1.0 / s)) + z  # float32 reciprocal, zero point after rounding (as torch)
    return q.clamp(qp.qmin, qp.qmax).to(_int_dtype(qp)).reshape(x.shape)


def dequantize(q, qp: QuantParams) -> torch.Tensor:
    """Float32 values ``(q - zero_point) * scale`` of integers ``q`` (tensor or array).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    >>> qp = compute_qparams(x, bits=8)
    >>> torch.equal(dequantize(quantize(x, qp), qp), fake_quantize(x))
    True
    """
    q = q if isinstance(q, torch.Tensor) else torch.as_tensor(q)
    qv, s, z = _view(q, qp)
    return ((qv.to(torch.float32) - z) * s).reshape(q.shape)


def fake_quantize(
    x,
    bits: int = 8,
    symmetric: bool = False,
    axis: int | None = None,
    group_size: int | None = None,
    power_of_two: bool = False,
    qparams: QuantParams | None = None,
) -> torch.Tensor:
    """Quantize then dequantize ``x``: the float values an integer kernel would see.

    Min-max parameters are computed from ``x`` unless ``qparams`` is given (then the
    other options are not used). At 8 bits, with the same scale and zero point, the
    result equals ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``
    bit for bit. Computed in float32; returned in the dtype of ``x``.

    Examples
    --------
    >>> import torch, presso
    >>> x = torch.tensor([-1.0, -0.5, 0.2, 0.5, 0.7, 1.0])  # 2 bits, symmetric: scale 1
    >>> presso.fake_quantize(x, bits=2, symmetric=True).tolist()  # ties go to even
    [-1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    x32 = _as_float(x)
    qp = (
        qparams
        if qparams is not None
        else compute_qparams(x32, bits, symmetric, axis, group_size, power_of_two)
    )
    out = dequantize(quantize(x32, qp), qp)
    return out.to(x.dtype) if isinstance(x, torch.Tensor) else out


def binarize(w, axis: int | None = 0) -> torch.Tensor:
    """1-bit weights ``sign(w) * mean(|w|)`` per output channel (BinaryConnect / XNOR-Net).

    ``sign(0)`` is +1; ``axis=None`` uses one scale for the whole tensor.

    Examples
    --------
    >>> import torch
    >>> binarize(torch.tensor([[1.0, -3.0], [0.0, 2.0]])).tolist()
    [[2.0, -2.0], [1.0, 1.0]]
    """
    w32 = _as_float(w)
    scale = w32.abs().mean()  # ()
    if axis is not None:
        axis = _check_axis(axis, w32.ndim)
        shape = [1] * w32.ndim
        shape[axis] = c = w32.shape[axis]
        scale = w32.abs().movedim(axis, 0).reshape(c, -1).mean(1).reshape(shape)  # (1, .., C, .., 1)
    sign = torch.where(w32 >= 0, 1.0, -1.0)
    return (sign * scale).to(w.dtype) if isinstance(w, torch.Tensor) else sign * scale


def to_half(w, dtype) -> torch.Tensor:
    """``w`` rounded to float16 or bfloat16 and back to its own dtype.

    Examples
    --------
    >>> import torch
    >>> to_half(torch.tensor([1/3]), "bfloat16").item()
    0.333984375
    """
    key = str(dtype).removeprefix("torch.")
    if key not in _HALF:
        raise PressoError(f"The 'dtype' option must be one of float16, bfloat16. Got {dtype!r} instead.")
    half = _HALF[key]
    w = w if isinstance(w, torch.Tensor) else torch.as_tensor(w)
    _as_float(w)  # validates the dtype
    h = w.to(half)
    if bool((torch.isinf(h) & torch.isfinite(w)).any()):
        raise PressoError(
            f"Some values exceed the {str(half)[6:]} range (max "
            f"{torch.finfo(half).max:g}); use bfloat16, which has float32's range."
        )
    return h.to(w.dtype)
