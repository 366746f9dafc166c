"""ONNX Runtime's dynamic int8 MatMul, computed in numpy as each of its CPU kernels does.

``dynamic_matmul(x, w)`` returns what ORT's ``DynamicQuantizeMatMul`` (the fused form of
``quantize_dynamic``'s DynamicQuantizeLinear -> MatMulInteger -> scale) gives for ``x @ w``
with per-column s8 weights: activations quantized to u8 over the call's own range, the
integer products summed by MLAS's u8 x s8 kernel, then scaled back. The kernel differs by
CPU (``presso.runtime.cpu``): exact int32 sums with VNNI, pairs of products saturated at
int16 without it. Equal to ORT's output on either kernel (tests/runtime/test_int8_gemm.py).

Why not PyTorch's quantized ops: they run their own kernels (FBGEMM / oneDNN), not MLAS's,
and cannot be told to reproduce the saturating path of a CPU other than the one at hand.
"""

from __future__ import annotations

import numpy as np

_I16 = (-32768, 32767)
# Rows of A per chunk of the saturating product: bounds its (rows, K/2, N) int32 temporary.
_CHUNK_ELEMENTS = 1 << 22


def quantize_u8(
    x: np.ndarray, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, float, int]:
    """ORT's DynamicQuantizeLinear: u8 over [min(0, lo), max(0, hi)] (default: ``x``'s own
    range), round half to even. Returns (integers as uint8, scale, zero point)."""
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    lo, hi = min(0.0, lo), max(0.0, hi)
    scale = np.float32((hi - lo) / 255) or np.float32(1.0)
    zero_point = int(np.clip(np.round(-lo / scale), 0, 255))
    q = np.clip(np.round(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, float(scale), zero_point


def quantize_s8_columns(w: np.ndarray, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column s8 weights as ``quantize_dynamic(per_channel=True)`` writes them:
    [-127, 127], or [-64, 64] with ``reduce_range``. Returns (integers as int8, scales (N,))."""
    qmax = 64 if reduce_range else 127
    scale = (np.abs(w).max(0) / qmax).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8), scale


def u8s8_gemm(a: np.ndarray, b: np.ndarray, saturating: bool) -> np.ndarray:
    """``a @ b`` of u8 (M, K) and s8 (K, N) integers as MLAS sums them, int64 (M, N).

    ``saturating``: every pair of products a[m, 2j] b[2j, n] + a[m, 2j+1] b[2j+1, n] is
    clipped to int16 first (``vpmaddubsw``); K is zero-padded to even, as MLAS pads to 4.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    exact = a64 @ b64  # integers below 2**31: float64 sums them exactly, through BLAS
    if not saturating:
        return exact.astype(np.int64)
    if a.shape[1] % 2:
        a64 = np.pad(a64, ((0, 0), (0, 1)))
        b64 = np.pad(b64, ((0, 1), (0, 0)))
    a32, b32 = a64.astype(np.int32), b64.astype(np.int32)
    ae, ao, be, bo = a32[:, 0::2], a32[:, 1::2], b32[0::2], b32[1::2]  # (M, K/2), (K/2, N)
    lost = np.zeros(exact.shape, np.int64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, be.size))
    for start in range(0, len(a32), rows):
        sl = slice(start, start + rows)
        pairs = ae[sl, :, None] * be[None] + ao[sl, :, None] * bo[None]  # (m, K/2, N)
        lost[sl] = (pairs - np.clip(pairs, *_I16)).sum(1)
    return exact.astype(np.int64) - lost


def dynamic_matmul(
    x: np.ndarray,
    w: np.ndarray,
    *,
    saturating: bool,
    reduce_range: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    quantized_w: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """ORT's dynamic int8 ``x @ w`` (no bias) for rows ``x`` (M, K) of a call whose values span
    [lo, hi] (default: ``x``'s own range) and float weights ``w`` (K, N).

    ``quantized_w``: the weights' (integers, scales) when already quantized (saves redoing
    it for every call)."""
    qx, sx, zx = quantize_u8(x, lo, hi)
    qw, sw = quantized_w if quantized_w is not None else quantize_s8_columns(w, reduce_range)
    acc = u8s8_gemm(qx, qw, saturating) - zx * qw.astype(np.int64).sum(0)  # sum (x - zp) w
    return acc * (sx * sw.astype(np.float64))
