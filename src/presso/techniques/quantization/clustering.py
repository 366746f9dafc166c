"""k-means weight clustering ("vector quantization", as in Deep Compression).

Each layer's weights are replaced by the nearest of 2^bits shared values (centroids,
found by 1-D k-means with linear initialisation, which Deep Compression found best for
keeping the rare large weights). The ONNX file stores the codebook and one index per
weight in a packed INT4 initializer (bits <= 4; UINT8 above), and rebuilds the weight at
run time: DequantizeLinear(index) -> Cast(int64) -> Gather(codebook).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from presso.runtime.onnx_files import save_onnx
from presso.techniques.base import StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.quantization.config import KMeansConfig
from presso.techniques.quantization.packing import pack_int4
from presso.techniques.quantization.search import KMEANS


def cluster(
    w: np.ndarray, bits: int, seed: int = 0, keep_zeros: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(codebook (2^bits,), indices shaped like ``w``) from 1-D k-means of ``w``'s values.

    ``keep_zeros``: pruned weights stay exactly zero (one codebook entry is 0.0) and the
    other 2^bits - 1 values are fitted to the surviving weights only, as in Deep
    Compression; otherwise the zeros would pull centroids toward 0 and the pruned
    connections would come back as small non-zero weights.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    >>> codebook, idx = cluster(w, bits=2)
    >>> codebook.shape, idx.shape, int(idx.max()) <= 3
    ((4,), (64, 32), True)
    """
    values = w.reshape(-1).astype(np.float64)  # (n,)
    zero = values == 0
    if keep_zeros and _worth_a_zero_entry(zero, bits):
        book, kept = _kmeans_1d(values[~zero], 2**bits - 1, seed)
        idx = np.zeros(values.shape, np.int64)
        idx[~zero] = kept + 1  # index 0 is the exact zero
        return np.concatenate([[0.0], book]).astype(np.float32), idx.reshape(w.shape).astype(np.uint8)
    codebook, idx = _kmeans_1d(values, 2**bits, seed)
    return codebook.astype(np.float32), idx.reshape(w.shape).astype(np.uint8)


def _worth_a_zero_entry(zero: np.ndarray, bits: int) -> bool:
    """A codebook entry for exact zeros pays when zeros are at least as common as an average
    cluster (1 / 2^bits of the weights): a few stray zeros in a dense layer must not take one
    of the few values the other weights share."""
    return bool(zero.any() and not zero.all() and zero.mean() >= 1 / 2**bits)


def _kmeans_1d(values: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted codebook of at most k values, index per value): linear init, run to convergence."""
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(values)))
    if k == 0:
        return np.zeros(0), np.zeros(len(values), np.int64)
    rng = np.random.default_rng(seed)
    # scikit-learn fits the codebook on at most _FIT_SAMPLE values (an embedding table has
    # millions); exact 1-D Lloyd steps on all values then refine it to a fixed point.
    sample = values if len(values) <= _FIT_SAMPLE else rng.choice(values, _FIT_SAMPLE, replace=False)
    init = np.linspace(sample.min(), sample.max(), k).reshape(-1, 1)  # linear init
    km = KMeans(
        n_clusters=k,
        init=init,
        n_init=1,
        max_iter=300,
        tol=0.0,  # run to convergence
        random_state=seed,
    ).fit(sample.reshape(-1, 1))
    codebook = np.sort(km.cluster_centers_[:, 0])
    idx = _nearest(values, codebook)
    for _ in range(_MAX_REFINE):
        counts = np.bincount(idx, minlength=k)
        sums = np.bincount(idx, weights=values, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), codebook)  # (k,)
        moved = np.max(np.abs(updated - codebook)) / max(float(np.ptp(values)), 1e-12)
        codebook = updated
        new_idx = _nearest(values, codebook)
        if np.array_equal(new_idx, idx) or moved < 1e-7:
            idx = new_idx
            break
        idx = new_idx
    return codebook, idx


def cluster_rows(
    w2: np.ndarray, bits: int, iters: int = 50, keep_zeros: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row codebooks: ((rows, 2^bits) centroids, indices shaped like ``w2``).

    One 1-D k-means per row (output channel), vectorised over rows: linear initialisation
    over the row's range, then Lloyd steps (an empty cluster keeps its centroid).
    ``keep_zeros``: as in :func:`cluster`, entry 0 of every row's book is an exact zero
    for the zero weights, the others are fitted to the non-zero ones.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    >>> books, idx = cluster_rows(w, bits=2)
    >>> books.shape, idx.shape
    ((8, 4), (8, 64))
    """
    v = w2.astype(np.float64)  # (C, n)
    zero = v == 0
    if keep_zeros and _worth_a_zero_entry(zero, bits):
        lo, hi = np.where(zero, np.inf, v).min(1), np.where(zero, -np.inf, v).max(1)
        lo, hi = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)  # all-zero rows
        books, idx = _lloyd_rows(v, ~zero, np.linspace(lo, hi, 2**bits - 1, axis=1), iters)
        books = np.concatenate([np.zeros((len(v), 1)), books], axis=1)
        return books.astype(np.float32), np.where(zero, 0, idx + 1).astype(np.uint8)
    k = 2**bits
    books, idx = _lloyd_rows(v, np.ones_like(zero), np.linspace(v.min(1), v.max(1), k, axis=1), iters)
    return books.astype(np.float32), idx.astype(np.uint8)


def _lloyd_rows(v: np.ndarray, counted: np.ndarray, books: np.ndarray, iters: int):
    """Lloyd steps of one 1-D k-means per row of ``v``, fitted to the ``counted`` entries."""
    k = books.shape[1]
    idx = np.abs(v[:, :, None] - books[:, None, :]).argmin(-1)  # (C, n)
    for _ in range(iters):
        onehot = (idx[:, :, None] == np.arange(k)) & counted[:, :, None]  # (C, n, k)
        counts = onehot.sum(1)
        sums = (onehot * v[:, :, None]).sum(1)
        books = np.where(counts > 0, sums / np.maximum(counts, 1), books)
        new_idx = np.abs(v[:, :, None] - books[:, None, :]).argmin(-1)
        if np.array_equal(new_idx, idx):
            break
        idx = new_idx
    return books, idx


# Axis of the output channel in each op's stored weight layout (MatMul stores (K, N)).
def _channel_axis(model, node_name: str, op: str) -> int | None:
    if op == "Conv":
        return 0
    if op == "Gather":
        return None  # embedding rows are tokens: one codebook per table
    node = next(n for n in model.graph.node if n.name == node_name)
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
    return 0 if op == "Gemm" and trans_b else 1


_FIT_SAMPLE = 200_000
_MAX_REFINE = 300  # Lloyd steps; 1-D Lloyd creeps, so also stop once centroids stop moving


def _nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest value of a sorted ``codebook`` for each of ``values``."""
    order = np.argsort(codebook, kind="stable")
    sorted_book = codebook[order]
    midpoints = (sorted_book[1:] + sorted_book[:-1]) / 2  # decision boundaries
    return order[np.searchsorted(midpoints, values)]


def write_kmeans(
    src: Path, dst: Path, cfg: KMeansConfig, precision: dict[str, str] | None = None
) -> list[dict]:
    """Rewrite ``src`` with clustered weights into ``dst``; returns one row per layer.

    ``precision`` overrides single nodes: ``"fp32"`` leaves the weight float, ``"N-bit"``
    clusters it to 2^N values instead of the stage's 2^bits (mixed precision)."""
    import onnx

    from presso.runtime.session import mark_session_config
    from presso.techniques.quantization.weight_only import (
        INT4_OPSET,
        WEIGHT_ONLY_SESSION,
        float_weight_plans,
        to_opset,
    )

    precision = precision or {}
    model = to_opset(onnx.load(str(src)), INT4_OPSET)
    new_nodes, rows = [], []
    keep = {n for n, p in precision.items() if p == "fp32"}
    for node_name, op, weight in float_weight_plans(model, keep):
        bits = int(precision[node_name].split("-")[0]) if node_name in precision else cfg.bits
        row, nodes = _store_clustered(model, node_name, op, weight, bits, cfg)
        rows.append(row)
        new_nodes += nodes
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)  # rebuild weights before any consumer
    mark_session_config(model, WEIGHT_ONLY_SESSION)  # fold the rebuild once, at load
    save_onnx(model, dst)
    return rows


def _store_clustered(model, node_name: str, op: str, weight: str, bits: int, cfg: KMeansConfig):
    """Replace ``weight``'s initializer in ``model`` by 2^bits clustered values: (its
    per-layer row, the nodes that rebuild the weight at run time)."""
    from onnx import TensorProto, helper, numpy_helper

    init = next(i for i in model.graph.initializer if i.name == weight)
    w = numpy_helper.to_array(init)
    axis = _channel_axis(model, node_name, op) if cfg.per_channel else None
    if axis is None:
        codebook, idx = cluster(w, bits, cfg.seed, keep_zeros=cfg.keep_zeros)
        rebuilt, offsets = codebook[idx], None
    else:  # one codebook per output channel; indices offset into the flattened books
        moved = np.moveaxis(w, axis, 0)
        books, idx2 = cluster_rows(moved.reshape(moved.shape[0], -1), bits, keep_zeros=cfg.keep_zeros)
        idx = np.moveaxis(idx2.reshape(moved.shape), 0, axis)
        codebook = books.reshape(-1)
        shape = [1] * w.ndim
        shape[axis] = -1
        offsets = (np.arange(books.shape[0], dtype=np.int64) * books.shape[1]).reshape(shape)
        rebuilt = codebook[idx + offsets]
    model.graph.initializer.remove(init)
    i_name, c_name, one = f"{weight}_index", f"{weight}_codebook", f"{weight}_index_scale"
    if bits <= 4:  # packed two indices a byte
        packed = pack_int4(idx.reshape(-1), signed=False)
        index = helper.make_tensor(i_name, TensorProto.UINT4, list(idx.shape), packed.tobytes(), raw=True)
    else:
        index = numpy_helper.from_array(idx, i_name)
    model.graph.initializer.extend(
        [
            index,
            numpy_helper.from_array(codebook, c_name),
            numpy_helper.from_array(np.array(1.0, np.float32), one),
        ]
    )
    gather_in = f"{weight}_index_i"
    nodes = [
        helper.make_node("DequantizeLinear", [i_name, one], [f"{weight}_index_f"], name=f"{node_name}/index"),
        helper.make_node(
            "Cast", [f"{weight}_index_f"], [gather_in], to=TensorProto.INT64, name=f"{node_name}/index_int"
        ),
    ]
    if offsets is not None:
        o_name = f"{weight}_codebook_offsets"
        model.graph.initializer.append(numpy_helper.from_array(offsets, o_name))
        nodes.append(
            helper.make_node(
                "Add", [gather_in, o_name], [f"{weight}_index_g"], name=f"{node_name}/codebook_offset"
            )
        )
        gather_in = f"{weight}_index_g"
    nodes.append(
        helper.make_node("Gather", [c_name, gather_in], [weight], axis=0, name=f"{node_name}/codebook")
    )
    err = float(np.linalg.norm(rebuilt - w) / max(float(np.linalg.norm(w)), 1e-12))
    row = {
        "node": node_name,
        "op": op,
        "precision": f"kmeans {2**bits} values",
        "granularity": "per channel" if offsets is not None else "per layer",
        "parameters": int(w.size),
        "relative_error": round(err, 6),
    }
    return row, nodes


def safer_settings(bits: int) -> list[str]:
    """The settings a sensitive layer falls back to, in order: more values (16 in the same
    4-bit container, then 256: 5-8 bits all take a byte per index), then fp32."""
    return [f"{b}-bit" for b in (4, 8) if b > bits] + ["fp32"]


@technique(
    "kmeans",
    config=KMeansConfig,
    domain="onnx",
    summary=("k-means weight clustering: a codebook of 2^bits values per layer plus packed indices"),
    search=KMEANS,
)
def cluster_weights(onnx_path: Path, cfg: KMeansConfig, ctx: StageContext) -> StageResult:
    from presso.techniques.quantization.weight_only import accuracy_aware

    return accuracy_aware(
        onnx_path, cfg, ctx, "kmeans", write_kmeans, fallbacks=tuple(safer_settings(cfg.bits))
    )
