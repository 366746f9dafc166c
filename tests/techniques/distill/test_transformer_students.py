"""Students of every encoder family: shallower (layers dropped) and narrower (heads / neurons
removed), with the encoder blocks found from the teacher's data flow."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters
from presso.techniques.distill.students import StudentPlan, derive_student
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


@pytest.mark.parametrize("plan", [StudentPlan(depth=2), StudentPlan(width=0.5)], ids=["depth", "width"])
def test_albert_students_are_refused(plan):
    teacher, inputs = teacher_and_inputs("albert")
    with pytest.raises(
        PressoError, match=r"runs 3 times per forward \(its layers share weights, as in ALBERT\)"
    ):
        derive_student(teacher, inputs, plan)
