"""Quantizer math: bit-exact parity with torch's fake-quantize ops, error statistics, packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import presso
from presso.errors import PressoError
from presso.techniques.quantization.packing import pack_bits, pack_int4, unpack_bits, unpack_int4
from presso.techniques.quantization.quantizers import (
    binarize,
    compute_qparams,
    dequantize,
    fake_quantize,
    qparams_from_range,
    quantize,
    to_half,
)


def _randn(shape, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread + 0.3


def _near_ties(scale: torch.Tensor, shape, seed) -> torch.Tensor:
    """Values (k + 0.5) * scale and their float32 neighbours one ulp either side."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-140, 140, shape, generator=g).float()
    x = (k + 0.5) * scale  # (shape)
    step = torch.randint(-1, 2, shape, generator=g).float()  # -1, 0 or +1 ulp
    return torch.nextafter(x, x + step * x.abs().clamp(min=1.0))


# --- bit-exact parity with torch --------------------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed,shape", [(0, (1000,)), (1, (16, 33)), (2, (4, 8, 9)), (3, (7,))])
def test_per_tensor_equals_torch(symmetric, seed, shape):
    x = _randn(shape, seed)
    qp = compute_qparams(x, bits=8, symmetric=symmetric)
    scale, zp = float(qp.scale), int(qp.zero_point)
    ties = _near_ties(qp.scale, (4000,), seed)
    for t in (x, ties):
        ref = torch.fake_quantize_per_tensor_affine(t, scale, zp, qp.qmin, qp.qmax)
        assert torch.equal(presso.fake_quantize(t, qparams=qp), ref)
    assert torch.equal(
        presso.fake_quantize(x, bits=8, symmetric=symmetric),
        torch.fake_quantize_per_tensor_affine(x, scale, zp, qp.qmin, qp.qmax),
    )


def test_torch_parity_needs_reciprocal_multiply():
    # Why quantize() uses x * (1 / scale): next to ties, x / scale rounds differently often
    # enough that a division-based quantizer would not be bit-identical to torch.
    x = torch.linspace(-3, 3, 101)
    qp = compute_qparams(x, bits=8)
    t = _near_ties(qp.scale, (20000,), seed=5)
    by_division = torch.round(t / qp.scale) != torch.round(t * (1.0 / qp.scale))
    assert by_division.sum() > 100
    ref = torch.fake_quantize_per_tensor_affine(t, float(qp.scale), int(qp.zero_point), 0, 255)
    assert torch.equal(fake_quantize(t, qparams=qp), ref)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_channel_equals_torch(symmetric, axis, seed):
    x = _randn((24, 40, 3), seed) * torch.linspace(0.1, 4, 40).view(1, 40, 1)  # channels differ
    qp = compute_qparams(x, bits=8, symmetric=symmetric, axis=axis)
    assert qp.scale.shape == (x.shape[axis],)
    view = [1, 1, 1]
    view[axis] = -1
    ties = _near_ties(qp.scale.view(view), x.shape, seed)
    for t in (x, ties):
        ref = torch.fake_quantize_per_channel_affine(t, qp.scale, qp.zero_point, axis, qp.qmin, qp.qmax)
        assert torch.equal(fake_quantize(t, qparams=qp), ref)
    assert torch.equal(fake_quantize(x, symmetric=symmetric, axis=axis), fake_quantize(x, qparams=qp))


# --- error statistics and ranges --------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_uniform_error_variance(bits):
    a, b = -0.7, 2.3  # contains 0, so the min-max range is [a, b] and the grid spans it
    g = torch.Generator().manual_seed(bits)
    x = torch.rand(10**6, generator=g) * (b - a) + a
    mse = (fake_quantize(x, bits=bits) - x).pow(2).mean().item()
    expected = (b - a) ** 2 / (12 * (2**bits - 1) ** 2)
    # The error e is U(-s/2, s/2): Var(e^2) = s^4/180, so the mean of n squared errors has a
    # relative standard deviation of (12 / sqrt(180)) / sqrt(n) = 0.09 % at n = 1e6. A 1 %
    # tolerance is > 10 sigma; the zero-point shift of the grid leaves the MSE unchanged.
    assert_allclose(mse, expected, rtol=0.01)


def test_per_group_error_bounded_by_own_scale():
    spread = torch.tensor([0.01, 1.0, 100.0]).repeat_interleave(32)  # (96,) one range per group
    x = _randn((8, 96), seed=4) * spread
    qp = compute_qparams(x, bits=4, group_size=32)
    assert qp.scale.shape == (8, 3)
    xq = fake_quantize(x, bits=4, group_size=32)
    err = (xq - x).abs().reshape(8, 3, 32)  # (rows, G, g)
    assert bool((err <= qp.scale.unsqueeze(-1) / 2 * (1 + 1e-5)).all())
    assert qp.scale[:, 0].max() * 10 < qp.scale[:, 1].min()  # each group has its own scale
    assert qp.scale[:, 1].max() * 10 < qp.scale[:, 2].min()
    for r in range(8):  # same as quantizing each group on its own, per tensor
        for j in range(3):
            piece = x[r, 32 * j : 32 * (j + 1)]
            assert torch.equal(xq[r, 32 * j : 32 * (j + 1)], fake_quantize(piece, bits=4))


def test_group_size_must_divide():
    with pytest.raises(PressoError, match="group_size 48 does not divide the layer's 100 input"):
        compute_qparams(torch.randn(4, 100), bits=4, group_size=48)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [None, 0])
def test_power_of_two_scales(symmetric, axis):
    x = _randn((16, 50), seed=6)
    qp = compute_qparams(x, bits=6, symmetric=symmetric, axis=axis, power_of_two=True)
    p = qp.shift
    assert p is not None
    assert torch.equal(qp.scale, torch.ldexp(torch.ones_like(qp.scale), -p))
    plain = compute_qparams(x, bits=6, symmetric=symmetric, axis=axis)
    assert bool((qp.scale >= plain.scale).all()) and bool((qp.scale < 2 * plain.scale).all())
    shape = [-1, 1] if axis == 0 else []
    assert torch.equal(x / qp.scale.reshape(shape), x * torch.exp2(p.float()).reshape(shape))
    assert compute_qparams(x, bits=6).shift is None


def test_power_of_two_rounds_exact_powers_to_themselves():
    qp = qparams_from_range(torch.tensor(0.0), torch.tensor(127 / 32), 8, True, power_of_two=True)
    assert qp.scale.item() == 1 / 32 and qp.shift.item() == 5


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_zero_point_is_zero(bits):
    qp = compute_qparams(_randn((10, 20), seed=7), bits=bits, symmetric=True, axis=1)
    assert bool((qp.zero_point == 0).all())
    assert (qp.qmin, qp.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    narrow = qparams_from_range(-1.0, 1.0, bits, symmetric=True, narrow=True)
    assert narrow.qmin == -narrow.qmax


@pytest.mark.parametrize("offset", [-5.0, 0.3, 5.0])  # all-negative, mixed, all-positive
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_affine_range_includes_zero(offset, bits):
    x = _randn((500,), seed=8, spread=1.0) + offset
    x[::7] = 0.0
    qp = compute_qparams(x, bits=bits)
    lo = float((qp.qmin - qp.zero_point) * qp.scale)
    hi = float((qp.qmax - qp.zero_point) * qp.scale)
    assert lo <= 0.0 <= hi
    assert bool((fake_quantize(x, bits=bits)[::7] == 0).all())


def test_zero_range_is_guarded():
    for x in (torch.zeros(10), torch.full((10,), 2.5)):
        y = fake_quantize(x, bits=4)
        assert bool(torch.isfinite(y).all())
        assert_allclose(y.numpy(), x.numpy(), rtol=0, atol=2.5 / 15 / 2 + 1e-7)


def test_quantize_dtypes_and_ranges():
    x = _randn((64,), seed=9)
    q = quantize(x, compute_qparams(x, bits=4))
    assert q.dtype == torch.uint8 and int(q.min()) == 0 and int(q.max()) == 15
    qs = quantize(x, compute_qparams(x, bits=4, symmetric=True))
    assert qs.dtype == torch.int8 and int(qs.min()) >= -8 and int(qs.max()) <= 7


# --- binary and half weights ------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1])
def test_binarize_per_channel(axis):
    w = _randn((6, 10), seed=10)
    w[0, 0] = 0.0
    wb = binarize(w, axis=axis)
    scale = w.abs().mean(dim=1 - axis, keepdim=True)  # (6, 1) or (1, 10)
    assert torch.equal(wb.abs(), scale.expand_as(w))
    assert torch.equal(torch.sign(wb), torch.where(w >= 0, 1.0, -1.0))
    assert wb[0, 0] > 0  # sign(0) = +1


def test_binarize_per_tensor():
    w = _randn((5, 5), seed=11)
    assert_allclose(binarize(w, axis=None).abs().numpy(), w.abs().mean().item(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "float16", "bf16"])
def test_to_half_round_trip(dtype):
    w = _randn((100,), seed=12)
    half = (
        dtype if isinstance(dtype, torch.dtype) else {"float16": torch.float16, "bf16": torch.bfloat16}[dtype]
    )
    y = to_half(w, dtype)
    assert y.dtype == torch.float32
    assert torch.equal(y, w.to(half).float())
    rel = 2.0**-11 if half == torch.float16 else 2.0**-8  # half an ulp, relative
    assert_allclose(y.numpy(), w.numpy(), rtol=rel, atol=0)


def test_to_half_overflow():
    with pytest.raises(PressoError, match="exceed the float16 range"):
        to_half(torch.tensor([1e6]), torch.float16)


# --- packing ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 1001])
@pytest.mark.parametrize("signed", [False, True])
def test_int4_round_trip(n, signed):
    rng = np.random.default_rng(n)
    lo, hi = (-8, 8) if signed else (0, 16)
    v = rng.integers(lo, hi, n).astype(np.int8 if signed else np.uint8)
    packed = pack_int4(v)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(n / 2)
    out = unpack_int4(packed, n, signed=signed)
    assert out.dtype == v.dtype and np.array_equal(out, v)


def test_int4_low_nibble_first():
    assert pack_int4(np.array([1, 2, 3], dtype=np.uint8)).tolist() == [0x21, 0x03]
    assert pack_int4(np.array([-1, -8], dtype=np.int8)).tolist() == [0x8F]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 5, 8, 333])
@pytest.mark.parametrize("signed", [False, True])
def test_pack_bits_round_trip(bits, n, signed):
    signed = signed and bits > 1
    rng = np.random.default_rng(bits * 1000 + n)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    v = rng.integers(lo, hi, n)
    packed = pack_bits(v, bits, signed=signed)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(n * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, n, signed=signed), v)
    if bits == 4:
        assert np.array_equal(packed, pack_int4(v, signed=signed))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 16])
def test_packed_int4_dequantizes_to_fake_quantize(symmetric, group_size):
    w = _randn((12, 48), seed=13)
    qp = compute_qparams(w, bits=4, symmetric=symmetric, group_size=group_size)
    packed = pack_int4(quantize(w, qp))
    assert packed.size == w.numel() // 2
    q = torch.from_numpy(unpack_int4(packed, w.numel(), signed=symmetric)).reshape(w.shape)
    assert torch.equal(dequantize(q, qp), fake_quantize(w, qparams=qp))


def test_pack_rejects_out_of_range():
    with pytest.raises(PressoError, match=r"outside the unsigned 3-bit range \[0, 7\]"):
        pack_bits([1, 8], bits=3, signed=False)
    with pytest.raises(PressoError, match=r"outside the signed 4-bit range \[-8, 7\]"):
        pack_int4(np.array([-9, 0], dtype=np.int8))


# --- bad options ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 9, 2.5, True, "8"])
def test_bad_bits(bits):
    msg = rf"The 'bits' option must be an int in \[2, 8\]. Got {bits!r} instead"
    with pytest.raises(PressoError, match=msg):
        presso.fake_quantize(torch.randn(10), bits=bits)


def test_bad_options():
    x = torch.randn(4, 6)
    with pytest.raises(PressoError, match=r"'axis' option must be an int in \[-2, 1\]"):
        fake_quantize(x, axis=2)
    with pytest.raises(PressoError, match="not both"):
        fake_quantize(x, axis=0, group_size=3)
    with pytest.raises(PressoError, match="floating-point tensor"):
        fake_quantize(torch.arange(4))
    with pytest.raises(PressoError, match="NaN or inf"):
        fake_quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(PressoError, match="symmetric quantization only"):
        qparams_from_range(-1.0, 1.0, 8, symmetric=False, narrow=True)
    with pytest.raises(PressoError, match=r"'bits' option must be an int in \[1, 8\]"):
        pack_bits([0, 1], bits=9)
    with pytest.raises(PressoError, match="do not fit a tensor"):
        quantize(torch.randn(5, 6), compute_qparams(x, axis=0))


def test_import_presso_stays_light():
    import subprocess
    import sys

    code = "import sys, presso; presso.__all__; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert "fake_quantize" in presso.__all__
