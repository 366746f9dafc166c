"""Distillation students: derived (shallower / narrower, teacher or fresh weights) and plain MLPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.data.examples._cache import Standardize
from presso.data.examples.digits import DigitsCNN
from presso.data.examples.tabular import TabularMLP
from presso.errors import PressoError
from presso.export.onnx_export import export_onnx
from presso.model.loaded import LoadedModel, count_parameters
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

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"width": 0.0}, "'width'.*\\(0, 1\\]"), ({"width": 1.5}, "'width'"), ({"width": True}, "'width'"),
    ({"depth": 0}, "'depth'.*>= 1"), ({"depth": 2.0}, "'depth'"), ({"init": "zeros"}, "'init'.*teacher, random"),
])
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
        assert notes == [(f"kept {width:.0%} of channels / neurons (the output layer keeps its size): "
                          f"38,282 -> {params:,} parameters")]


def test_digits_quarter_of_the_parameters_needs_width_045():
    # width 0.5 keeps 25.6% (every layer's in and out halve, the 10-class head only its inputs);
    # 0.45 is the largest multiple of 0.05 keeping at most a quarter.
    counts = {w: count_parameters(derive_student(_digits(), PIXELS, StudentPlan(width=w))[0])
              for w in (0.5, 0.45)}
    assert counts[0.5] / 38_282 == pytest.approx(0.2560, abs=1e-4)
    assert counts[0.45] / 38_282 == pytest.approx(0.1974, abs=1e-4) and counts[0.45] <= 38_282 / 4


def test_teacher_init_keeps_surviving_weights_and_teacher_is_untouched():
    teacher = _digits().train()
    before = _state(teacher)
    student, _ = derive_student(teacher, PIXELS, StudentPlan(width=0.5))
    _assert_same_state(before, _state(teacher))
    assert teacher.training and student.training  # the student mirrors the teacher's mode
    kept, full = student.features[0].weight, teacher.features[0].weight        # (8, 1, 3, 3), (16, 1, 3, 3)
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


def test_depth_above_the_block_count_is_refused():
    with pytest.raises(PressoError, match="'depth' of 5 exceeds the teacher's 4 same-shape blocks.*\\[1, 4\\]"):
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
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64,
                                     attn_implementation="eager")
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
    assert len(find_encoder_layers(student)) == 2 and len(find_encoder_layers(teacher)) == 4
    assert student.encoder.config.num_hidden_layers == 2 and teacher.encoder.config.num_hidden_layers == 4
    assert count_parameters(student) == BERT_PARAMS - 2 * BERT_LAYER == 23_520
    assert notes == ["kept encoder layers 0, 3 of 4: 40,608 -> 23,520 parameters"]
    for new, old in ((0, 0), (1, 3)):
        _assert_same_state(_state(student.encoder.encoder.layer[new]), _state(teacher.encoder.encoder.layer[old]))
        assert student.encoder.encoder.layer[new].attention.self.layer_idx == new
    with torch.no_grad():
        assert student(*inputs).shape == teacher(*inputs).shape == (2, 32)


def test_bert_width_halves_heads_and_ffn(tiny_bert):
    teacher, inputs = tiny_bert
    student, notes = derive_student(teacher, inputs, StudentPlan(width=0.5))
    for _, layer in find_encoder_layers(student):
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
    with pytest.raises(PressoError, match="no BERT-style encoder layers"):
        derive_student(_digits(), PIXELS, StudentPlan(depth=1), transformer={"model_type": "bert"})


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
    loaded = LoadedModel(name=which, source="test", module=module.eval(), input_names=["x"],
                         dynamic_axes={"x": {0: "batch"}})
    path = export_onnx(loaded, {"x": sample}, tmp_path / "student.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    with torch.no_grad():
        expect = module(torch.from_numpy(sample)).numpy()
    assert_allclose(session.run(None, {"x": sample})[0], expect, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the real MiniLM

@pytest.mark.slow
def test_minilm_depth_three():
    from presso.data.examples.minilm import model_folder
    from presso.data.examples.texts import stdlib_sentences
    from presso.model.huggingface import load_hf_folder

    loaded = load_hf_folder(model_folder())
    batch = loaded.tokenizer(stdlib_sentences(4), padding=True, truncation=True, max_length=32,
                             return_tensors="pt")
    inputs = tuple(batch[n] for n in loaded.input_names)
    student, notes = derive_student(loaded.module, inputs, StudentPlan(depth=3),
                                    transformer=loaded.transformer)
    # 6 layers of 1,774,464 parameters (hidden 384, FFN 1536): three go
    assert count_parameters(loaded.module) == 22_713_216
    assert count_parameters(student) == 22_713_216 - 3 * 1_774_464 == 17_389_824
    assert notes == ["kept encoder layers 0, 2, 5 of 6: 22,713,216 -> 17,389,824 parameters"]
    assert student.encoder.config.num_hidden_layers == 3
    with torch.no_grad():
        out, ref = student(*inputs), loaded.module(*inputs)
    assert out.shape == ref.shape == (4, 384) and torch.isfinite(out).all()
