"""General weight-only quantization: every scheme exact against presso's quantizer, really small."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.quantization.config import Int4Config, WeightOnlyConfig
from presso.techniques.quantization.quantizers import binarize, fake_quantize, to_half
from presso.techniques.quantization.weight_only import write_int4, write_weight_only


def _export(model: nn.Module, sample: torch.Tensor, path):
    dynamic = {"x": {0: "n"}} if sample.ndim != 3 else {"x": {0: "n", 1: "t"}}
    torch.onnx.export(model, (sample,), str(path), dynamo=False, input_names=["x"], dynamic_axes=dynamic)
    return path


@pytest.fixture
def cnn(tmp_path):
    """Conv (per channel), Gemm with transB (groups of 32), Gemm with 64 inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()
    return _export(model, torch.zeros(1, 1, 8, 8), tmp_path / "cnn.onnx")


@pytest.fixture
def tokens(tmp_path):
    """Linear layers on (B, T, K) inputs export as MatMul (+ Add): weights stored (K, N)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False)).eval()
    return _export(model, torch.zeros(2, 5, 64), tmp_path / "tokens.onnx")


def weight_names(path) -> dict[str, tuple[str, str]]:
    """weight initializer -> (op, layout) of every weighted node of an fp32 model."""
    out = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Conv":
            out[node.input[1]] = ("Conv", "rows")
        elif node.op_type == "Gemm":  # torch exports Linear with transB=1: (out, in)
            out[node.input[1]] = ("Gemm", "rows")
        elif node.op_type == "MatMul":
            out[node.input[1]] = ("MatMul", "cols")  # (in, out): quantized through its transpose
    return out


def runtime_weights(path, names) -> dict[str, np.ndarray]:
    """The float weights ONNX Runtime rebuilds, fetched as extra graph outputs."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {
        i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
        for i in session.get_inputs()
    }
    return dict(zip(names, session.run(list(names), feed), strict=True))


def presso_weight(w: np.ndarray, op: str, layout: str, cfg: WeightOnlyConfig) -> np.ndarray:
    """What presso's own quantizer makes of ``w``, in the stored layout."""
    t = torch.from_numpy(np.ascontiguousarray(w.T if layout == "cols" else w))  # (outputs, K...)
    if cfg.scheme in ("float16", "bfloat16"):
        return to_half(torch.from_numpy(w), cfg.scheme).numpy()
    if cfg.scheme == "binary":
        out = binarize(t, axis=0)
    elif op == "Conv" or t.shape[1] % 32:
        out = fake_quantize(t, cfg.bits, cfg.symmetric, axis=0, power_of_two=cfg.scheme == "power-of-two")
    else:
        out = fake_quantize(
            t, cfg.bits, cfg.symmetric, group_size=32, power_of_two=cfg.scheme == "power-of-two"
        )
    return out.numpy().T if layout == "cols" else out.numpy()


SCHEMES = [
    {"scheme": "int", "bits": 2},
    {"scheme": "int", "bits": 3, "symmetric": False},
    {"scheme": "int", "bits": 4},
    {"scheme": "int", "bits": 6, "symmetric": False},
    {"scheme": "int", "bits": 8},
    {"scheme": "power-of-two", "bits": 3},
    {"scheme": "power-of-two", "bits": 5, "symmetric": False},
    {"scheme": "binary"},
    {"scheme": "float16"},
    {"scheme": "bfloat16"},
]


@pytest.mark.parametrize("options", SCHEMES, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("model", ["cnn", "tokens"])
def test_runtime_weights_equal_presso_quantizer_bit_for_bit(options, model, request, tmp_path):
    src = request.getfixturevalue(model)
    cfg = WeightOnlyConfig(**options)
    dst = tmp_path / "q.onnx"
    rows = write_weight_only(src, dst, cfg)
    label = cfg.scheme if cfg.bits is None else f"int{cfg.bits}"
    assert [r["precision"] for r in rows] == [label] * len(weight_names(src))
    floats = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    names = weight_names(src)
    got = runtime_weights(dst, list(names))
    for name, (op, layout) in names.items():
        want = presso_weight(floats[name], op, layout, cfg)
        assert got[name].dtype == np.float32 and np.array_equal(got[name], want), (name, op)
    # The rebuilt model computes with exactly those weights.
    x = (
        np.random.default_rng(0)
        .normal(size=(3, 1, 8, 8) if model == "cnn" else (3, 5, 64))
        .astype(np.float32)
    )
    out = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(out).all()


@pytest.fixture
def wide(tmp_path):
    """Weights dominate the file (262,144 of them), so file size tracks weight storage."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    return _export(model, torch.zeros(1, 256), tmp_path / "wide.onnx")


# (options, weight bytes per weight, scale bytes per weight, storage, file-size factor range)
SIZES = [
    ({"scheme": "float16"}, 2, 0, "float16", (1.95, 2.0)),
    ({"scheme": "bfloat16"}, 2, 0, "bfloat16", (1.95, 2.0)),
    ({"bits": 8}, 1, 4 / 32, "8-bit", (3.4, 3.56)),  # 4x less the fp32 scale of each group of 32
    ({"bits": 6}, 1, 4 / 32, "8-bit container", (3.4, 3.56)),
    ({"bits": 4}, 0.5, 4 / 32, "4-bit", (6.1, 6.4)),  # 8x less a 4-byte scale a group: 5 bits a weight
    ({"bits": 3}, 0.5, 4 / 32, "4-bit container", (6.1, 6.4)),
    ({"bits": 2}, 0.5, 4 / 32, "4-bit container", (6.1, 6.4)),
    ({"scheme": "binary"}, 0.5, None, "4-bit container", (7.6, 8.0)),  # one scale per channel
]


@pytest.mark.parametrize(
    "options,per_weight,per_scale,storage,factor",
    SIZES,
    ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else None,
)
def test_file_shrinks_by_the_storage_width(wide, tmp_path, options, per_weight, per_scale, storage, factor):
    dst = tmp_path / "q.onnx"
    rows = write_weight_only(wide, dst, WeightOnlyConfig(**options))
    outputs = {"/0/Gemm": 512, "/2/Gemm": 256}
    for row in rows:
        n = row["parameters"]  # binary: one fp32 scale per output channel, else per group of 32
        scales = 4 * outputs[row["node"]] if per_scale is None else per_scale * n
        assert row["size_bytes"] == int(per_weight * n + scales)
        assert row["storage"] == storage
    ratio = wide.stat().st_size / dst.stat().st_size
    assert factor[0] <= ratio <= factor[1], ratio


def test_power_of_two_scales_are_exact_powers_of_two(cnn, tmp_path):
    dst = tmp_path / "p2.onnx"
    rows = write_weight_only(cnn, dst, WeightOnlyConfig(scheme="power-of-two", bits=3))
    assert all(r["scales"] == "power of two" for r in rows)
    scales = [
        onnx.numpy_helper.to_array(i)
        for i in onnx.load(str(dst)).graph.initializer
        if i.name.endswith("_scale")
    ]
    assert len(scales) == len(rows)
    for s in scales:
        mantissa, _ = np.frexp(s)
        assert np.all(mantissa == 0.5)  # s == 2**e exactly


def test_int4_is_the_weight_only_preset(cnn, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    rows_a = write_int4(cnn, a, Int4Config(symmetric=False), precision={"/5/Gemm": "int8"})
    rows_b = write_weight_only(
        cnn, b, WeightOnlyConfig(bits=4, symmetric=False), precision={"/5/Gemm": "int8"}
    )
    assert a.read_bytes() == b.read_bytes() and rows_a == rows_b
    assert [r["precision"] for r in rows_a] == ["int4", "int4", "int8"]


@pytest.mark.parametrize(
    "options",
    [
        {"group_size": "auto", "symmetric": True},
        {"group_size": 32, "symmetric": False, "keep_float": ["/0/Conv"], "precision": {"/5/Gemm": "int8"}},
    ],
)
def test_pinned_int4_recipes_still_load(options):
    from presso.recipe.schema import Recipe, Stage

    [(tech, cfg)] = Recipe(name="r", stages=[Stage(technique="int4", options=options)]).configs()
    assert tech.name == "int4" and isinstance(cfg, Int4Config)


@pytest.mark.parametrize(
    "options",
    [
        *SCHEMES,
        {
            "bits": 3,
            "rounding": "adaround",
            "bias_correction": True,
            "group_size": 16,
            "precision": {"a": "int8", "b": "binary"},
        },
    ],
)
def test_configs_round_trip_through_the_resolved_recipe(options):
    from presso.recipe.schema import Recipe, Stage

    cfg = WeightOnlyConfig(**options)
    recipe = Recipe(name="r", stages=[Stage(technique="weight-only", options=cfg.model_dump(mode="json"))])
    [(_, again)] = recipe.configs()
    assert again == cfg


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"bits": 0}, r"option 'bits'.*int in \[2, 8\].*got 0"),
        ({"bits": 1}, r"option 'bits'.*\[2, 8\].*use scheme: binary"),
        ({"bits": 9}, r"option 'bits'.*int in \[2, 8\].*got 9"),
        ({"bits": True}, r"option 'bits'.*int in \[2, 8\]"),
        ({"scheme": "binary", "bits": 4}, r"option 'bits'.*'binary' has a fixed width"),
        ({"scheme": "float16", "bits": 16}, r"option 'bits'.*'float16' has a fixed width"),
        ({"scheme": "int8"}, r"option 'scheme'.*'int', 'power-of-two', 'binary'"),
        ({"rounding": "stochastic"}, r"option 'rounding'.*'nearest' or 'adaround'"),
        ({"scheme": "binary", "rounding": "adaround"}, r"option 'rounding'.*integer schemes"),
        ({"group_size": 1}, r"option 'group_size'.*\[2, 4096\]"),
        ({"scheme": "float16", "group_size": 32}, r"option 'group_size'.*integer schemes"),
        ({"precision": {"a": "int9"}}, r"option 'precision.a'"),
        ({"bias": True}, r"unknown option 'bias'"),
    ],
)
def test_bad_options(bad, match):
    from presso.recipe.schema import Recipe, Stage

    with pytest.raises(PressoError, match=r"stage 1 'weight-only': " + match):
        Recipe(name="r", stages=[Stage(technique="weight-only", options=bad)]).configs()


def test_group_size_that_does_not_divide_names_stage_and_option(cnn, tmp_path):
    with pytest.raises(
        PressoError,
        match=r"'group_size' option of stage 'weight-only' \(48\) does not "
        r"divide the 512 input features of layer",
    ):
        write_weight_only(cnn, tmp_path / "o.onnx", WeightOnlyConfig(bits=3, group_size=48))


def test_mixed_precision_overrides_store_each_layer_as_asked(cnn, tmp_path):
    dst = tmp_path / "mixed.onnx"
    precision = {"/0/Conv": "float16", "/3/Gemm": "int2", "/5/Gemm": "fp32"}
    rows = write_weight_only(cnn, dst, WeightOnlyConfig(scheme="binary"), precision=precision)
    assert {r["node"]: (r["precision"], r["storage"]) for r in rows} == {
        "/0/Conv": ("float16", "float16"),
        "/3/Gemm": ("int2", "4-bit container"),
    }
    kept = [i for i in onnx.load(str(dst)).graph.initializer if i.name == "5.weight"]
    assert kept and kept[0].data_type == onnx.TensorProto.FLOAT  # fp32: left alone
