"""Students of every encoder family: shallower (layers dropped) and narrower (heads / neurons
removed), with the encoder blocks found from the teacher's data flow."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters, first_tensor
from presso.techniques.distill.students import StudentPlan, copied_layers, derive_student
from presso.techniques.pruning.transformer import attention_shape, find_encoder_blocks

transformers = pytest.importorskip("transformers")

H, HEADS, FFN = 32, 4, 64
COMMON = {
    "hidden_size": H,
    "num_hidden_layers": 3,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}
IDS = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, 10, dtype=torch.long)
MASK[1, 6:] = 0


def hf(family: str) -> nn.Module:
    t = transformers
    make = {
        "bert": lambda: t.BertModel(t.BertConfig(**COMMON)),
        "roberta": lambda: t.RobertaForSequenceClassification(t.RobertaConfig(**COMMON)),
        "xlm-roberta": lambda: t.XLMRobertaModel(t.XLMRobertaConfig(**COMMON)),
        "electra": lambda: t.ElectraForSequenceClassification(t.ElectraConfig(embedding_size=16, **COMMON)),
        "distilbert": lambda: t.DistilBertForSequenceClassification(
            t.DistilBertConfig(dim=H, n_heads=HEADS, hidden_dim=FFN, n_layers=3, vocab_size=100)
        ),
        "deberta-v2": lambda: t.DebertaV2Model(
            t.DebertaV2Config(
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                share_att_key=True,
                position_buckets=16,
                norm_rel_ebd="layer_norm",
                **COMMON,
            )
        ),
        "mpnet": lambda: t.MPNetModel(t.MPNetConfig(**COMMON)),
        "albert": lambda: t.AlbertModel(t.AlbertConfig(embedding_size=16, **COMMON)),
    }[family]
    torch.manual_seed(0)
    return make().eval()


def torch_encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()


def teacher_and_inputs(family: str) -> tuple[nn.Module, tuple]:
    if family == "torch":
        return torch_encoder(), (torch.randn(2, 10, H, generator=torch.Generator().manual_seed(0)),)
    return hf(family), (IDS, MASK)


def _layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return config.num_hidden_layers if config is not None else model.num_layers


FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "mpnet", "torch"]


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_keeps_first_and_last_layer(family):
    teacher, inputs = teacher_and_inputs(family)
    blocks = find_encoder_blocks(teacher, inputs)
    middle = sum(p.numel() for p in teacher.get_submodule(blocks[1].name).parameters())
    student, notes = derive_student(teacher, inputs, StudentPlan(depth=2))

    assert count_parameters(student) == count_parameters(teacher) - middle
    assert [b.name.rpartition(".")[2] for b in find_encoder_blocks(student, inputs)] == ["0", "1"]
    kept = student.get_submodule(blocks[1].name).state_dict()  # the new layer 1 is the old layer 2
    old = teacher.get_submodule(blocks[2].name).state_dict()
    assert all(torch.equal(kept[k], old[k]) for k in old)
    assert _layer_count(student) == 2 and _layer_count(teacher) == 3
    assert notes[0].startswith("kept encoder layers 0, 2 of 3")
    with torch.no_grad():
        assert student(*inputs)[0].shape == teacher(*inputs)[0].shape


# per layer: 2 of 4 heads of 8 (Q, K, V 16 rows of 32 + bias, 16 output columns) and 32 of 64 neurons
HEADS_CUT, FFN_CUT = 3 * (16 * H + 16) + 16 * H, (32 * H + 32) + 32 * H


@pytest.mark.parametrize("family", FAMILIES)
def test_width_halves_heads_and_neurons_where_heads_can_go(family):
    teacher, inputs = teacher_and_inputs(family)
    student, notes = derive_student(teacher, inputs, StudentPlan(width=0.5))
    heads_fixed = family in ("mpnet", "torch")  # a shared relative bias / nn.MultiheadAttention
    cut = FFN_CUT if heads_fixed else HEADS_CUT + FFN_CUT
    assert count_parameters(teacher) - count_parameters(student) == 3 * cut
    blocks = find_encoder_blocks(student, inputs)
    assert {(b.n_heads, b.n_ffn) for b in blocks} == {(HEADS if heads_fixed else 2, 32)}
    if heads_fixed:
        assert "FFN neurons per layer (heads all heads kept: " in notes[0]
    else:
        assert "heads 2 of 4; FFN 32 of 64" in notes[0]
        assert attention_shape(copy.deepcopy(student)) == {"num_heads": 2, "hidden_size": 16}
    with torch.no_grad():
        assert student(*inputs)[0].shape == teacher(*inputs)[0].shape


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_heads_1_narrows_the_feed_forward_layers_only(family):
    teacher, inputs = teacher_and_inputs(family)
    student, notes = derive_student(teacher, inputs, StudentPlan(width=0.5, heads=1.0))
    assert count_parameters(teacher) - count_parameters(student) == 3 * FFN_CUT
    assert {(b.n_heads, b.n_ffn) for b in find_encoder_blocks(student, inputs)} == {(HEADS, 32)}
    assert "heads 4 of 4; FFN 32 of 64" in notes[0]


def test_heads_alone_keeps_every_ffn_neuron():
    teacher, inputs = teacher_and_inputs("bert")
    student, notes = derive_student(teacher, inputs, StudentPlan(heads=0.5))
    assert count_parameters(teacher) - count_parameters(student) == 3 * HEADS_CUT
    assert {(b.n_heads, b.n_ffn) for b in find_encoder_blocks(student, inputs)} == {(2, FFN)}
    with pytest.raises(PressoError, match=r"The 'heads' of a student must be a float in \(0, 1\]"):
        StudentPlan(heads=0.0)


@pytest.mark.parametrize("plan", [StudentPlan(depth=2), StudentPlan(width=0.5)], ids=["depth", "width"])
def test_albert_students_are_refused(plan):
    teacher, inputs = teacher_and_inputs("albert")
    with pytest.raises(
        PressoError, match=r"runs 3 times per forward \(its layers share weights, as in ALBERT\)"
    ):
        derive_student(teacher, inputs, plan)


# ---------------------------------------------------------------- which layers: measured, listed


def _mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_layers_records_the_measured_cosine_of_each_step(family):
    teacher, inputs = teacher_and_inputs(family)
    student, notes = derive_student(teacher, inputs, StudentPlan(depth=1, layers="auto"))
    steps = re.findall(r"(\d) \(cosine (-?[\d.]+)\)", notes[0])
    kept = int(re.search(r"kept encoder layers (\d) of 3", notes[0]).group(1))
    assert len(steps) == 2 and kept not in {int(k) for k, _ in steps}
    with torch.no_grad():
        measured = _mean_cos(first_tensor(student(*inputs)), first_tensor(teacher(*inputs)))
    # the last step's figure is the student's own cosine to the teacher (4 decimals in the note)
    assert abs(measured - float(steps[-1][1])) < 6e-5
    assert float(steps[0][1]) >= float(steps[-1][1]) - 1e-9  # dropping more never measured closer here
    assert _layer_count(student) == 1


def test_auto_layers_drops_a_layer_that_does_nothing():
    teacher, inputs = teacher_and_inputs("bert")
    with torch.no_grad():  # layer 0 adds zero to its residual stream; post-LN of a normalised input: identity
        for lin in (teacher.encoder.layer[0].attention.output.dense, teacher.encoder.layer[0].output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
    auto, notes = derive_student(teacher, inputs, StudentPlan(depth=2, layers="auto"))
    even, _ = derive_student(teacher, inputs, StudentPlan(depth=2, layers="even"))
    assert notes[0].startswith(
        "kept encoder layers 1, 2 of 3 (by greedy removal on the calibration inputs: dropped 0 (cosine 1.0000))"
    )
    with torch.no_grad():
        ref = teacher(*inputs).last_hidden_state
        assert torch.allclose(auto(*inputs).last_hidden_state, ref, atol=1e-4)
        auto_cos = _mean_cos(auto(*inputs).last_hidden_state, ref)
        even_cos = _mean_cos(even(*inputs).last_hidden_state, ref)  # even spacing drops layer 1
    assert auto_cos > 1 - 1e-6 and even_cos < auto_cos - 1e-5


def test_auto_layers_measures_on_the_calibration_inputs():
    teacher, inputs = teacher_and_inputs("bert")
    calibration = (
        torch.randint(3, 100, (6, 12), generator=torch.Generator().manual_seed(1)),
        torch.ones(6, 12, dtype=torch.long),
    )
    student, notes = derive_student(
        teacher, inputs, StudentPlan(depth=2, layers="auto"), calibration=calibration
    )
    cos = float(re.search(r"cosine ([\d.]+)", notes[0]).group(1))
    with torch.no_grad():
        assert (
            abs(_mean_cos(first_tensor(student(*calibration)), first_tensor(teacher(*calibration))) - cos)
            < 6e-5
        )


def test_listed_layers_are_kept_and_bad_lists_refused():
    teacher, inputs = teacher_and_inputs("distilbert")
    student, notes = derive_student(teacher, inputs, StudentPlan(layers=(2, 1)))
    assert notes[0].startswith("kept encoder layers 1, 2 of 3 (as listed)")
    assert _layer_count(student) == 2
    old = teacher.distilbert.transformer.layer[1].state_dict()
    assert all(
        torch.equal(student.distilbert.transformer.layer[0].state_dict()[k], v) for k, v in old.items()
    )
    with pytest.raises(PressoError, match=r"name 3, but the teacher has 3 encoder layers \(indices 0 to 2\)"):
        derive_student(teacher, inputs, StudentPlan(layers=(0, 3)))
    with pytest.raises(PressoError, match="'depth' 1 differs from the 2 'layers' listed"):
        StudentPlan(depth=1, layers=(0, 1))
    with pytest.raises(PressoError, match="must list distinct layer indices"):
        StudentPlan(layers=(1, 1))
    with pytest.raises(PressoError, match="must be auto, even or a list"):
        StudentPlan(depth=1, layers="best")


@pytest.mark.parametrize("family", FAMILIES)
def test_copied_layers_pair_each_kept_layer_with_its_teacher_layer(family):
    teacher, inputs = teacher_and_inputs(family)
    blocks = [b.name for b in find_encoder_blocks(teacher, inputs)]
    student, _ = derive_student(teacher, inputs, StudentPlan(layers=(0, 2)))
    pairs = copied_layers(student)
    assert pairs == [(blocks[0], blocks[0]), (blocks[1], blocks[2])]
    for s_name, t_name in pairs:  # the names lead to the same weights in student and teacher
        s_state, t_state = (
            student.get_submodule(s_name).state_dict(),
            teacher.get_submodule(t_name).state_dict(),
        )
        assert all(torch.equal(s_state[k], v) for k, v in t_state.items())
    # A student with every layer, or derived from that student, was copied from no other layer.
    assert copied_layers(derive_student(teacher, inputs, StudentPlan(width=0.5))[0]) == []
    assert copied_layers(derive_student(student, inputs, StudentPlan(width=0.5))[0]) == []
    assert copied_layers(teacher) == []


def test_layer_hints_are_each_copied_layers_relative_error_averaged():
    """Trainee with the copied layers and normalize=True: the hint value is, per kept layer,
    the MSE between its output and its teacher layer's relative to the teacher's mean square
    (HF's own output_hidden_states as the reference), averaged over the layers."""
    from presso.techniques.distill.objective import Trainee

    teacher = hf("bert")
    student, _ = derive_student(teacher, (IDS, MASK), StudentPlan(layers=(0, 2)))
    with torch.no_grad():  # a student that no longer equals its teacher layers
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    trainee = Trainee(student, teacher, copied_layers(student), (IDS, MASK), normalize=True)
    trainee(IDS, MASK)
    with torch.no_grad():
        s = student(IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
        t = teacher(IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
    expected = np.mean(
        [float(((s[j + 1] - t[k + 1]) ** 2).mean() / (t[k + 1] ** 2).mean()) for j, k in ((0, 0), (1, 2))]
    )
    assert trainee.hint_value is not None
    assert abs(trainee.hint_value.item() - expected) < 1e-5 * expected and expected > 1e-3
