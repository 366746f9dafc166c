"""The packed storage file: lossless round trips, real compression, clear errors on bad files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import presso
from presso.errors import PressoError
from presso.export.packed import MAGIC, is_packed, pack, unpack, unpack_to
from presso.runtime.session import SESSION_CONFIG_KEY, make_session, mark_session_config

_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _mlp(prune: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            if prune:  # magnitude pruning: the smallest |w| set to exactly 0
                cut = layer.weight.abs().flatten().kthvalue(int(prune * layer.weight.numel())).values
                layer.weight[layer.weight.abs() <= cut] = 0.0
    return model


def _export(model: nn.Module, path, shape=(1, 12)):
    torch.onnx.export(
        model,
        (torch.zeros(*shape),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}},
    )
    return path


def _qdq_int8(path):
    """A hand-written int8 QDQ MatMul, opset 21, typed-field initializers and session metadata."""
    rng = np.random.default_rng(0)
    w = np.clip(np.round(rng.normal(scale=30, size=(12, 256))), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        helper.make_tensor("w_scale", TensorProto.FLOAT, [], [0.02]),  # typed: float_data
        helper.make_tensor("w_zp", TensorProto.INT8, [], [0]),  # typed: int32_data
        helper.make_tensor("bias", TensorProto.FLOAT, [256], rng.normal(size=256).tolist()),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    mark_session_config(model, {"session.intra_op.allow_spinning": "0"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from presso.techniques.quantization.clustering import write_kmeans
    from presso.techniques.quantization.config import KMeansConfig

    d = tmp_path_factory.mktemp("packed-models")
    out = {
        "mlp": _export(_mlp(), d / "mlp.onnx"),
        "pruned90": _export(_mlp(0.9), d / "pruned.onnx"),
        "int8_qdq": _qdq_int8(d / "qdq.onnx"),
    }
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10)).eval()
    with torch.no_grad():  # trained weights are peaked (Laplace-like), not the uniform of a fresh init
        for p in cnn.parameters():
            p.copy_(torch.distributions.Laplace(0.0, 0.05).sample(p.shape))
    src = _export(cnn, d / "cnn.onnx", shape=(1, 1, 8, 8))
    # presso's k-means: codebook + Gather, UINT4 indices, opset 21, session settings in metadata_props
    write_kmeans(src, d / "kmeans.onnx", KMeansConfig(bits=4), precision={})
    write_kmeans(out["pruned90"], d / "pruned_kmeans.onnx", KMeansConfig(bits=4), precision={})
    out["kmeans_uint4"], out["pruned_kmeans"] = d / "kmeans.onnx", d / "pruned_kmeans.onnx"
    ext = onnx.load(str(out["mlp"]))
    onnx.save(ext, str(d / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    out["external_data"] = d / "ext.onnx"
    return out


def _normalised(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as unpack returns it: every tensor's data in raw_data."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for t in model.graph.initializer:
        if t.data_type != TensorProto.STRING and not t.HasField("raw_data"):
            raw = numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
            for field in _DATA_FIELDS:
                t.ClearField(field)
            t.raw_data = raw
    return model


def _assert_same_tensors(got: onnx.ModelProto, want: onnx.ModelProto):
    assert len(got.graph.initializer) == len(want.graph.initializer)
    for a, b in zip(got.graph.initializer, want.graph.initializer, strict=True):
        assert (a.name, list(a.dims), a.data_type) == (b.name, list(b.dims), b.data_type)
        x, y = numpy_helper.to_array(a), numpy_helper.to_array(b)
        assert x.shape == y.shape
        assert x.tolist() == y.tolist() if x.dtype == object else x.tobytes() == y.tobytes()  # NaN-safe


@pytest.mark.parametrize(
    "name", ["mlp", "pruned90", "int8_qdq", "kmeans_uint4", "pruned_kmeans", "external_data"]
)
def test_round_trip_is_exact_and_runs_the_same(models, tmp_path, name):
    src = models[name]
    stats = pack(src, tmp_path / "m.packed")
    assert is_packed(tmp_path / "m.packed") and not is_packed(src)
    assert stats.bytes == (tmp_path / "m.packed").stat().st_size
    assert stats.bytes == len(MAGIC) + 16 + stats.graph_bytes + stats.weights_bytes
    want = onnx.load(str(src))
    got = unpack(tmp_path / "m.packed")
    onnx.checker.check_model(got)
    _assert_same_tensors(got, want)
    assert got.SerializeToString() == _normalised(want).SerializeToString()
    assert list(got.metadata_props) == list(want.metadata_props)
    if name in ("int8_qdq", "kmeans_uint4", "pruned_kmeans"):  # ORT session settings and opset 21 survive
        assert SESSION_CONFIG_KEY in {p.key for p in got.metadata_props}
        assert [(o.domain, o.version) for o in got.opset_import if o.domain == ""] == [("", 21)]
    assert sum(stats.codecs.values()) == len(stats.tensors) == len(want.graph.initializer)
    assert all(
        t.external_data == [] and t.data_location == TensorProto.DEFAULT for t in got.graph.initializer
    )
    on_disk = sum(
        f.stat().st_size for f in src.parent.glob(f"{src.stem}.*") if f.suffix in (".onnx", ".data")
    )
    assert stats.bytes < 0.95 * on_disk
    x = (
        np.random.default_rng(1)
        .normal(size=(7, 1, 8, 8) if name == "kmeans_uint4" else (7, 12))
        .astype(np.float32)
    )
    unpack_to(tmp_path / "m.packed", tmp_path / "back.onnx")
    a = make_session(src, threads=1).run(None, {"x": x})[0]
    b = make_session(tmp_path / "back.onnx", threads=1).run(None, {"x": x})[0]
    assert np.array_equal(a, b)


def _one_tensor_model(path, *tensors: TensorProto):
    graph = helper.make_graph(
        [helper.make_node("Identity", [tensors[0].name], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", tensors[0].data_type, list(tensors[0].dims))],
        list(tensors),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_odd_dtypes_and_bit_patterns_survive(tmp_path):
    special = np.array([0.0, -0.0, np.nan, -np.inf, 1e-45], np.float32)
    special.view(np.uint32)[2] = 0x7FC00123  # a NaN with a payload
    tensors = [
        numpy_helper.from_array(np.tile(special, 60), "specials"),  # codebook-able, with -0.0 and NaN
        helper.make_tensor("uint4_odd", TensorProto.UINT4, [7], [1, 2, 3, 15, 0, 9, 4]),  # typed, odd count
        helper.make_tensor("int4", TensorProto.INT4, [4], bytes([0x78, 0x0F]), raw=True),  # packed raw
        helper.make_tensor("bf16", TensorProto.BFLOAT16, [3], [1.5, -2.0, 3.0]),
        helper.make_tensor("c64", TensorProto.COMPLEX64, [2], [1 + 2j, -3j]),
        helper.make_tensor("u64", TensorProto.UINT64, [2], [2**64 - 1, 0]),
        helper.make_tensor("strings", TensorProto.STRING, [2], [b"a", b"bc"]),  # stays in the graph
        numpy_helper.from_array(np.zeros((0, 4), np.float32), "empty"),
        numpy_helper.from_array(np.array(3.0, np.float64), "scalar"),
    ]
    src = _one_tensor_model(tmp_path / "odd.onnx", *tensors)
    stats = pack(src, tmp_path / "odd.packed")
    got, want = unpack(tmp_path / "odd.packed"), onnx.load(str(src))
    onnx.checker.check_model(got)
    _assert_same_tensors(got, want)
    assert got.SerializeToString() == _normalised(want).SerializeToString()
    assert "strings" not in [t["name"] for t in stats.tensors] and len(stats.tensors) == 8


def test_sparse_clustered_tensor_packs_near_its_entropy(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=16).astype(np.float32)
    w = np.where(rng.random(10_000) < 0.9, 0.0, values[rng.integers(0, 16, 10_000)]).astype(np.float32)
    _, counts = np.unique(w, return_counts=True)
    p = counts / w.size
    # Order-0 Shannon bound of the symbol stream, plus the 17 distinct values stored raw.
    bound = w.size * float(-(p * np.log2(p)).sum()) / 8 + 4 * len(counts)
    stats = pack(
        _one_tensor_model(tmp_path / "s.onnx", numpy_helper.from_array(w, "w")), tmp_path / "s.packed"
    )
    row = stats.tensors[0]
    assert (row["elements"], row["raw_bytes"], row["dtype"]) == (10_000, 40_000, "FLOAT")
    assert row["codec"] in ("sparse", "codebook")
    assert row["packed_bytes"] < 1.3 * bound + 64, (row, bound)  # measured: 1486 bytes, bound 1170
    assert np.array_equal(numpy_helper.to_array(unpack(tmp_path / "s.packed").graph.initializer[0]), w)


def test_random_floats_cost_no_more_than_their_raw_size(tmp_path):
    w = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    stats = pack(
        _one_tensor_model(tmp_path / "r.onnx", numpy_helper.from_array(w, "w")), tmp_path / "r.packed"
    )
    row = stats.tensors[0]
    assert row["codec"] in ("raw", "shuffle") and stats.codecs == {row["codec"]: 1}
    assert row["packed_bytes"] <= row["raw_bytes"] + 32
    # Gaussian fp32: the exponent byte carries ~3 bits, so shuffle wins about 13% (measured 34,153 bytes).
    assert row["codec"] == "shuffle" and row["packed_bytes"] < 0.9 * row["raw_bytes"]


def test_pruned_and_clustered_models_pack_much_smaller_than_dense(models, tmp_path):
    dense = pack(models["mlp"], tmp_path / "d.packed")
    pruned = pack(models["pruned90"], tmp_path / "p.packed")
    assert pruned.bytes < 0.3 * dense.bytes  # measured 2,289 vs 10,759 bytes
    assert {r["codec"] for r in pruned.tensors if r["elements"] >= 768} == {"sparse"}
    # Deep Compression's three stages: prune, cluster (UINT4 indices), entropy-code.
    deep = pack(models["pruned_kmeans"], tmp_path / "pk.packed")
    assert deep.bytes < 0.5 * models["pruned_kmeans"].stat().st_size  # measured 1,689 vs 3,844
    assert deep.bytes < 0.15 * models["mlp"].stat().st_size  # vs the fp32 ONNX file: 12,677


def test_uint4_indices_pack_near_their_entropy(models, tmp_path):
    stats = pack(models["kmeans_uint4"], tmp_path / "k.packed")
    (row,) = [r for r in stats.tensors if r["dtype"] == "UINT4" and r["elements"] == 5120]
    index = next(t for t in onnx.load(str(models["kmeans_uint4"])).graph.initializer if t.name == row["name"])
    b = np.frombuffer(index.raw_data, np.uint8)
    symbols = np.stack([b & 15, b >> 4], axis=1).ravel()[
        : row["elements"]
    ]  # onnx packs two a byte, low first
    p = np.bincount(symbols, minlength=16) / symbols.size
    bound = symbols.size * float(-(p[p > 0] * np.log2(p[p > 0])).sum()) / 8  # measured 3.46 bits a symbol
    assert row["codec"] in ("nibbles", "codebook", "lzma")
    assert row["packed_bytes"] < min(1.1 * bound + 64, 0.95 * row["raw_bytes"]), (row, bound)


def test_bad_files_raise_one_clear_error(models, tmp_path):
    good = tmp_path / "good.packed"
    pack(models["mlp"], good)
    blob = good.read_bytes()
    cases = {
        "not-packed.packed": (models["mlp"].read_bytes(), "not a presso packed model"),
        "truncated.packed": (blob[:-100], "corrupt or truncated.*the file is"),
        "short.packed": (blob[: len(MAGIC) + 3], "corrupt or truncated"),
        "flipped.packed": (blob[:-50] + bytes([blob[-50] ^ 1]) + blob[-49:], "checksum"),
        "newer.packed": (MAGIC[:-1] + b"\x07" + blob[len(MAGIC) :], "format version 7"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PressoError, match=message) as err:
            unpack(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PressoError, match="missing.packed"):
        unpack(tmp_path / "missing.packed")
    with pytest.raises(PressoError, match="Cannot pack"):
        pack(tmp_path / "truncated.packed", tmp_path / "x.packed")


def test_load_runs_a_packed_file_and_a_packed_only_artifact(models, tmp_path):
    pack(models["mlp"], tmp_path / "m.packed")
    (tmp_path / "artifact").mkdir()
    pack(models["mlp"], tmp_path / "artifact" / "model.packed")
    x = np.random.default_rng(2).normal(size=(9, 12)).astype(np.float32)
    want = make_session(models["mlp"], threads=1).run(None, {"x": x})[0]
    for path in (tmp_path / "m.packed", tmp_path / "artifact"):
        predictor = presso.load(path, threads=1)
        assert predictor.model_path.suffix == ".packed" and predictor.input_names == ["x"]
        assert np.array_equal(predictor.predict(x), want)
    assert presso.unpack(tmp_path / "m.packed").graph.node[0].op_type == "Gemm"
