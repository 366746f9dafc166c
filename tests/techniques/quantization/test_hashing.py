"""Hashed weight sharing: one hash in numpy / torch / ONNX, exact rebuild, K values stored."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import presso
from presso.errors import PressoError
from presso.measure import BenchSettings
from presso.recipe.schema import Recipe, Stage
from presso.runtime.session import make_session
from presso.techniques import registry
from presso.techniques.quantization.hashing import (
    HashedLayer,
    HashedWeight,
    P,
    _hash,
    _rebuild,
    bucket_index,
    hash_key,
    match_initializers,
    materialize,
    prepare_hashed,
    sign,
    write_hashed,
)
from presso.techniques.quantization.hashing_config import HashedConfig
from presso.train import FitSettings, fit, teacher_loss

QUICK = BenchSettings(rounds=1, throughput_batch=8)


@pytest.fixture
def hashed_registered():
    """The technique as registered next to its code (recipes name it 'hashed')."""
    from presso.techniques.quantization.hashing import hash_weights

    assert registry.get_technique("hashed").run is hash_weights


def _export(model: nn.Module, sample: torch.Tensor, path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (sample,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
        )


def _ort_rebuild(layer: HashedLayer) -> np.ndarray:
    """The weight the writer's nodes compute, run alone on ONNX Runtime (no optimizations)."""
    inits, nodes = _rebuild("n", "w", layer, transposed=False)
    consts = [
        helper.make_tensor(f"hashed/{k}", TensorProto.INT64, [], [v])
        for k, v in {"zero": 0, "one": 1, "two": 2, "prime": P}.items()
    ]
    graph = helper.make_graph(
        nodes,
        "rebuild",
        [],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        initializer=inits + consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {})[0]


@pytest.mark.parametrize(
    "numel, k, seed", [(1, 1, 0), (1000, 250, 1), (70_001, 8_751, 7), (300_000, 1_000, 123)]
)
def test_hash_is_identical_in_numpy_torch_and_onnx_runtime(numel, k, seed):
    idx, xi = bucket_index(numel, k, seed), sign(numel, seed)
    assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < k
    assert set(np.unique(xi).tolist()) <= {-1.0, 1.0}
    param = HashedWeight((numel,), k, seed)
    np.testing.assert_array_equal(param.index.numpy(), idx)
    np.testing.assert_array_equal(param.xi.numpy(), xi)
    # ONNX Runtime: the writer's nodes; values 0..K-1 give the bucket, ones give the sign.
    buckets = HashedLayer(
        "l", k, seed, False, np.arange(k, dtype=np.float32), np.zeros(numel, np.float32), None
    )
    np.testing.assert_array_equal(_ort_rebuild(buckets), idx.astype(np.float32))
    signs = HashedLayer("l", k, seed, True, np.ones(k, np.float32), np.zeros(numel, np.float32), None)
    np.testing.assert_array_equal(_ort_rebuild(signs), xi)
    if numel >= k * 8:  # i -> (i a + b) mod P is one-to-one: buckets fill evenly
        counts = np.bincount(idx, minlength=k)
        assert counts.max() - counts.min() <= 0.2 * numel / k + 2


def test_hash_does_not_overflow_int64_at_the_largest_positions():
    a, b, c, d = hash_key(5)
    i = [0, 1, P // 2, 2**31 - 3, P - 1]  # positions up to 2^31 - 2: i * a + b < 2^63
    exact = [(v * a + b) % P % 1_000_003 for v in i]  # Python integers never overflow
    assert _hash(np.array(i, np.int64), a, b, 1_000_003).tolist() == exact
    assert _hash(torch.tensor(i, dtype=torch.int64), a, b, 1_000_003).tolist() == exact
    assert max(a, b, c, d) < P and min(a, c) >= 1


class _Net(nn.Module):
    """A Conv, a Linear exported as Gemm (W as is) and one exported as MatMul (W.T)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 48)
        self.seq = nn.Linear(48, 10)  # applied to 3-D input: MatMul with the transposed weight

    def forward(self, x):  # (B, 2, 6, 6)
        h = torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1)))  # (B, 48)
        return self.seq(h.unsqueeze(1).repeat(1, 3, 1)).sum(1)  # (B, 3, 48) -> (B, 10)


@pytest.mark.parametrize("sign_hash", [True, False])
def test_onnx_rebuild_equals_the_torch_hashed_weights_bit_for_bit(tmp_path, sign_hash):
    torch.manual_seed(0)
    model = _Net().eval()
    originals = prepare_hashed(model, 0.3, sign_hash=sign_hash, seed=4)
    with torch.no_grad():  # values moved away from the fit, as fine-tuning would
        for name, p in model.named_parameters():
            if name.endswith(".original"):
                p.add_(0.01 * torch.randn_like(p))
    layers = materialize(model, originals)
    assert sorted(layers) == ["conv", "fc", "seq"]
    src, dst = tmp_path / "m.onnx", tmp_path / "h.onnx"
    _export(model, torch.zeros(1, 2, 6, 6), src)
    matched = match_initializers(src, {n: h.weight for n, h in layers.items()})
    assert {n: (op_node.rsplit("/", 1)[-1], t) for n, (op_node, _, t) in matched.items()} == {
        "conv": ("Conv", False),
        "fc": ("Gemm", False),
        "seq": ("MatMul", True),
    }
    plan = {w: (layers[n], t) for n, (_, w, t) in matched.items()}
    rows = write_hashed(src, dst, HashedConfig(), {}, layers=plan)
    assert [r["stored_values"] for r in rows] == [layers[n].k for n in ("conv", "fc", "seq")]
    assert [r["parameters"] for r in rows] == [144, 288 * 48, 480]

    # The rebuilt initializers themselves, as graph outputs: bit for bit PyTorch's weights.
    proto = onnx.load(str(dst))
    weights = [w for _, w, _ in matched.values()]
    proto.graph.output.extend(helper.make_tensor_value_info(w, TensorProto.FLOAT, None) for w in weights)
    x = np.random.default_rng(0).normal(size=(7, 2, 6, 6)).astype(np.float32)
    outs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    for (name, (_, _, transposed)), got in zip(matched.items(), outs[1:], strict=True):
        want = layers[name].weight.T if transposed else layers[name].weight
        np.testing.assert_array_equal(got, want)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(make_session(dst).run(None, {"x": x})[0], ref, rtol=0, atol=1e-5)


def test_fallback_layers_get_their_trained_weight_back(tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    trained = copy.deepcopy(model)
    layers = materialize(model, prepare_hashed(model, 0.25))
    src, dst = tmp_path / "m.onnx", tmp_path / "h.onnx"
    _export(model, torch.zeros(1, 2, 6, 6), src)
    matched = match_initializers(src, {n: h.weight for n, h in layers.items()})
    plan = {w: (layers[n], t) for n, (_, w, t) in matched.items()}
    node = matched["seq"][0]
    rows = write_hashed(src, dst, HashedConfig(), {node: "fp32"}, layers=plan)
    assert node not in {r["node"] for r in rows} and len(rows) == 2
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer}
    np.testing.assert_array_equal(inits[matched["seq"][1]], trained.seq.weight.detach().numpy().T)


@pytest.mark.parametrize("compression", [0.5, 0.25, 0.125])
def test_the_file_stores_only_k_values_per_layer(tmp_path, compression):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 512)).eval()  # 524,288 weights: 2 MiB in fp32
    src, dst = tmp_path / "f.onnx", tmp_path / "h.onnx"
    layers = materialize(model, prepare_hashed(model, compression))
    _export(model, torch.zeros(1, 1024), src)  # float, as big as the original
    plan = {
        w: (layers[n], t)
        for n, (_, w, t) in match_initializers(src, {n: h.weight for n, h in layers.items()}).items()
    }
    write_hashed(src, dst, HashedConfig(), {}, layers=plan)
    ratio = src.stat().st_size / dst.stat().st_size
    assert 0.97 / compression < ratio <= 1.0 / compression  # K = ceil(c * n) values, plus a 2 kB bias
    largest = max(int(np.prod(i.dims)) for i in onnx.load(str(dst)).graph.initializer)
    assert largest == int(np.ceil(compression * 1024 * 512))


def test_onnx_runtime_folds_the_rebuild_at_session_creation(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    layers = materialize(model, prepare_hashed(model, 0.25))
    src, dst, opt = tmp_path / "m.onnx", tmp_path / "h.onnx", tmp_path / "opt.onnx"
    _export(model, torch.zeros(1, 64), src)
    plan = {
        w: (layers[n], t)
        for n, (_, w, t) in match_initializers(src, {n: h.weight for n, h in layers.items()}).items()
    }
    write_hashed(src, dst, HashedConfig(), {}, layers=plan)
    opts = ort.SessionOptions()  # constant folding is a basic optimization: on in every level but "disabled"
    opts.optimized_model_filepath = str(opt)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(opt)).graph.node}
    assert not ops & {"Range", "Mod", "Gather", "Reshape", "Cast"}, ops  # weights are constants again


def test_initial_values_are_the_least_squares_fit():
    torch.manual_seed(0)
    layer = nn.Linear(96, 40)
    w = layer.weight.detach().clone()
    param = HashedWeight(tuple(w.shape), 900, seed=3)
    values = param.right_inverse(w)  # (K,)
    idx, xi = param.index.numpy(), param.xi.numpy()
    means = np.bincount(idx, weights=xi * w.numpy().ravel(), minlength=900) / np.bincount(idx, minlength=900)
    np.testing.assert_allclose(values.numpy(), means, rtol=1e-5, atol=1e-7)

    def error(v: torch.Tensor) -> float:
        return float(torch.linalg.norm(param(v) - w))

    best = error(values)
    rng = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1e-3, 1e-2):
        for _ in range(5):
            assert error(values + scale * torch.randn(values.shape, generator=rng)) > best
    # About sqrt(1 - K / n) of the weight is lost for iid weights: projection onto K directions.
    assert 0.8 < best / float(torch.linalg.norm(w)) < 0.9
    parametrize = torch.nn.utils.parametrize
    parametrize.register_parametrization(layer, "weight", param)
    torch.testing.assert_close(layer.parametrizations.weight.original.detach(), values)


def _trained_mlp():
    """A small classifier trained on 3 Gaussian blobs; its outputs are the teacher's."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 12)).astype(np.float32) * 2
    y = rng.integers(0, 3, 900)
    x = (centres[y] + rng.normal(size=(900, 12))).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))
    fit(model, ({"x": x}, y), None, nn.functional.cross_entropy, settings=FitSettings(epochs=15, lr=3e-3))
    return model.eval(), x, y


def test_fine_tuning_moves_the_hashed_model_towards_the_teacher():
    model, x, _ = _trained_mlp()
    with torch.no_grad():
        teacher = model(torch.from_numpy(x)).numpy()
    train, held = slice(0, 600), slice(600, None)
    student = copy.deepcopy(model)
    prepare_hashed(student, 0.125, seed=0)
    loss = teacher_loss("classification", 2.0)

    def held_out() -> tuple[float, float]:
        with torch.no_grad():
            out = student.eval()(torch.from_numpy(x[held]))
        agree = float((out.argmax(1).numpy() == teacher[held].argmax(1)).mean())
        return float(loss(out, torch.from_numpy(teacher[held]))), agree

    loss0, agree0 = held_out()
    fit(student, ({"x": x[train]}, teacher[train]), None, loss, settings=FitSettings(epochs=10, lr=3e-3))
    loss1, agree1 = held_out()
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert agree1 >= max(agree0, 0.95), (agree0, agree1)
    assert sum(p.numel() for n, p in student.named_parameters() if n.endswith(".original")) == sum(
        int(np.ceil(0.125 * m.weight.numel())) for m in model if isinstance(m, nn.Linear)
    )


def test_stage_hashes_fine_tunes_and_keeps_float_layers_asked_for(hashed_registered):
    model, x, y = _trained_mlp()
    first = Recipe(name="h", stages=[Stage(technique="hashed", options={"compression": 0.25, "epochs": 3})])
    report = presso.compress(copy.deepcopy(model), first, data=(x, y), bench=QUICK, max_drop=1.0).report
    rows = report.stages[0].layers
    assert [r["precision"] for r in rows] == ["hashed 384 values", "hashed 4096 values", "hashed 96 values"]
    assert all(0 < r["relative_error"] < 1.5 for r in rows)
    assert any("fine-tuned for 3 epochs on" in n and "mixup rows" in n for n in report.stages[0].notes)
    assert not any("disable_quant_qdq" in n for n in report.stages[0].notes)

    keep = Recipe(
        name="h",
        stages=[
            Stage(
                technique="hashed",
                options={"compression": 0.25, "epochs": 1, "keep_float": [rows[1]["node"]]},
            )
        ],
    )
    report = presso.compress(copy.deepcopy(model), keep, data=(x, y), bench=QUICK, max_drop=1.0).report
    by_node = {r["node"]: r["precision"] for r in report.stages[0].layers}
    assert by_node[rows[1]["node"]] == "fp32"
    assert by_node[rows[0]["node"]] == "hashed 384 values"


def test_digits_builtin_recipe_meets_the_budget_at_half_the_size(hashed_registered):
    ex = presso.load_example("digits")
    report = presso.compress(ex.model, "hashed", data=ex.data, task=ex.task, bench=QUICK).report
    assert report.budget.passed and report.budget.drop <= 0.01
    assert report.baseline.size_bytes / report.compressed.size_bytes >= 1.8
    assert all(r["precision"].startswith("hashed ") for r in report.stages[0].layers)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"compression": 0}, "option 'compression'"),
        ({"compression": 1.5}, "option 'compression'"),
        ({"compression": -0.25}, "option 'compression'"),
        ({"compression": 1}, "option 'compression'"),
        ({"epochs": -1}, "option 'epochs'"),
        ({"min_values": 0}, "option 'min_values'"),
        ({"buckets": 8}, "unknown option 'buckets'"),
    ],
)
def test_bad_hashed_options(hashed_registered, bad, message):
    with pytest.raises(PressoError, match=f"stage 1 'hashed': {message}"):
        Recipe(name="r", stages=[Stage(technique="hashed", options=bad)]).configs()


def test_needs_a_pytorch_model(hashed_registered, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    _export(nn.Sequential(nn.Linear(12, 3)).eval(), torch.zeros(1, 12), path)
    x = np.random.default_rng(0).normal(size=(60, 12)).astype(np.float32)
    with pytest.raises(PressoError, match="needs a PyTorch model"):
        presso.compress(
            str(path),
            Recipe(name="r", stages=[Stage(technique="hashed")]),
            data=x,
            task="classification",
            bench=QUICK,
        )
