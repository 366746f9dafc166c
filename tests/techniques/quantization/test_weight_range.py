"""Per-layer 7-bit weights for dynamic int8 where ONNX Runtime's products saturate: chosen by
emulating the kernel, spliced from ORT's own reduce-range quantization, and cutting ORT's
real error on a CPU without VNNI (emulated, see emulated_cpu.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from emulated_cpu import run_python_without_vnni
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import presso
from presso.runtime.cpu import CpuFeatures
from presso.techniques.quantization import int8
from presso.techniques.quantization.weight_range import choose_weight_ranges, splice

K, N = 64, 32


def _two_layers(path):
    """x -> MatMul 'centred' (x itself: zero point near 128, large raw values: pairs of
    products saturate) and x -> LayerNorm with one outlier channel -> MatMul 'skewed' (the
    outlier puts the zero point low and the other raw values near it; its own weights are
    small: nothing saturates)."""
    rng = np.random.default_rng(0)
    w_c = rng.standard_t(3, size=(K, N)).astype(np.float32)  # heavy tails: many weights near 127
    w_s = rng.standard_t(3, size=(K, N)).astype(np.float32)
    w_s[5] *= 0.02
    gamma, beta = np.ones(K, np.float32), np.zeros(K, np.float32)
    gamma[5], beta[5] = 30.0, 90.0  # one large positive channel, as after a transformer's LayerNorm
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_c"], ["y_c"], name="centred"),
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", epsilon=1e-5),
            helper.make_node("MatMul", ["h", "w_s"], ["y_s"], name="skewed"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", N]) for n in ("y_c", "y_s")],
        [
            numpy_helper.from_array(w_c, "w_c"),
            numpy_helper.from_array(w_s, "w_s"),
            numpy_helper.from_array(gamma, "gamma"),
            numpy_helper.from_array(beta, "beta"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return [{"x": rng.normal(size=(48, K)).astype(np.float32)} for _ in range(16)]


def _quantize(src, dst, reduce_range: bool):
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return dst


def test_seven_bits_only_where_pairs_of_products_saturate(tmp_path):
    feeds = _two_layers(tmp_path / "m.onnx")
    rows = {r["node"]: r for r in choose_weight_ranges(tmp_path / "m.onnx", feeds, saturating=True)}
    assert rows["centred"]["weights"] == "7-bit" and rows["centred"]["error_ratio_7bit"] < 0.5
    assert rows["skewed"]["weights"] == "8-bit" and rows["skewed"]["error_ratio_7bit"] > 1.0  # coarser grid
    exact = choose_weight_ranges(tmp_path / "m.onnx", feeds, saturating=False)
    assert [(r["node"], r["weights"]) for r in exact] == [("centred", "8-bit"), ("skewed", "8-bit")]
    assert all("error_ratio_7bit" not in r for r in exact)  # nothing to emulate: nothing read


def test_splice_takes_exactly_the_chosen_weights_from_ort_reduce_range_model(tmp_path):
    feeds = _two_layers(tmp_path / "m.onnx")
    full = _quantize(tmp_path / "m.onnx", tmp_path / "full.onnx", reduce_range=False)
    reduced = _quantize(tmp_path / "m.onnx", tmp_path / "reduced.onnx", reduce_range=True)
    assert splice(full, reduced, ["w_c", "not_a_weight"], tmp_path / "mixed.onnx") == ["w_c"]

    def inits(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    mixed, f, r = inits(tmp_path / "mixed.onnx"), inits(full), inits(reduced)
    assert sorted(mixed) == sorted(f)  # the same graph, other values
    np.testing.assert_array_equal(mixed["w_c_quantized"], r["w_c_quantized"])
    np.testing.assert_array_equal(mixed["w_c_scale"], r["w_c_scale"])
    np.testing.assert_array_equal(mixed["w_s_quantized"], f["w_s_quantized"])
    assert np.abs(mixed["w_c_quantized"].astype(int)).max() == 64
    assert np.abs(f["w_c_quantized"].astype(int)).max() == 127
    sess = ort.InferenceSession(str(tmp_path / "mixed.onnx"), providers=["CPUExecutionProvider"])
    assert [o.shape for o in sess.run(None, feeds[0])] == [(48, N), (48, N)]


_CHILD = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])["x"]
for path in sys.argv[2:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.savez(path + ".out.npz", *[sess.run(None, {"x": x[i]}) [0] for i in range(len(x))])
"""


@pytest.mark.int8_kernel
def test_per_layer_ranges_cut_ort_real_error_without_vnni(tmp_path):
    src = tmp_path / "m.onnx"
    feeds = _two_layers(src)
    rows = choose_weight_ranges(src, feeds, saturating=True)
    seven = [r["weight"] for r in rows if r["weights"] == "7-bit"]
    full = _quantize(src, tmp_path / "full.onnx", reduce_range=False)
    reduced = _quantize(src, tmp_path / "reduced.onnx", reduce_range=True)
    splice(full, reduced, seven, tmp_path / "mixed.onnx")
    # Only the centred layer's output: the error the choice is about (the skewed one keeps 8 bits).
    centred = onnx.load(str(src))
    np.savez(tmp_path / "x.npz", x=np.stack([f["x"] for f in feeds]))
    paths = [full, reduced, tmp_path / "mixed.onnx"]
    run_python_without_vnni(_CHILD, str(tmp_path / "x.npz"), *map(str, paths))
    ref = [
        f["x"] @ numpy_helper.to_array(next(i for i in centred.graph.initializer if i.name == "w_c"))
        for f in feeds
    ]
    err = {
        p.stem: sum(
            float(np.sum((o - r) ** 2)) for o, r in zip(np.load(f"{p}.out.npz").values(), ref, strict=True)
        )
        for p in paths
    }
    assert err["mixed"] == pytest.approx(err["reduced"], rel=1e-6)  # the centred layer: ORT's 7-bit weights
    assert err["mixed"] < 0.5 * err["full"]  # ...which saturate less than 8-bit ones lose


@pytest.mark.int8_kernel
def test_dynamic_smooth_splices_seven_bit_weights_where_this_cpu_saturates(tmp_path, monkeypatch):
    """The int8 stage's wiring, with the CPU said to saturate (the splice and the report do
    not depend on the CPU; the choice is emulated)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from presso.examples.minilm import model_folder
    from presso.examples.texts import stdlib_sentences
    from presso.recipe.schema import Recipe, Stage

    folder = tmp_path / "bert"
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_folder()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    saturating = CpuFeatures("test", avx2=True, avx512=False, vnni=False, bf16=False, int8_saturates=True)
    monkeypatch.setattr(int8, "cpu_features", lambda: saturating)
    recipe = Recipe(name="smooth", stages=[Stage(technique="int8", options={"variants": ["dynamic-smooth"]})])
    result = presso.compress(
        str(folder),
        recipe,
        data=stdlib_sentences(60),
        seq_len=32,
        max_drop=1.0,
        bench=presso.measure.BenchSettings(rounds=1, throughput_batch=4),
    )
    stage = result.report.stages[0]
    seven = [row for row in stage.layers if row.get("weights") == "7-bit (saturation)"]
    assert seven and any("got 7-bit weights" in note for note in stage.notes)
    model = onnx.load(str(result.model_path))
    weights = [
        numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == TensorProto.INT8 and len(i.dims) == 2
    ]
    ranges = sorted({int(np.abs(w.astype(int)).max()) for w in weights})
    assert ranges == [64, 127]  # some layers 7-bit, the others 8-bit
