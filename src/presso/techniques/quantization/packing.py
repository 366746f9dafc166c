"""Bit packing of small integers into bytes: int4 nibbles and a general 1-8 bit stream.

Layout: value ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of a little-endian bit
stream, so for 4 bits the first value is the LOW nibble of byte 0 (the layout of ONNX
int4/uint4 tensors and ORT's MatMulNBits). The last byte is zero-padded. Signed values
are stored in two's complement and sign-extended on unpacking. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from presso.errors import PressoError


def _as_ints(values) -> np.ndarray:
    """Flat int64 numpy view of a torch tensor, numpy array or sequence of integers."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub":
        raise PressoError(f"Packing needs integer values; got dtype {arr.dtype}. Quantize first.")
    return arr.reshape(-1).astype(np.int64)


def _check_range(v: np.ndarray, bits: int, signed: bool) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    bad = (v < lo) | (v > hi)
    if bad.any():
        kind = "signed" if signed else "unsigned"
        raise PressoError(
            f"{int(bad.sum())} values lie outside the {kind} {bits}-bit range "
            f"[{lo}, {hi}] (e.g. {int(v[bad][0])}); quantize to {bits} bits first."
        )


def _infer_signed(values, v: np.ndarray) -> bool:
    dtype = str(getattr(values, "dtype", ""))
    if dtype.endswith(("uint8", "bool")):
        return False
    if dtype.endswith("int8"):
        return True
    return bool((v < 0).any())


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise PressoError(f"The 'bits' option must be an int in [1, 8]. Got {bits!r} instead.")
    return int(bits)


def pack_int4(q, signed: bool | None = None) -> np.ndarray:
    """Pack 4-bit integers two per byte, low nibble first; an odd count is zero-padded.

    ``signed=None`` infers the range from the dtype (int8: [-8, 7], uint8: [0, 15]) or,
    for other dtypes, from the presence of negative values.

    Examples
    --------
    >>> pack_int4([1, 2, 15]).tolist()
    [33, 15]
    >>> unpack_int4(pack_int4([-8, 7, -1]), 3, signed=True).tolist()
    [-8, 7, -1]
    """
    v = _as_ints(q)  # (n,)
    signed = _infer_signed(q, v) if signed is None else signed
    _check_range(v, 4, signed)
    nib = (v & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return nib[0::2] | (nib[1::2] << 4)  # (ceil(n / 2),)


def unpack_int4(packed, n: int, signed: bool) -> np.ndarray:
    """The first ``n`` 4-bit values of ``packed``: int8 in [-8, 7] if ``signed``, else uint8.

    Examples
    --------
    >>> unpack_int4(pack_int4([1, 2, 15]), 3, signed=False).tolist()
    [1, 2, 15]
    """
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if not 0 <= n <= 2 * b.size:
        raise PressoError(f"Cannot unpack {n} int4 values from {b.size} bytes (at most {2 * b.size}).")
    nib = np.stack([b & 0xF, b >> 4], axis=1).reshape(-1)[:n]  # (n,) low nibble first
    if signed:
        return (nib.astype(np.int8) ^ 8) - 8  # sign-extend bit 3 (stays within int8)
    return nib


def pack_bits(values, bits: int, signed: bool | None = None) -> np.ndarray:
    """Pack integers of ``bits`` bits (1 to 8) into ``ceil(n * bits / 8)`` bytes.

    Examples
    --------
    >>> pack_bits([1, 0, 1, 1], bits=1).tolist()
    [13]
    >>> unpack_bits(pack_bits([5, 0, 7], bits=3), bits=3, n=3).tolist()
    [5, 0, 7]
    """
    bits = _check_bits(bits)
    v = _as_ints(values)  # (n,)
    signed = (_infer_signed(values, v) if signed is None else signed) and bits > 1
    _check_range(v, bits, signed)
    if bits == 8:
        return (v & 0xFF).astype(np.uint8)
    if bits == 4:
        return pack_int4(v & 0xF, signed=False)
    stream = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (n, bits), LSB first
    return np.packbits(stream.reshape(-1), bitorder="little")  # (ceil(n * bits / 8),)


def unpack_bits(packed, bits: int, n: int, signed: bool = False) -> np.ndarray:
    """The first ``n`` values of ``bits`` bits each in ``packed`` (int8 if ``signed``, else uint8).

    Examples
    --------
    >>> unpack_bits(pack_bits([-4, 3, -1], bits=3, signed=True), bits=3, n=3, signed=True).tolist()
    [-4, 3, -1]
    """
    bits = _check_bits(bits)
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if not 0 <= n * bits <= 8 * b.size:
        raise PressoError(f"Cannot unpack {n} values of {bits} bits from {b.size} bytes.")
    if bits == 8:
        u = b[:n].copy()
    elif bits == 4:
        u = unpack_int4(b, n, signed=False)
    else:
        stream = np.unpackbits(b, bitorder="little")[: n * bits].reshape(n, bits)  # (n, bits)
        u = (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)
    if signed and bits > 1:
        half = 1 << (bits - 1)
        return ((u.astype(np.int16) ^ half) - half).astype(np.int8)  # sign-extend the top bit
    return u
