"""k-means clustering of pruned weights (Deep Compression): keep_zeros keeps every pruned weight
exactly zero, fits the other 2^bits - 1 values to the survivors, and survives the ONNX rebuild."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from sklearn.cluster import KMeans
from torch import nn

from presso.techniques.quantization.clustering import cluster, write_kmeans
from presso.techniques.quantization.config import KMeansConfig


def _pruned(shape=(128, 96), fraction=0.9, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) < fraction] = 0.0
    return w


@pytest.fixture(scope="module")
def pruned():
    w = _pruned()
    assert 0.89 < (w == 0).mean() < 0.91 and np.count_nonzero(w) == 1186
    return w


def test_keep_zeros_is_the_default_of_the_kmeans_technique():
    assert KMeansConfig().keep_zeros is True


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_keep_zeros_rebuilds_pruned_weights_exactly_zero(pruned, bits):
    codebook, idx = cluster(pruned, bits, keep_zeros=True)
    assert codebook.dtype == np.float32 and idx.shape == pruned.shape
    assert len(codebook) == min(2**bits, 1 + 1186) and codebook[0] == 0.0
    assert np.all(codebook[1:] != 0) and np.all(np.diff(codebook[1:]) > 0)  # sorted survivors' values
    zero = pruned == 0
    assert np.all(idx[zero] == 0)  # every pruned weight -> the exact zero entry
    assert np.all(idx[~zero] >= 1)  # no surviving weight is pruned by clustering
    rebuilt = codebook[idx]
    assert np.array_equal(rebuilt == 0, zero)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_survivors_go_to_their_nearest_nonzero_centroid_at_a_lloyd_fixed_point(pruned, bits):
    codebook, idx = cluster(pruned, bits, keep_zeros=True)
    survivors = pruned[pruned != 0]
    got = idx[pruned != 0].astype(np.int64)
    # nearest among the non-zero entries, even for survivors closer to 0.0 than to any centroid
    assert np.array_equal(got, 1 + np.abs(survivors[:, None] - codebook[None, 1:]).argmin(1))
    for k in range(1, len(codebook)):
        members = survivors[got == k].astype(np.float64)
        np.testing.assert_allclose(codebook[k], members.mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_survivors_error_equals_sklearn_kmeans_on_the_survivors_alone(pruned, bits):
    codebook, idx = cluster(pruned, bits, keep_zeros=True)
    survivors = pruned[pruned != 0].astype(np.float64)  # (1186,)
    sse = float(((codebook[idx][pruned != 0] - survivors) ** 2).sum())
    k = 2**bits - 1
    # the documented algorithm: 1-D k-means with linear initialisation over the survivors' range
    init = np.linspace(survivors.min(), survivors.max(), k).reshape(-1, 1)
    reference = KMeans(n_clusters=k, init=init, n_init=1, max_iter=300, tol=0.0).fit(survivors.reshape(-1, 1))
    assert sse == pytest.approx(reference.inertia_, rel=1e-6)


@pytest.mark.parametrize("bits", [2, 3])
def test_survivors_error_within_one_percent_of_best_of_ten_kmeans_plus_plus(pruned, bits):
    codebook, idx = cluster(pruned, bits, keep_zeros=True)
    survivors = pruned[pruned != 0].astype(np.float64)
    sse = float(((codebook[idx][pruned != 0] - survivors) ** 2).sum())
    best = KMeans(n_clusters=2**bits - 1, n_init=10, random_state=0).fit(survivors.reshape(-1, 1)).inertia_
    assert sse <= 1.01 * best


def test_without_keep_zeros_pruned_weights_come_back_nonzero(pruned):
    codebook, idx = cluster(pruned, 4, keep_zeros=False)
    assert len(codebook) == 16 and 0.0 not in codebook
    rebuilt = codebook[idx]
    zero = pruned == 0
    assert np.count_nonzero(rebuilt[zero]) == np.count_nonzero(zero) == 128 * 96 - 1186
    # all of them on the one centroid the zeros pulled toward 0: small, but not 0
    assert len(np.unique(rebuilt[zero])) == 1 and 0 < abs(float(rebuilt[zero][0])) < 1e-3


@pytest.mark.parametrize("bits", [1, 3, 4])
def test_dense_weights_cluster_the_same_either_way(bits):
    w = np.random.default_rng(1).laplace(size=(64, 40)).astype(np.float32)
    assert np.count_nonzero(w) == w.size
    with_zeros, without = cluster(w, bits, keep_zeros=True), cluster(w, bits, keep_zeros=False)
    assert len(with_zeros[0]) == 2**bits
    np.testing.assert_array_equal(with_zeros[0], without[0])
    np.testing.assert_array_equal(with_zeros[1], without[1])


def test_all_zero_and_few_distinct_survivors():
    codebook, idx = cluster(np.zeros((3, 4), np.float32), 4, keep_zeros=True)
    assert codebook.tolist() == [0.0] and not idx.any()
    w = np.zeros((10, 10), np.float32)
    w[0, :3] = [1.0, -2.0, 3.0]
    codebook, idx = cluster(w, 4, keep_zeros=True)
    assert codebook.tolist() == [0.0, -2.0, 1.0, 3.0]  # fewer distinct values than 2^bits - 1
    assert np.array_equal(codebook[idx], w)


# --- end to end: an ONNX model with 90% of its Linear weights pruned -------------------------


def _pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_((torch.rand(layer.weight.shape, generator=g) >= 0.9).float())
    return model


@pytest.fixture(scope="module")
def pruned_onnx(tmp_path_factory):
    model = _pruned_mlp()
    src = tmp_path_factory.mktemp("pruned") / "mlp.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 20),), str(src), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    weights = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(src)).graph.initializer
        if i.name.endswith(".weight")
    }
    assert sorted(weights) == ["0.weight", "2.weight", "4.weight"]
    assert all(0.8 < (w == 0).mean() < 0.97 for w in weights.values())
    return model, src, weights


def _rebuilt_by_onnxruntime(path, names: list[str]) -> list[np.ndarray]:
    """The weights as ONNX Runtime rebuilds them (DequantizeLinear -> Cast -> Gather), read as outputs."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, {"x": np.zeros((1, 20), np.float32)})


@pytest.mark.parametrize("bits, index_type", [(4, onnx.TensorProto.UINT4), (5, onnx.TensorProto.UINT8)])
def test_written_model_keeps_the_zero_pattern_exactly(pruned_onnx, tmp_path, bits, index_type):
    model, src, weights = pruned_onnx
    dst = tmp_path / "k.onnx"
    rows = write_kmeans(src, dst, KMeansConfig(bits=bits))
    assert [(r["node"], r["precision"], r["granularity"]) for r in rows] == [
        (f"/{i}/Gemm", f"kmeans {2**bits} values", "per layer") for i in (0, 2, 4)
    ]
    inits = {i.name: i for i in onnx.load(str(dst)).graph.initializer}
    assert not set(weights) & set(inits)  # the float weights are gone
    names = sorted(weights)
    for name, by_ort in zip(names, _rebuilt_by_onnxruntime(dst, names), strict=True):
        w = weights[name]
        assert inits[f"{name}_index"].data_type == index_type
        codebook = numpy_helper.to_array(inits[f"{name}_codebook"])
        idx = numpy_helper.to_array(inits[f"{name}_index"]).astype(np.int64)
        assert idx.shape == w.shape and len(codebook) <= 2**bits and codebook[0] == 0.0
        by_numpy = codebook[idx]
        assert np.array_equal(by_numpy == 0, w == 0), name
        assert np.array_equal(by_ort, by_numpy), name  # the runtime rebuild is exact
        want_book, want_idx = cluster(w, bits, keep_zeros=True)
        np.testing.assert_array_equal(codebook, want_book)
        np.testing.assert_array_equal(idx, want_idx)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for i in (0, 2, 4):
            book, idx = cluster(reference[i].weight.numpy(), bits, keep_zeros=True)
            reference[i].weight.copy_(torch.from_numpy(book[idx]))
    x = np.random.default_rng(0).normal(size=(6, 20)).astype(np.float32)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-5)


def test_written_model_without_keep_zeros_revives_pruned_weights(pruned_onnx, tmp_path):
    _, src, weights = pruned_onnx
    dst = tmp_path / "k.onnx"
    write_kmeans(src, dst, KMeansConfig(bits=4, keep_zeros=False))
    names = sorted(weights)
    for name, by_ort in zip(names, _rebuilt_by_onnxruntime(dst, names), strict=True):
        zero = weights[name] == 0
        assert np.count_nonzero(by_ort[zero]) == np.count_nonzero(zero), name


def test_per_channel_codebooks_keep_zeros_too(pruned_onnx, tmp_path):
    _, src, weights = pruned_onnx
    dst = tmp_path / "c.onnx"
    write_kmeans(src, dst, KMeansConfig(bits=4, per_channel=True, keep_zeros=True))
    names = sorted(weights)
    for name, by_ort in zip(names, _rebuilt_by_onnxruntime(dst, names), strict=True):
        assert np.array_equal(by_ort == 0, weights[name] == 0), name
