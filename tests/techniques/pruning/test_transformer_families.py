"""Transformer pruning across encoder families: blocks found from the data flow, not names.

Each family is a tiny random model built from its transformers config class (nothing is
fetched), as the base model and as ``*ForSequenceClassification``. Half the heads and half the
feed-forward neurons go; the pruned model must equal the masked original and remove exactly
the parameters the shapes say.
"""

from __future__ import annotations

import copy

import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.techniques.pruning.transformer import (
    attention_shape,
    find_encoder_blocks,
    masked_transformer,
    prune_transformer,
)

transformers = pytest.importorskip("transformers")

H, HEADS, FFN, LAYERS = 32, 4, 64, 2
D = H // HEADS
COMMON = {
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}


def _configs() -> dict:
    t = transformers
    deberta = {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 32}
    return {
        "bert": (t.BertConfig(**COMMON), t.BertModel, t.BertForSequenceClassification),
        "roberta": (t.RobertaConfig(**COMMON), t.RobertaModel, t.RobertaForSequenceClassification),
        "xlm-roberta": (
            t.XLMRobertaConfig(**COMMON),
            t.XLMRobertaModel,
            t.XLMRobertaForSequenceClassification,
        ),
        "electra": (
            t.ElectraConfig(embedding_size=16, **COMMON),
            t.ElectraModel,
            t.ElectraForSequenceClassification,
        ),
        "distilbert": (
            t.DistilBertConfig(
                dim=H,
                n_heads=HEADS,
                hidden_dim=FFN,
                n_layers=LAYERS,
                vocab_size=100,
                max_position_embeddings=64,
            ),
            t.DistilBertModel,
            t.DistilBertForSequenceClassification,
        ),
        # DeBERTa-v3 style: relative positions through the layer's own key / query projections
        "deberta-v2-shared-keys": (
            t.DebertaV2Config(
                share_att_key=True, position_buckets=16, norm_rel_ebd="layer_norm", **deberta, **COMMON
            ),
            t.DebertaV2Model,
            t.DebertaV2ForSequenceClassification,
        ),
        # separate pos_key_proj / pos_query_proj: head-structured too, sliced with q / k
        "deberta-v2": (
            t.DebertaV2Config(share_att_key=False, **deberta, **COMMON),
            t.DebertaV2Model,
            t.DebertaV2ForSequenceClassification,
        ),
        "mpnet": (t.MPNetConfig(**COMMON), t.MPNetModel, t.MPNetForSequenceClassification),
        "albert": (
            t.AlbertConfig(embedding_size=16, **COMMON),
            t.AlbertModel,
            t.AlbertForSequenceClassification,
        ),
    }


CONFIGS = _configs()
PRUNABLE = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2-shared-keys", "deberta-v2"]
# Linears sliced with the heads beyond Q, K, V: DeBERTa's pos_key_proj and pos_query_proj.
EXTRA_HEAD_PROJECTIONS = {"deberta-v2": 2}


def build(family: str, head: bool) -> nn.Module:
    config, base, classifier = CONFIGS[family]
    torch.manual_seed(0)
    model = (classifier if head else base)(copy.deepcopy(config))
    return model.eval()


def inputs(batch: int = 2, seq: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2 :] = 0
    return {"input_ids": torch.randint(3, 100, (batch, seq), generator=g), "attention_mask": mask}


def out(model: nn.Module, feed: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**feed)[0]


def cut_per_layer(extra_head_projections: int) -> int:
    """Parameters one layer loses with 2 of 4 heads of 8 and 32 of 64 neurons removed."""
    half_width, half_ffn = H // 2, FFN // 2
    heads = (3 + extra_head_projections) * (half_width * H + half_width) + half_width * H
    ffn = (half_ffn * H + half_ffn) + half_ffn * H
    return heads + ffn


@pytest.mark.parametrize("head", [False, True], ids=["base", "classifier"])
@pytest.mark.parametrize("family", PRUNABLE)
def test_half_heads_and_neurons_equal_the_masked_model(family, head):
    model = build(family, head)
    original = copy.deepcopy(model)
    feed = inputs()
    report = prune_transformer(model, feed, heads_ratio=0.5, ffn_ratio=0.5)

    assert report.params_before - report.params_after == LAYERS * cut_per_layer(
        EXTRA_HEAD_PROJECTIONS.get(family, 0)
    )
    assert [(s["heads_kept"], s["heads_removed"], s["ffn_kept"]) for s in report.summary()] == [
        (2, 2, 32)
    ] * 2
    assert_allclose(
        out(model, feed).numpy(),
        out(masked_transformer(original, report), feed).numpy(),
        rtol=1e-4,
        atol=1e-6,
    )
    scale = out(original, feed).abs().max()  # random classifier heads give logits near 0.01
    assert (out(model, feed) - out(original, feed)).abs().max() > 1e-3 * scale  # the cut changed something
    assert attention_shape(model) == {"num_heads": 2, "hidden_size": 16}
    for block in find_encoder_blocks(model, feed):  # the module's own head count follows the cut
        attention = model.get_submodule(block.attention)
        counts = [v for m in attention.modules() for k, v in vars(m).items() if k.endswith("heads")]
        assert counts and set(counts) == {2}
        assert (block.n_heads, block.head_size, block.n_ffn) == (2, D, 32)
    longer = inputs(batch=3, seq=20, seed=1)  # another batch and sequence length still runs
    assert out(model, longer).shape[0] == 3 and torch.isfinite(out(model, longer)).all()


def test_blocks_are_found_inside_any_wrapper():
    class Wrapper(nn.Module):  # a loader's pooling wrapper: the blocks sit two levels down
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = nn.ModuleDict({"model": inner})

        def forward(self, input_ids, attention_mask):
            return self.inner["model"](input_ids=input_ids, attention_mask=attention_mask)[0].mean(1)

    model = Wrapper(build("distilbert", head=False))
    blocks = find_encoder_blocks(model, tuple(inputs().values()))
    assert [b.name for b in blocks] == ["inner.model.transformer.layer.0", "inner.model.transformer.layer.1"]
    assert blocks[0].heads_in == tuple(f"inner.model.transformer.layer.0.attention.{p}_lin" for p in "qkv")
    assert (blocks[0].attn_out, blocks[0].ffn_in, blocks[0].ffn_out) == (
        "inner.model.transformer.layer.0.attention.out_lin",
        ("inner.model.transformer.layer.0.ffn.lin1",),
        "inner.model.transformer.layer.0.ffn.lin2",
    )


@pytest.mark.parametrize("head", [False, True], ids=["base", "classifier"])
def test_mpnet_refuses_heads_and_prunes_neurons(head):
    model = build("mpnet", head)
    original = copy.deepcopy(model)
    feed = inputs()
    with pytest.raises(
        PressoError,
        match=r"cannot remove heads of '(mpnet\.)?encoder\.layer\.0': its attention scores add "
        r"'(mpnet\.)?encoder\.relative_attention_bias\.weight', a per-head term .*set heads to 0",
    ):
        prune_transformer(model, feed, heads_ratio=0.5, ffn_ratio=0.5)
    report = prune_transformer(model, feed, heads_ratio=0.0, ffn_ratio=0.5)
    assert report.params_before - report.params_after == LAYERS * (32 * H + 32 + 32 * H)
    assert_allclose(
        out(model, feed).numpy(),
        out(masked_transformer(original, report), feed).numpy(),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("head", [False, True], ids=["base", "classifier"])
def test_albert_shared_layers_are_refused(head):
    model = build("albert", head)
    before = sum(p.numel() for p in model.parameters())
    with pytest.raises(
        PressoError, match=r"runs 2 times per forward \(its layers share weights, as in ALBERT\)"
    ):
        prune_transformer(model, inputs(), heads_ratio=0.0, ffn_ratio=0.5)
    assert sum(p.numel() for p in model.parameters()) == before


def torch_encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()


def test_torch_transformer_encoder_prunes_neurons_and_refuses_heads():
    model = torch_encoder()
    original = copy.deepcopy(model)
    x = torch.randn(2, 10, H, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        PressoError, match=r"'layers\.0\.self_attn' is an nn\.MultiheadAttention.*set heads to 0"
    ):
        prune_transformer(model, (x,), heads_ratio=0.5, ffn_ratio=0.5)
    # activation importance: linear2's input for neurons, no head scores (heads stay)
    report = prune_transformer(model, (x,), heads_ratio=0.0, ffn_ratio=0.5, importance="activation")
    assert [b.ffn_in for b in find_encoder_blocks(model, (x,))] == [
        ("layers.0.linear1",),
        ("layers.1.linear1",),
    ]
    assert model.layers[0].linear1.out_features == model.layers[1].linear2.in_features == 32
    assert report.params_before - report.params_after == LAYERS * (32 * H + 32 + 32 * H)
    with torch.no_grad():  # eval + no_grad takes PyTorch's fused fast path: it reads the new shapes
        expect = masked_transformer(original, report)(x)
        assert_allclose(model(x).numpy(), expect.numpy(), atol=1e-5)
        assert model(torch.randn(3, 7, H)).shape == (3, 7, H)
