"""A packed storage file for any ONNX model: the same model, losslessly, every tensor entropy-coded.

``model.onnx`` is what runs; ``model.packed`` is what a report can state as the size to
store or transmit (the third stage of Deep Compression: prune, cluster, entropy-code).
``unpack`` gives the model back with every stored tensor's data inline in ``raw_data``
(ONNX's little-endian layout), bit for bit; tensors that came in typed fields
(``float_data``, ``int64_data``, ...) or external files come back in ``raw_data``.

Entropy coding is the standard library's ``lzma``: a well-kept library whose adaptive
range coder with context modelling does at least as well as the static Huffman codes of
Deep Compression, with no hand-written coder to get wrong.

File layout (integers little-endian), enough to write a reader::

    magic      b"PRESSO-PACK\\x01"        12 bytes; the last byte is the format version
    count      u32                        T, the number of stored tensors
    graph_len  u64                        G
    crc        u32                        zlib.crc32 of everything after this field
    table      T rows of (u8 codec, raw_len, payload_len), lengths as LEB128 varints
               (7 bits a byte, low groups first, high bit set on all but the last byte)
    graph      G bytes: LZMA2 of the ModelProto with the stored tensors' data cleared
    payloads   T payloads back to back, in table order

The stored tensors are the main graph's initializers in order, STRING tensors excepted
(they have no raw layout and stay in the graph, as do Constant nodes' tensors and
subgraph initializers, which are small); a stored tensor gets its ``raw_len`` bytes back
as ``raw_data``. Every "LZMA2" is a raw LZMA2 stream (no xz container: its headers cost
~60 bytes a stream, and the file's CRC guards it) that decodes with ``dict_size`` 8 MiB;
it ends with LZMA2's end marker, so a stream followed by more bytes needs no length. A payload of ``n`` bytes
whose elements are ``w`` bytes wide (the dtype's size; 1 for 4-bit types, or when ``n``
is not a multiple of it), by codec:

    0 raw       the n bytes
    1 lzma      LZMA2(bytes)
    2 shuffle   u16 flags, LZMA2(byte planes whose flag bit is 0), then the planes whose
                flag bit is 1, stored as they are. Plane i holds byte i of every element.
    3 codebook  u8 k-1, LZMA2(k distinct elements (w bytes each) + one u8 index an element)
    4 nibbles   LZMA2(low nibble, high nibble of every byte, one a byte)      (w == 1)
    5 sparse    LZMA2(np.packbits(element != 0)), u8 codec, that codec's payload of the
                non-zero elements
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from presso.errors import PressoError
from presso.files import write_bytes_atomic
from presso.runtime.onnx_files import save_onnx

MAGIC = b"PRESSO-PACK\x01"
_HEAD = struct.Struct("<IQI")
_DICT = (
    8 << 20
)  # LZMA dictionary cap: keeps encoder memory ~100 MiB a thread; far matches rarely help weights
# Above this, preset 6 with the hash-chain match finder instead of 9|EXTREME: on MiniLM's
# 11.7 MB word-embedding exponent plane, 9e took 17.5 s a 4 MiB slice, preset 6 7.2 s and
# preset 6 + HC4 3.5 s, all within 1% of each other's size.
_EXTREME_MAX = 4 << 20
_SAMPLE = 256 << 10  # tensors larger than this pick their codec on a sample of this size
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


@dataclass(frozen=True)
class PackStats:
    bytes: int  # the whole packed file
    weights_bytes: int  # tensor payloads after coding, with their table rows
    graph_bytes: int  # the compressed graph (the ModelProto without initializer data)
    codecs: dict[str, int]  # codec name -> number of tensors stored with it
    tensors: list[dict]  # name, dtype, elements, raw_bytes, packed_bytes, codec: one per tensor


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    """(the LEB128 number at ``pos``, the position after it); IndexError past the end."""
    n = shift = 0
    while blob[pos] & 0x80:
        n, shift, pos = n | (blob[pos] & 0x7F) << shift, shift + 7, pos + 1
    return n | blob[pos] << shift, pos + 1


def _lz(data: bytes, preset: int | None = None) -> bytes:
    size = min(max(4096, 1 << max(len(data) - 1, 1).bit_length()), _DICT)  # smaller tables for small data
    options = {"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": size}
    if preset is None:
        options.update(
            {"preset": 6, "mf": lzma.MF_HC4}
            if len(data) > _EXTREME_MAX
            else {"preset": 9 | lzma.PRESET_EXTREME}
        )
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[options])


def _unlz(data: bytes) -> tuple[bytes, bytes]:
    """One LZMA2 stream at the start of ``data``: (its content, the bytes after it)."""
    dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": _DICT}])
    out = dec.decompress(data)
    if not dec.eof:
        raise ValueError("an LZMA stream is cut short")
    return out, dec.unused_data


def _whole(decoded: tuple[bytes, bytes]) -> bytes:
    if decoded[1]:
        raise ValueError(f"{len(decoded[1])} stray bytes after an LZMA stream")
    return decoded[0]


# Codecs: encode(buf, w) -> payload, or None where the codec does not apply;
# decode(payload, w, n) -> the n bytes.
def _enc_shuffle(buf: bytes, w: int) -> bytes | None:
    if w == 1:
        return None
    planes = np.frombuffer(buf, np.uint8).reshape(-1, w).T  # (w, elements)
    # Low mantissa bytes of trained floats are noise: a fast trial on a sample sends them
    # raw, which also spares LZMA (~3 MB/s on noise) most of an fp32 tensor.
    sample = np.frombuffer(_sample(buf, w), np.uint8).reshape(-1, w).T
    raw = [len(_lz(p.tobytes(), preset=0)) >= 0.98 * p.size for p in sample]
    flags = sum(1 << i for i, r in enumerate(raw) if r)
    coded = _lz(planes[[not r for r in raw]].tobytes()) if not all(raw) else b""
    return struct.pack("<H", flags) + coded + planes[raw].tobytes()


def _dec_shuffle(payload: bytes, w: int, n: int) -> bytes:
    (flags,), rest = struct.unpack_from("<H", payload), payload[2:]
    raw = [bool(flags >> i & 1) for i in range(w)]
    coded, rest = _unlz(rest) if not all(raw) else (b"", rest)
    if len(rest) != sum(raw) * (n // w) or len(coded) + len(rest) != n:
        raise ValueError(f"shuffled planes hold {len(coded) + len(rest)} bytes, expected {n}")
    coded_planes = iter(np.frombuffer(coded, np.uint8).reshape(-1, n // w))
    raw_planes = iter(np.frombuffer(rest, np.uint8).reshape(-1, n // w))
    planes = [next(raw_planes) if r else next(coded_planes) for r in raw]
    return np.stack(planes, axis=1).tobytes()


def _enc_codebook(buf: bytes, w: int) -> bytes | None:
    if w not in _UINT or not buf:
        return None
    a = np.frombuffer(buf, _UINT[w])
    if len(np.unique(a[:4096])) > 256:  # a slice already has too many values: skip the full sort
        return None
    values, index = np.unique(a, return_inverse=True)  # bit patterns: NaNs and -0.0 are values too
    if len(values) > 256:
        return None
    return bytes([len(values) - 1]) + _lz(values.tobytes() + index.astype(np.uint8).tobytes())


def _dec_codebook(payload: bytes, w: int, n: int) -> bytes:
    k = payload[0] + 1
    data = _whole(_unlz(payload[1:]))
    values, index = np.frombuffer(data[: k * w], _UINT[w]), np.frombuffer(data[k * w :], np.uint8)
    if len(values) != k or index.size * w != n or index.max(initial=0) >= k:
        raise ValueError("a codebook does not match its indices")
    return values[index].tobytes()


def _enc_nibbles(buf: bytes, w: int) -> bytes | None:
    if w != 1:
        return None
    b = np.frombuffer(buf, np.uint8)
    return _lz(np.stack([b & 15, b >> 4], axis=1).tobytes())  # (bytes, 2): 4-bit elements in order


def _dec_nibbles(payload: bytes, w: int, n: int) -> bytes:
    s = np.frombuffer(_whole(_unlz(payload)), np.uint8)
    if s.size != 2 * n or s.max(initial=0) > 15:
        raise ValueError("a nibble stream has the wrong length or values")
    return (s[0::2] | s[1::2] << 4).astype(np.uint8).tobytes()


def _enc_sparse(buf: bytes, w: int) -> bytes | None:
    if w not in _UINT or not buf:
        return None
    a = np.frombuffer(buf, _UINT[w])
    nonzero = a != 0  # bitwise: -0.0 is a non-zero element
    if 2 * np.count_nonzero(nonzero) > a.size:
        return None
    codec, payload = _best(a[nonzero].tobytes(), w, codecs=(1, 2, 3, 4))
    return _lz(np.packbits(nonzero).tobytes()) + bytes([codec]) + payload


def _dec_sparse(payload: bytes, w: int, n: int) -> bytes:
    packed, rest = _unlz(payload)
    if len(packed) != -(-n // w // 8) or not rest or rest[0] == 5:
        raise ValueError("a sparse tensor's mask or inner codec is malformed")
    nonzero = np.unpackbits(np.frombuffer(packed, np.uint8), count=n // w).astype(bool)
    out = np.zeros(n // w, _UINT[w])
    out[nonzero] = np.frombuffer(_decode(rest[0], rest[1:], w, int(nonzero.sum()) * w), _UINT[w])
    return out.tobytes()


_CODECS = [  # the index is the codec's number in the file
    ("raw", lambda buf, w: buf, lambda p, w, n: p),
    ("lzma", lambda buf, w: _lz(buf), lambda p, w, n: _whole(_unlz(p))),
    ("shuffle", _enc_shuffle, _dec_shuffle),
    ("codebook", _enc_codebook, _dec_codebook),
    ("nibbles", _enc_nibbles, _dec_nibbles),
    ("sparse", _enc_sparse, _dec_sparse),
]


def _sample(buf: bytes, w: int) -> bytes:
    """At most _SAMPLE bytes of whole elements, in four slices spread over ``buf``: the start
    of a tensor (an embedding's special tokens, a pruned layer's first rows) is rarely typical."""
    if len(buf) <= _SAMPLE:
        return buf
    part, starts = _SAMPLE // 4 // w * w, [i * (len(buf) // 4) // w * w for i in range(4)]
    return b"".join(buf[s : s + part] for s in starts)


def _encodings(buf: bytes, w: int, codecs: tuple[int, ...]) -> dict[int, bytes]:
    found = {0: buf}
    for codec in codecs:
        payload = _CODECS[codec][1](buf, w)
        if payload is not None:
            found[codec] = payload
    return found


def _best(buf: bytes, w: int, codecs: tuple[int, ...] = (1, 2, 3, 4, 5)) -> tuple[int, bytes]:
    """(codec, payload) of the smallest encoding of ``buf``; raw unless a codec beats it."""
    if len(buf) <= _SAMPLE:
        return min(_encodings(buf, w, codecs).items(), key=lambda item: len(item[1]))  # ties: raw
    # Big: rank the codecs on a sample, then run only the best one that applies to all of
    # ``buf`` (a sample's 200 values can be 300 in the whole tensor).
    trial = _encodings(_sample(buf, w), w, codecs)
    for codec in sorted(trial, key=lambda c: len(trial[c])):
        payload = _CODECS[codec][1](buf, w)
        if payload is not None:  # raw, in every trial, always applies
            break
    return (codec, payload) if len(payload) < len(buf) else (0, buf)


def _decode(codec: int, payload: bytes, w: int, n: int) -> bytes:
    if codec >= len(_CODECS) or (_CODECS[codec][0] in ("codebook", "sparse") and w not in _UINT):
        raise ValueError(f"codec {codec} does not apply to a tensor of {w}-byte elements")
    out = _CODECS[codec][2](payload, w, n)
    if len(out) != n:
        raise ValueError(f"a {_CODECS[codec][0]} tensor decodes to {len(out)} bytes, expected {n}")
    return out


def _width(data_type: int, n: int) -> int:
    try:
        w = onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize  # 1 for 4-bit types: bytes
    except (KeyError, ValueError, TypeError):
        return 1
    return w if n % w == 0 else 1


def _stored(model) -> list:
    return [t for t in model.graph.initializer if t.data_type != onnx.TensorProto.STRING]


def _raw_bytes(t) -> bytes:
    """``t``'s data in ONNX's raw layout (4-bit types packed two a byte, as onnx stores them)."""
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(t)).raw_data


def pack(onnx_path: str | Path, dst: str | Path) -> PackStats:
    """Write the ONNX model at ``onnx_path`` (external data included) to ``dst``, losslessly packed.

    >>> stats = pack("model.onnx", "model.packed")      # doctest: +SKIP
    >>> stats.bytes, stats.codecs                        # doctest: +SKIP
    (20480, {'shuffle': 6, 'raw': 2})
    """
    onnx_path, dst = Path(onnx_path), Path(dst)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises several types for missing, corrupt and half-external files
        raise PressoError(f"Cannot pack '{onnx_path}': it is not a readable ONNX model ({exc}).") from exc
    tensors = _stored(model)
    raws = [_raw_bytes(t) for t in tensors]
    for t in tensors:
        for field in _DATA_FIELDS:
            t.ClearField(field)
    graph = _lz(model.SerializeToString())
    from presso.runtime.session import default_threads

    # lzma and numpy release the GIL: threads spread the tensors over the cores.
    with ThreadPoolExecutor(max_workers=min(default_threads(), 8)) as pool:
        jobs = {
            i: pool.submit(_best, raws[i], _width(tensors[i].data_type, len(raws[i])))
            for i in sorted(range(len(raws)), key=lambda i: -len(raws[i]))
        }  # biggest first
        coded = [jobs[i].result() for i in range(len(raws))]
    rows = [
        bytes([codec]) + _varint(len(raw)) + _varint(len(p))
        for (codec, p), raw in zip(coded, raws, strict=True)
    ]
    table = b"".join(rows)
    body = table + graph + b"".join(p for _, p in coded)
    blob = MAGIC + _HEAD.pack(len(tensors), len(graph), zlib.crc32(body)) + body
    write_bytes_atomic(dst, blob)  # never leave a half-written file under the final name
    stats = [
        {
            "name": t.name,
            "dtype": onnx.TensorProto.DataType.Name(t.data_type),
            "elements": int(np.prod(t.dims, dtype=np.int64)),
            "raw_bytes": len(raw),
            "packed_bytes": len(row) + len(p),
            "codec": _CODECS[codec][0],
        }
        for t, raw, row, (codec, p) in zip(tensors, raws, rows, coded, strict=True)
    ]
    return PackStats(
        bytes=len(blob),
        weights_bytes=sum(r["packed_bytes"] for r in stats),
        graph_bytes=len(graph),
        codecs=dict(Counter(r["codec"] for r in stats)),
        tensors=stats,
    )


def _read(blob: bytes):
    count, graph_len, crc = _HEAD.unpack_from(blob, len(MAGIC))
    start = pos = len(MAGIC) + _HEAD.size
    if start + 3 * count > len(blob):
        raise ValueError(f"its table of {count} tensors runs past the end of the file")
    rows = []
    for _ in range(count):
        n, after = _read_varint(blob, pos + 1)
        m, after = _read_varint(blob, after)
        rows.append((blob[pos], n, m))
        pos = after
    pos += graph_len
    if pos + sum(r[2] for r in rows) != len(blob):
        raise ValueError(
            f"the file is {len(blob)} bytes but its table describes {pos + sum(r[2] for r in rows)}"
        )
    if zlib.crc32(memoryview(blob)[start:]) != crc:  # raw LZMA2 streams have no checksum of their own
        raise ValueError("its checksum does not match its content")
    model = onnx.ModelProto.FromString(_whole(_unlz(blob[pos - graph_len : pos])))
    tensors = _stored(model)
    if len(tensors) != count:
        raise ValueError(f"the graph has {len(tensors)} tensors to fill, the table {count}")
    for t, (codec, n, m) in zip(tensors, rows, strict=True):
        t.raw_data = _decode(codec, blob[pos : pos + m], _width(t.data_type, n), n)
        pos += m
    return model


def unpack(path: str | Path) -> onnx.ModelProto:
    """The model packed in ``path``, its tensors' data inline in ``raw_data``.

    >>> model = unpack("model.packed")                   # doctest: +SKIP
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise PressoError(f"Cannot read packed model '{path}' ({exc.strerror}).") from exc
    if not blob.startswith(MAGIC[:-1]):
        raise PressoError(
            f"'{path}' is not a presso packed model (it does not start with {MAGIC[:-1]!r}); "
            "pass a file written by presso.export.packed.pack, or load the .onnx file."
        )
    if blob[len(MAGIC) - 1 : len(MAGIC)] != MAGIC[-1:]:
        raise PressoError(
            f"'{path}' is a packed model of format version {blob[len(MAGIC) - 1]}; "
            f"this presso reads version {MAGIC[-1]}. Upgrade presso."
        )
    try:
        return _read(blob)
    except (ValueError, IndexError, struct.error, lzma.LZMAError, DecodeError) as exc:
        raise PressoError(
            f"'{path}' is a corrupt or truncated packed model ({exc}); pack the .onnx file again."
        ) from exc


def unpack_to(path: str | Path, onnx_dst: str | Path) -> Path:
    """Write the model packed in ``path`` as a runnable ONNX file (under protobuf's 2 GB limit)."""
    onnx_dst = Path(onnx_dst)
    save_onnx(unpack(path), onnx_dst)
    return onnx_dst


def is_packed(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with the packed format's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC) - 1) == MAGIC[:-1]
    except OSError:
        return False
