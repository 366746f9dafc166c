"""Distillation students: derived (shallower / narrower, teacher or fresh weights) and plain MLPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.examples.digits import DigitsCNN
from presso.examples.tabular import TabularMLP
from presso.export.onnx_export import export_onnx
from presso.model.layers import Standardize
from presso.model.loaded import LoadedModel, count_parameters
from presso.techniques.distill.config import DistillConfig
from presso.techniques.distill.students import StudentPlan, derive_student, mlp_student
from presso.techniques.pruning.transformer import find_encoder_layers

PIXELS = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _digits() -> DigitsCNN:
    torch.manual_seed(123)  # not the students' seed: a fresh init must not reproduce the teacher
    return DigitsCNN().eval()


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0.0}, "'width'.*\\(0, 1\\]"),
        ({"width": 1.5}, "'width'"),
        ({"width": True}, "'width'"),
        ({"depth": 0}, "'depth'.*>= 1"),
        ({"depth": 2.0}, "'depth'.*a float in \\(0, 1\\)"),
        ({"depth": 1.0}, "'depth'"),
        ({"heads": 1.5}, "'heads'.*\\(0, 1\\]"),
        ({"init": "zeros"}, "'init'.*teacher, random"),
        ({"blocks": "x"}, "'blocks'.*standard, separable.*Got 'x'"),
    ],
)
def test_plan_is_validated_at_construction(kwargs, match):
    with pytest.raises(PressoError, match=match):
        StudentPlan(**kwargs)


# ---------------------------------------------------------------- width: CNN / MLP


@pytest.mark.parametrize(("width", "params"), [(1.0, 38_282), (0.5, 9_802), (0.45, 7_556), (0.4, 5_805)])
def test_digits_width_parameter_counts(width, params):
    teacher = _digits()
    student, notes = derive_student(teacher, PIXELS, StudentPlan(width=width))
    assert count_parameters(student) == params
    assert student(*PIXELS).shape == teacher(*PIXELS).shape == (4, 10)
    if width < 1:
        assert notes == [
            (
                f"kept {width:.0%} of channels / neurons (the output layer keeps its size): "
                f"38,282 -> {params:,} parameters"
            )
        ]


def test_digits_quarter_of_the_parameters_needs_width_045():
    # width 0.5 keeps 25.6% (every layer's in and out halve, the 10-class head only its inputs);
    # 0.45 is the largest multiple of 0.05 keeping at most a quarter.
    counts = {
        w: count_parameters(derive_student(_digits(), PIXELS, StudentPlan(width=w))[0]) for w in (0.5, 0.45)
    }
    assert counts[0.5] / 38_282 == pytest.approx(0.2560, abs=1e-4)
    assert counts[0.45] / 38_282 == pytest.approx(0.1974, abs=1e-4) and counts[0.45] <= 38_282 / 4


def test_teacher_init_keeps_surviving_weights_and_teacher_is_untouched():
    teacher = _digits().train()
    before = _state(teacher)
    student, _ = derive_student(teacher, PIXELS, StudentPlan(width=0.5))
    _assert_same_state(before, _state(teacher))
    assert teacher.training and student.training  # the student mirrors the teacher's mode
    kept, full = student.features[0].weight, teacher.features[0].weight  # (8, 1, 3, 3), (16, 1, 3, 3)
    assert kept.shape == (8, 1, 3, 3)
    matches = [int(torch.nonzero((full == f).flatten(1).all(1)).flatten()[0]) for f in kept]
    assert len(set(matches)) == 8  # each kept filter is one of the teacher's, exactly
    assert torch.equal(student.classifier[3].bias, teacher.classifier[3].bias)  # output layer whole


def test_random_init_differs_and_is_reproducible():
    teacher = _digits()
    before = _state(teacher)
    plan = StudentPlan(width=0.5, init="random")
    a, notes = derive_student(teacher, PIXELS, plan, seed=0)
    b, _ = derive_student(teacher, PIXELS, plan, seed=0)
    c, _ = derive_student(teacher, PIXELS, plan, seed=1)
    t, _ = derive_student(teacher, PIXELS, StudentPlan(width=0.5))
    _assert_same_state(before, _state(teacher))
    _assert_same_state(_state(a), _state(b))
    for name, p in a.named_parameters():
        assert not torch.equal(p, dict(c.named_parameters())[name]), name
        assert not torch.equal(p, dict(t.named_parameters())[name]), name
    assert count_parameters(a) == count_parameters(t) == 9_802
    assert notes[-1] == "re-initialised all weights from seed 0 (a from-scratch student of the same shape)"


def test_random_init_keeps_standardize_statistics():
    torch.manual_seed(5)
    x = torch.randn(64, 30) * 100 + 50
    teacher = TabularMLP(Standardize.fit(x)).eval()
    student, notes = derive_student(teacher, (x[:8],), StudentPlan(width=0.5, init="random"))
    assert count_parameters(teacher) == 6_274 and count_parameters(student) == 2_114
    assert torch.equal(student.standardize.mean, teacher.standardize.mean)
    assert torch.equal(student.standardize.std, teacher.standardize.std)
    assert not torch.equal(student.net[-1].weight, teacher.net[-1].weight[:, :32])
    assert "kept the fitted input standardisation (Standardize layers)" in notes


# ---------------------------------------------------------------- depth: stacks of blocks


class StackMLP(nn.Module):
    """(N, 8) -> (N, 3): stem, four same-shape Linear(32, 32) + ReLU blocks, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 32)
        self.blocks = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(32, 32), nn.ReLU())])
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def test_depth_removes_same_shape_blocks():
    torch.manual_seed(0)
    teacher = StackMLP().eval()
    x = (torch.randn(5, 8),)
    student, notes = derive_student(teacher, x, StudentPlan(depth=2))
    assert count_parameters(teacher) == 288 + 4 * 1_056 + 99 == 4_611
    assert count_parameters(student) == 4_611 - 2 * 1_056 == 2_499
    assert [type(m).__name__ for m in student.blocks] == ["Linear", "ReLU", "Linear", "ReLU"]
    # evenly spaced, first and last kept: blocks 0 and 3 (teacher children 0 and 6)
    assert torch.equal(student.blocks[0].weight, teacher.blocks[0].weight)
    assert torch.equal(student.blocks[2].weight, teacher.blocks[6].weight)
    assert notes == ["kept 2 of 4 same-shape blocks of 'blocks' (blocks 0, 3): 4,611 -> 2,499 parameters"]
    assert student(*x).shape == (5, 3)
    assert len(teacher.blocks) == 8


def test_depth_and_width_together_on_a_module_list():
    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return self.out(x)

    torch.manual_seed(0)
    teacher = Tower().eval()
    student, notes = derive_student(teacher, (torch.randn(3, 16),), StudentPlan(depth=3, width=0.5))
    assert len(student.layers) == 3 and len(teacher.layers) == 6
    assert notes[0] == "kept 3 of 6 same-shape blocks of 'layers' (blocks 0, 2, 5): 1,666 -> 850 parameters"
    # the first layer keeps its 16 inputs (the model's input), the rest halve: 8x16 + 2 * 8x8 + 2x8
    assert count_parameters(student) == (16 * 8 + 8) + 2 * (8 * 8 + 8) + (8 * 2 + 2) == 298


def test_depth_without_same_shape_blocks_is_refused():
    with pytest.raises(PressoError, match="stack of same-shape blocks.*use width"):
        derive_student(_digits(), PIXELS, StudentPlan(depth=1))


def test_heads_on_a_model_without_attention_is_refused():
    with pytest.raises(
        PressoError, match=r"'heads' \(0.5\) removes attention heads .* this model has none\. Use width"
    ):
        derive_student(_digits(), (torch.rand(2, 1, 8, 8),), StudentPlan(heads=0.5))


def test_depth_above_the_block_count_is_refused():
    with pytest.raises(
        PressoError, match="'depth' of 5 exceeds the teacher's 4 same-shape blocks.*\\[1, 4\\]"
    ):
        derive_student(StackMLP(), (torch.randn(2, 8),), StudentPlan(depth=5))


def test_bad_example_inputs_are_reported():
    with pytest.raises(PressoError, match="could not run the teacher on the example inputs"):
        derive_student(_digits(), (torch.rand(2, 3),), StudentPlan(width=0.5))


# ---------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    from presso.model.huggingface import MeanPooledEncoder

    torch.manual_seed(7)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    teacher = MeanPooledEncoder(transformers.BertModel(config)).eval()
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = (torch.randint(0, 100, (2, 8), generator=g), mask, torch.zeros(2, 8, dtype=torch.long))
    return teacher, inputs


# 4 layers of 8,544 parameters (Q, K, V, output 4 x (32x32 + 32), FFN 32x64 + 64 + 64x32 + 32, 2 LayerNorms)
# + embeddings 5,376 + pooler 1,056
BERT_PARAMS, BERT_LAYER = 40_608, 8_544


def test_bert_depth_keeps_first_and_last_layer(tiny_bert):
    teacher, inputs = tiny_bert
    before = _state(teacher)
    student, notes = derive_student(teacher, inputs, StudentPlan(depth=2), transformer={"model_type": "bert"})
    _assert_same_state(before, _state(teacher))
    assert len(find_encoder_layers(student, inputs)) == 2 and len(find_encoder_layers(teacher, inputs)) == 4
    assert student.encoder.config.num_hidden_layers == 2 and teacher.encoder.config.num_hidden_layers == 4
    assert count_parameters(student) == BERT_PARAMS - 2 * BERT_LAYER == 23_520
    assert notes == ["kept encoder layers 0, 3 of 4: 40,608 -> 23,520 parameters"]
    for new, old in ((0, 0), (1, 3)):
        _assert_same_state(
            _state(student.encoder.encoder.layer[new]), _state(teacher.encoder.encoder.layer[old])
        )
        assert student.encoder.encoder.layer[new].attention.self.layer_idx == new
    with torch.no_grad():
        assert student(*inputs).shape == teacher(*inputs).shape == (2, 32)


def test_bert_depth_fraction_keeps_that_share_of_the_layers(tiny_bert):
    teacher, inputs = tiny_bert
    for fraction, kept in ((0.5, 2), (0.67, 3), (0.1, 1)):
        student, _ = derive_student(
            teacher, inputs, StudentPlan(depth=fraction, layers="even"), transformer={"model_type": "bert"}
        )
        assert len(find_encoder_layers(student, inputs)) == kept
        assert count_parameters(student) == BERT_PARAMS - (4 - kept) * BERT_LAYER


def test_bert_width_halves_heads_and_ffn(tiny_bert):
    teacher, inputs = tiny_bert
    student, notes = derive_student(teacher, inputs, StudentPlan(width=0.5))
    for _, layer in find_encoder_layers(student, inputs):
        assert layer.attention.self.num_attention_heads == 2
        assert layer.attention.self.query.out_features == 16 and layer.intermediate.dense.out_features == 32
    # per layer: 2 heads of 8 (3 x (16x32 + 16) + 32x16) and 32 neurons (32x32 + 32 + 32x32) removed
    assert count_parameters(student) == BERT_PARAMS - 4 * (2_096 + 2_080) == 23_904
    assert "heads 2 of 4; FFN 32 of 64" in notes[0]
    with torch.no_grad():
        assert student(*inputs).shape == (2, 32)


def test_bert_random_init_uses_the_models_scheme(tiny_bert):
    teacher, inputs = tiny_bert
    plan = StudentPlan(depth=3, width=0.5, init="random")
    a, notes = derive_student(teacher, inputs, plan, seed=0)
    b, _ = derive_student(teacher, inputs, plan, seed=0)
    _assert_same_state(_state(a), _state(b))
    assert a.encoder.config.num_hidden_layers == 3
    q = a.encoder.encoder.layer[0].attention.self.query
    assert not torch.equal(q.weight, teacher.encoder.encoder.layer[0].attention.self.query.weight[:16])
    # BERT's own init: weights ~ N(0, 0.02), biases 0 (not nn.Linear's uniform +-1/sqrt(32))
    assert q.weight.std().item() == pytest.approx(0.02, rel=0.2) and not q.bias.any()
    assert torch.equal(a.encoder.embeddings.position_ids, teacher.encoder.embeddings.position_ids)
    assert notes[-1].startswith("re-initialised all weights from seed 0")
    with torch.no_grad():
        assert torch.isfinite(a(*inputs)).all()


def test_transformer_flag_without_encoder_layers_is_refused():
    with pytest.raises(PressoError, match="no encoder blocks"):
        derive_student(_digits(), PIXELS, StudentPlan(depth=1), transformer={"model_type": "bert"})


# ---------------------------------------------------------------- blocks: depthwise-separable

SEPARABLE = StudentPlan(blocks="separable")


def _pair_weight(pair: nn.Sequential) -> np.ndarray:
    """The weight (out, in, *k) a depthwise + pointwise pair computes: W_hat[o, c] = pw[o, c] * dw[c]."""
    dw = pair.depthwise.weight.detach().double().numpy()[:, 0]  # (in, *k)
    pw = pair.pointwise.weight.detach().double().flatten(1).numpy()  # (out, in)
    return np.einsum("oc,c...->oc...", pw, dw)


def test_exactly_separable_conv_is_reproduced():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(3, 8)), rng.normal(size=(3, 9))  # per input channel c: u_c, v_c
    weight = np.stack([np.outer(u[c], v[c]).reshape(8, 3, 3) for c in range(3)], axis=1)  # (8, 3, 3, 3)
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    ).eval()
    with torch.no_grad():
        teacher[0].weight.copy_(torch.from_numpy(weight))
    x = torch.randn(5, 3, 6, 6)
    student, notes = derive_student(teacher, (x,), SEPARABLE)
    assert_allclose(_pair_weight(student[0]), weight, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert_allclose(student(x).numpy(), teacher(x).numpy(), rtol=1e-5, atol=1e-5)
    assert isinstance(teacher[0], nn.Conv2d)  # the teacher keeps its conv
    assert torch.equal(student[0].pointwise.bias, teacher[0].bias)


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(5, 7, 3), nn.Conv2d(4, 16, (3, 2)), nn.Conv1d(4, 6, 5)],
    ids=["conv2d", "out>kernel", "conv1d"],
)
def test_separable_init_is_the_rank_one_svd_per_input_channel(conv):
    torch.manual_seed(1)
    conv.reset_parameters()
    x = torch.randn(2, conv.in_channels, *[9] * (conv.weight.ndim - 2))
    student, _ = derive_student(nn.Sequential(conv), (x,), SEPARABLE)
    w = conv.weight.detach().double().numpy()  # (out, in, *k)
    expect = 0.0  # squared error of numpy's rank-1 truncation, per channel
    for c in range(w.shape[1]):
        m = w[:, c].reshape(w.shape[0], -1)  # (out, K)
        left, sing, right = np.linalg.svd(m, full_matrices=False)
        expect += np.sum((m - sing[0] * np.outer(left[:, 0], right[0])) ** 2)
    error = np.sqrt(np.sum((w - _pair_weight(student[0])) ** 2))
    assert error == pytest.approx(np.sqrt(expect), abs=1e-5)
    assert error > 0.1 * np.linalg.norm(w)  # a random kernel is far from separable: the check is not vacuous


def test_separable_parameter_count_and_note():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(16, 32, 3), nn.ReLU())
    student, notes = derive_student(teacher, (torch.randn(2, 16, 8, 8),), SEPARABLE)
    assert count_parameters(teacher) == 16 * 32 * 9 + 32 == 4_640
    assert count_parameters(student) == 16 * 9 + 16 * 32 + 32 == 688
    assert [tuple(p.shape) for p in student[0].parameters()] == [(16, 1, 3, 3), (32, 16, 1, 1), (32,)]
    assert notes == [
        f"replaced 1 convolution by depthwise-separable blocks: "
        f"{count_parameters(teacher):,} -> {count_parameters(student):,} parameters"
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2},
        {"padding": 1},
        {"dilation": 2},
        {"bias": False},
        {"stride": 2, "padding": 2, "dilation": 2},
        {"padding": "same"},
        {"padding": 1, "padding_mode": "reflect"},
        {"kernel_size": (5, 3), "stride": (1, 2)},
    ],
)
def test_separable_keeps_output_shapes(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, **{"kernel_size": 3, **kwargs})
    student, _ = derive_student(conv, (torch.randn(1, 6, 12, 12),), SEPARABLE)  # a bare conv: the root goes
    assert [type(m) for m in student] == [nn.Conv2d, nn.Conv2d] and student.depthwise.groups == 6
    with torch.no_grad():
        for size in ((9, 9), (10, 13), (16, 7)):
            x = torch.randn(2, 6, *size)
            assert student(x).shape == conv(x).shape, size


def test_separable_conv1d_keeps_output_shapes():
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv1d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv1d(8, 4, 3, dilation=3)
    )
    student, notes = derive_student(teacher, (torch.randn(2, 3, 40),), SEPARABLE)
    assert notes[0].startswith("replaced 2 convolutions by depthwise-separable blocks: ")
    with torch.no_grad():
        for length in (20, 33):
            x = torch.randn(2, 3, length)
            assert student(x).shape == teacher(x).shape


def test_separable_leaves_other_convolutions_alone():
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # one input channel
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # already depthwise
        nn.Conv2d(4, 8, 1),  # pointwise
        nn.Conv2d(8, 8, (1, 3), padding=(0, 1)),  # kernel 1 in one dim
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped
        nn.Conv2d(8, 6, 3, padding=1),  # the one replaced
    ).eval()
    x = (torch.randn(2, 1, 7, 7),)
    student, notes = derive_student(teacher, x, SEPARABLE)
    assert [type(m).__name__ for m in student] == ["Conv2d"] * 5 + ["Sequential"]
    for kept, original in zip(student[:5], teacher[:5], strict=True):
        _assert_same_state(_state(kept), _state(original))
    assert notes[0].startswith("replaced 1 convolution by")
    with pytest.raises(PressoError, match="blocks: separable replaces.*has none — use blocks: standard"):
        derive_student(teacher[:5], x, SEPARABLE)


def test_separable_random_init_is_seeded():
    teacher = _digits()
    plan = StudentPlan(width=0.5, blocks="separable", init="random")
    a, notes = derive_student(teacher, PIXELS, plan, seed=0)
    b, _ = derive_student(teacher, PIXELS, plan, seed=0)
    t, _ = derive_student(teacher, PIXELS, StudentPlan(width=0.5, blocks="separable"))
    _assert_same_state(_state(a), _state(b))
    assert not torch.equal(a.features[2].depthwise.weight, t.features[2].depthwise.weight)
    assert notes[-1].startswith("re-initialised all weights from seed 0")


def test_trained_digits_separable_student_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import presso

    ex = presso.load_example("digits")
    teacher = ex.model.eval()
    before = _state(teacher)
    standard, _ = derive_student(teacher, PIXELS, StudentPlan(width=0.5))
    student, notes = derive_student(teacher, PIXELS, StudentPlan(width=0.5, blocks="separable"))
    _assert_same_state(before, _state(teacher))
    # features.2, Conv2d(8, 16, 3) after width 0.5: 8 * 16 * 9 + 16 = 1,168 -> 8 * 9 + 8 * 16 + 16 = 216
    assert count_parameters(standard) == 9_802 and count_parameters(student) == 9_802 - 1_168 + 216 == 8_850
    assert notes[-1] == "replaced 1 convolution by depthwise-separable blocks: 9,802 -> 8,850 parameters"
    sample = ex.data.inputs["x"][:16]
    loaded = LoadedModel(
        name="digits",
        source="test",
        module=student.eval(),
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    path = export_onnx(loaded, {"x": sample}, tmp_path / "student.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expect = student(torch.from_numpy(sample)).numpy()
    got = session.run(None, {"x": sample})[0]
    assert got.shape == (16, 10) and np.abs(got - expect).max() < 1e-4


def test_config_blocks_applies_to_derived_students_only():
    assert DistillConfig().blocks == "standard" and DistillConfig(blocks="separable").blocks == "separable"
    with pytest.raises(ValueError, match="blocks: separable .*student: auto.*does not apply to student: mlp"):
        DistillConfig(blocks="separable", student="mlp")
    with pytest.raises(ValueError, match="blocks"):
        DistillConfig(blocks="mobile")


# ---------------------------------------------------------------- mlp_student


def test_mlp_student_standardises_raw_features():
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(200, 30)) * 1e4 + 5e4).astype(np.float32)
    student = mlp_student(30, 2, hidden=(64, 64), seed=0, inputs=rows)
    assert count_parameters(student) == (30 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2) == 6_274
    assert_allclose(student.standardize.mean.numpy(), rows.mean(0), rtol=1e-5)
    with torch.no_grad():
        out = student(torch.from_numpy(rows))
        hidden = student.standardize(torch.from_numpy(rows))
    assert out.shape == (200, 2) and torch.isfinite(out).all() and out.abs().max() < 10
    assert_allclose(hidden.mean(0).numpy(), 0, atol=1e-4)
    assert_allclose(hidden.std(0).numpy(), 1, atol=1e-4)


def test_mlp_student_is_seeded_and_validates():
    a, b, c = mlp_student(4, 3, seed=0), mlp_student(4, 3, seed=0), mlp_student(4, 3, seed=1)
    _assert_same_state(_state(a), _state(b))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    assert torch.equal(a.standardize.std, torch.ones(4))  # no inputs: identity standardisation
    with pytest.raises(PressoError, match=r"\(N >= 2, 4\) rows.*reshape to \(-1, 4\)"):
        mlp_student(4, 3, inputs=np.zeros((10, 5)))
    with pytest.raises(PressoError, match="NaN or inf"):
        mlp_student(2, 1, inputs=np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(PressoError, match="'hidden' sizes"):
        mlp_student(4, 3, hidden=())


@pytest.mark.parametrize("which", ["mlp", "digits"])
def test_students_export_to_onnx(which, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if which == "mlp":
        module = mlp_student(6, 2, hidden=(8,), inputs=np.random.default_rng(0).normal(size=(20, 6)) * 50)
        sample = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32) * 50
    else:
        module, _ = derive_student(_digits(), PIXELS, StudentPlan(width=0.45, init="random"))
        sample = PIXELS[0].numpy()
    loaded = LoadedModel(
        name=which, source="test", module=module.eval(), input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    path = export_onnx(loaded, {"x": sample}, tmp_path / "student.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    with torch.no_grad():
        expect = module(torch.from_numpy(sample)).numpy()
    assert_allclose(session.run(None, {"x": sample})[0], expect, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the real MiniLM


@pytest.mark.slow
def test_minilm_depth_three():
    from presso.examples.minilm import model_folder
    from presso.examples.texts import stdlib_sentences
    from presso.model.huggingface import load_hf_folder

    loaded = load_hf_folder(model_folder())
    batch = loaded.tokenizer(
        stdlib_sentences(4), padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    inputs = tuple(batch[n] for n in loaded.input_names)
    student, notes = derive_student(
        loaded.module, inputs, StudentPlan(depth=3), transformer=loaded.transformer
    )
    # 6 layers of 1,774,464 parameters (hidden 384, FFN 1536): three go
    assert count_parameters(loaded.module) == 22_713_216
    assert count_parameters(student) == 22_713_216 - 3 * 1_774_464 == 17_389_824
    assert notes == ["kept encoder layers 0, 2, 5 of 6: 22,713,216 -> 17,389,824 parameters"]
    assert student.encoder.config.num_hidden_layers == 3
    with torch.no_grad():
        out, ref = student(*inputs), loaded.module(*inputs)
    assert out.shape == ref.shape == (4, 384) and torch.isfinite(out).all()
