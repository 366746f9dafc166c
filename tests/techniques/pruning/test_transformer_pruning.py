"""Transformer pruning: heads and feed-forward neurons removed from BERT layers, exactly."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.export.onnx_export import export_onnx
from presso.model.huggingface import MeanPooledEncoder
from presso.model.loaded import LoadedModel
from presso.techniques.pruning.transformer import (
    attention_shape,
    find_encoder_layers,
    masked_transformer,
    prune_transformer,
)

HIDDEN, HEADS, FFN, LAYERS = 64, 4, 128, 2
HEAD_SIZE = HIDDEN // HEADS
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def tiny_bert(attn: str = "eager") -> MeanPooledEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        vocab_size=100,
    )
    config._attn_implementation = attn
    return MeanPooledEncoder(BertModel(config)).eval()


def tiny_inputs(batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2 :] = 0  # one padded row
    return ids, mask, torch.zeros_like(ids)


def layer(model: MeanPooledEncoder, i: int) -> nn.Module:
    return model.encoder.encoder.layer[i]


def scale_heads(block: nn.Module, heads: list[int], factor: float) -> None:
    """Scale every weight touching ``heads``: their Q/K/V rows and attention.output columns."""
    cols = [h * HEAD_SIZE + j for h in heads for j in range(HEAD_SIZE)]
    with torch.no_grad():
        for lin in (block.attention.self.query, block.attention.self.key, block.attention.self.value):
            lin.weight[cols] *= factor
            lin.bias[cols] *= factor
        block.attention.output.dense.weight[:, cols] *= factor


def scale_neurons(block: nn.Module, neurons: list[int], factor: float) -> None:
    with torch.no_grad():
        block.intermediate.dense.weight[neurons] *= factor
        block.intermediate.dense.bias[neurons] *= factor
        block.output.dense.weight[:, neurons] *= factor


def removed_as_lists(report) -> tuple[dict, dict]:
    return ({i: list(h) for i, h in report.heads.items()}, {i: list(n) for i, n in report.neurons.items()})


def prune_and_compare(model: nn.Module, inputs, **options):
    """Prune ``model`` in place; assert it equals its masked original; return the report."""
    original = copy.deepcopy(model)
    with torch.no_grad():
        before = model(*inputs)
    report = prune_transformer(model, inputs, **options)
    with torch.no_grad():
        pruned, masked = model(*inputs), masked_transformer(original, report)(*inputs)
    assert pruned.shape == before.shape
    assert_allclose(pruned.numpy(), masked.numpy(), atol=1e-5, rtol=0)
    return report


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tiny_bert_counts_shape_and_masked_equivalence(attn):
    model = tiny_bert(attn)
    original = copy.deepcopy(model)
    inputs = tiny_inputs()
    report = prune_and_compare(model, inputs, heads_ratio=0.5, ffn_ratio=0.5)

    assert report.params_before == sum(p.numel() for p in original.parameters())
    # Per layer: 2 of 4 heads (32 of 64 Q/K/V rows + biases, 32 columns of attention.output)
    # and 64 of 128 neurons (intermediate rows + biases, output.dense columns).
    heads_cut = 3 * (32 * HIDDEN + 32) + 32 * HIDDEN
    ffn_cut = (64 * HIDDEN + 64) + 64 * HIDDEN
    assert (heads_cut, ffn_cut) == (8288, 8256)
    assert report.params_before - report.params_after == LAYERS * (heads_cut + ffn_cut) == 33088
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.summary() == [
        {
            "layer": f"encoder.encoder.layer.{i}",
            "heads_kept": 2,
            "heads_removed": 2,
            "ffn_kept": 64,
            "ffn_removed": 64,
        }
        for i in range(LAYERS)
    ]
    attention = layer(model, 0).attention.self
    assert (attention.num_attention_heads, attention.all_head_size, attention.attention_head_size) == (
        2,
        32,
        16,
    )
    assert attention.query.weight.shape == (32, HIDDEN)
    assert layer(model, 0).attention.output.dense.weight.shape == (HIDDEN, 32)
    assert layer(model, 1).intermediate.dense.weight.shape == (64, HIDDEN)
    assert layer(model, 1).output.dense.weight.shape == (HIDDEN, 64)
    assert model.encoder.config.num_attention_heads == HEADS  # the shared config is untouched
    # The masked model is not trivially the original: pruning changed the outputs.
    with torch.no_grad():
        assert (model(*inputs) - original(*inputs)).abs().max() > 1e-3
    # Other batch and sequence sizes still run (the reshape infers the head count).
    with torch.no_grad():
        assert model(*tiny_inputs(batch=3, seq=9, seed=1)).shape == (3, HIDDEN)


def test_find_encoder_layers_names_wrapped_layers():
    names = [name for name, _ in find_encoder_layers(tiny_bert(), tiny_inputs())]
    assert names == ["encoder.encoder.layer.0", "encoder.encoder.layer.1"]
    assert find_encoder_layers(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (torch.randn(2, 4),)) == []


def test_l2_removes_the_smallest_norms():
    model = tiny_bert()
    scale_heads(layer(model, 0), [1, 2], 0.1)
    scale_heads(layer(model, 1), [0, 3], 0.1)
    small = sorted(torch.randperm(FFN, generator=torch.Generator().manual_seed(3))[:64].tolist())
    scale_neurons(layer(model, 0), small, 0.1)
    report = prune_and_compare(model, tiny_inputs(), heads_ratio=0.5, ffn_ratio=0.5, importance="l2")
    heads, neurons = removed_as_lists(report)
    assert heads == {0: [1, 2], 1: [0, 3]}
    assert neurons[0] == small


def test_taylor_removes_heads_and_neurons_that_cannot_reach_the_output():
    model = tiny_bert()
    with torch.no_grad():  # zero output columns: these heads / neurons have zero gradient * weight
        layer(model, 0).attention.output.dense.weight[:, 16:32] = 0  # head 1
        layer(model, 0).attention.output.dense.weight[:, 48:64] = 0  # head 3
        layer(model, 1).output.dense.weight[:, 64:] = 0  # neurons 64..127
    report = prune_and_compare(model, tiny_inputs(), heads_ratio=0.5, ffn_ratio=0.5, importance="taylor")
    heads, neurons = removed_as_lists(report)
    assert heads[0] == [1, 3]
    assert neurons[1] == list(range(64, 128))


def test_activation_removes_silent_heads_and_neurons():
    model = tiny_bert()
    with torch.no_grad():
        value = layer(model, 1).attention.self.value
        value.weight[0:16] = 0  # head 0 attends to zero values: its context vectors are zero
        value.bias[0:16] = 0
        value.weight[32:48] = 0  # head 2
        value.bias[32:48] = 0
        dense = layer(model, 0).intermediate.dense
        dense.weight[::2] = 0  # even neurons: GELU(-20) ~ 0 for every token
        dense.bias[::2] = -20.0
    report = prune_and_compare(model, tiny_inputs(), heads_ratio=0.5, ffn_ratio=0.5, importance="activation")
    heads, neurons = removed_as_lists(report)
    assert heads[1] == [0, 2]
    assert neurons[0] == list(range(0, FFN, 2))


def test_random_is_reproducible_with_its_seed():
    reports = [
        prune_and_compare(
            tiny_bert(), tiny_inputs(), heads_ratio=0.5, ffn_ratio=0.5, importance="random", seed=seed
        )
        for seed in (7, 7, 8)
    ]
    assert removed_as_lists(reports[0]) == removed_as_lists(reports[1])
    assert removed_as_lists(reports[0])[1] != removed_as_lists(reports[2])[1]


def test_global_scope_keeps_a_head_per_layer_and_rounds_neurons():
    model = tiny_bert()
    scale_heads(layer(model, 0), list(range(HEADS)), 0.01)  # layer 0 ranks lowest
    scale_neurons(layer(model, 0), list(range(FFN)), 0.01)
    report = prune_and_compare(
        model, tiny_inputs(), heads_ratio=0.5, ffn_ratio=0.9, scope="global", round_to=8
    )
    summary = report.summary()
    # 4 of 8 heads go: layer 0 keeps its floor of 1, the 4th comes from layer 1.
    assert [(s["heads_kept"], s["heads_removed"]) for s in summary] == [(1, 3), (3, 1)]
    # round(0.9 * 256) = 230 neurons: layer 0 down to its floor of round_to = 8 (120 removed),
    # 110 from layer 1 leaves 18, rounded up to a multiple of 8: 24.
    assert [s["ffn_kept"] for s in summary] == [8, 24]
    assert attention_shape(model) == {"num_heads": 0, "hidden_size": 0}  # no single head count


@pytest.mark.parametrize(("round_to", "kept"), [(8, 96), (16, 96), (None, 90), (1, 90)])
def test_round_to_keeps_multiples(round_to, kept):
    model = tiny_bert()
    report = prune_and_compare(model, tiny_inputs(), ffn_ratio=0.3, round_to=round_to)
    # round(0.3 * 128) = 38 removed leaves 90, rounded up to a multiple of round_to.
    assert [s["ffn_kept"] for s in report.summary()] == [kept, kept]
    assert layer(model, 0).intermediate.dense.out_features == kept
    assert report.heads == {0: (), 1: ()}


def test_heads_never_all_removed_in_layer_scope():
    report = prune_and_compare(tiny_bert(), tiny_inputs(), heads_ratio=0.99, ffn_ratio=0.99)
    # round(0.99 * 4) = 4 heads would empty the layer: one stays; neurons keep round_to = 8.
    assert [(s["heads_kept"], s["ffn_kept"]) for s in report.summary()] == [(1, 8), (1, 8)]


def test_keyword_inputs_on_a_bare_bert_model():
    model = tiny_bert().encoder
    ids, mask, types = tiny_inputs()
    kwargs = {"input_ids": ids, "attention_mask": mask}
    report = prune_transformer(model, kwargs, heads_ratio=0.25, ffn_ratio=0.5)
    assert list(report.layer_names) == ["encoder.layer.0", "encoder.layer.1"]
    with torch.no_grad():
        assert model(**kwargs).last_hidden_state.shape == (2, 16, HIDDEN)
    assert report.params_before - report.params_after == LAYERS * (
        3 * (16 * HIDDEN + 16) + 16 * HIDDEN + 64 * HIDDEN + 64 + 64 * HIDDEN
    )


def test_pruned_model_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    model = tiny_bert()
    inputs = tiny_inputs()
    prune_transformer(model, inputs, heads_ratio=0.5, ffn_ratio=0.5)
    loaded = LoadedModel(
        name="tiny-bert",
        source="test",
        module=model,
        input_names=INPUT_NAMES,
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES},
    )
    sample = dict(zip(INPUT_NAMES, (t.numpy() for t in inputs), strict=True))
    path = export_onnx(loaded, sample, tmp_path / "pruned.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feed in (inputs, tiny_inputs(batch=3, seq=9, seed=1)):  # dynamic batch and sequence
        got = session.run(None, dict(zip(INPUT_NAMES, (t.numpy() for t in feed), strict=True)))[0]
        with torch.no_grad():
            expect = model(*feed).numpy()
        assert_allclose(got, expect, atol=1e-4, rtol=0)


def test_onnxruntime_fusion_needs_the_pruned_head_count(tmp_path):
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    model = tiny_bert()
    with torch.no_grad():  # peaked attention, so computing the wrong heads shows
        for block in model.encoder.encoder.layer:
            block.attention.self.query.weight *= 8
            block.attention.self.key.weight *= 8
    inputs = tiny_inputs()
    prune_transformer(model, inputs, heads_ratio=0.5, ffn_ratio=0.5)
    assert attention_shape(model) == {"num_heads": 2, "hidden_size": 32}
    loaded = LoadedModel(
        name="tiny-bert",
        source="test",
        module=model,
        input_names=INPUT_NAMES,
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES},
    )
    feed = dict(zip(INPUT_NAMES, (t.numpy() for t in inputs), strict=True))
    path = export_onnx(loaded, feed, tmp_path / "pruned.onnx")
    with torch.no_grad():
        expect = model(*inputs).numpy()

    def fused(shape: dict) -> tuple[int, float]:
        optimized = optimize_model(str(path), model_type="bert", opt_level=0, use_gpu=False, **shape)
        optimized.save_model_to_file(str(tmp_path / "fused.onnx"))
        session = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
        attention = optimized.get_fused_operator_statistics().get("Attention", 0)
        return attention, float(np.abs(session.run(None, feed)[0] - expect).max())

    attention, err = fused(attention_shape(model))
    assert attention == LAYERS and err < 1e-4
    attention, err = fused({"num_heads": HEADS, "hidden_size": HIDDEN})  # the config's values
    assert attention == LAYERS and err > 1e-3  # fused, but computes 4 heads of 8: wrong


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"heads_ratio": 1.0},
            r"'heads_ratio' of transformer pruning must be a float in \[0, 1\)\. Got 1\.0",
        ),
        ({"heads_ratio": -0.1}, r"'heads_ratio' .* Got -0\.1 instead"),
        ({"ffn_ratio": "0.5"}, r"'ffn_ratio' .* Got '0\.5' instead"),
        ({"ffn_ratio": True}, r"'ffn_ratio' .* Got True instead"),
        ({"importance": "l1"}, r"'importance' .* one of l2, taylor, activation, random\. Got 'l1'"),
        ({"scope": "model"}, r"'scope' .* one of layer, global\. Got 'model'"),
        ({"round_to": 0}, r"'round_to' .* positive int or None\. Got 0 instead"),
        ({"round_to": 2.5}, r"'round_to' .* Got 2\.5 instead"),
    ],
)
def test_bad_options_are_refused(options, message):
    model = tiny_bert()
    with pytest.raises(PressoError, match=message):
        prune_transformer(model, tiny_inputs(), **options)


def test_a_model_without_bert_layers_is_refused():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(
        PressoError,
        match=r"found no encoder block \(query/key/value Linears on one input read by an "
        r"attention output Linear.*use the 'slim' channel pruning for CNNs/MLPs",
    ):
        prune_transformer(mlp, (torch.randn(2, 8),))


def test_bad_example_inputs_are_refused():
    with pytest.raises(PressoError, match="could not run the model on the example inputs"):
        prune_transformer(tiny_bert(), (torch.zeros(2, 4),))


def test_a_layer_that_breaks_is_named_and_the_model_left_unchanged():
    model = tiny_bert()
    inputs = tiny_inputs()

    def fixed_heads(_module, _args, out):  # an attention that assumes 4 heads of 16
        out[0].view(*out[0].shape[:-1], HEADS, HEAD_SIZE)

    layer(model, 1).attention.self.register_forward_hook(fixed_heads)
    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        expect = model(*inputs)
    with pytest.raises(
        PressoError,
        match=r"broke layer 'encoder\.encoder\.layer\.1': the model no longer "
        r"runs \(RuntimeError",
    ):
        prune_transformer(model, inputs, heads_ratio=0.5, ffn_ratio=0.5)
    assert sum(p.numel() for p in model.parameters()) == before
    assert layer(model, 0).attention.self.num_attention_heads == HEADS  # layer 0 was put back
    with torch.no_grad():
        assert torch.equal(model(*inputs), expect)


def test_masked_transformer_needs_the_unpruned_model():
    model = tiny_bert()
    report = prune_transformer(model, tiny_inputs(), heads_ratio=0.5)
    with pytest.raises(PressoError, match="needs the model as it was before pruning"):
        masked_transformer(model, report)


def _ort_p50_ms(sessions: dict, feed: dict, rounds: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median latency of each session, runs interleaved so drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(warmup + rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


@pytest.mark.slow
def test_minilm_prunes_heads_and_neurons(tmp_path):
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from presso.examples.minilm import model_folder
    from presso.examples.texts import stdlib_sentences
    from presso.model.huggingface import load_hf_folder

    loaded = load_hf_folder(model_folder())
    model = loaded.module
    original = copy.deepcopy(model)
    batch = loaded.tokenizer(
        stdlib_sentences(8), padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    inputs = tuple(batch[n] for n in loaded.input_names)
    report = prune_transformer(model, inputs, heads_ratio=0.25, ffn_ratio=0.5)

    # 6 layers of 12 heads (size 32) and 1536 neurons, hidden 384: 3 heads and 768 neurons
    # go from each layer.
    heads_cut = 3 * (96 * 384 + 96) + 96 * 384
    ffn_cut = (768 * 384 + 768) + 768 * 384
    assert report.params_before - report.params_after == 6 * (heads_cut + ffn_cut) == 4_430_016
    assert all(s["heads_kept"] == 9 and s["ffn_kept"] == 768 for s in report.summary())
    with torch.no_grad():
        pruned, reference = model(*inputs), original(*inputs)
    assert pruned.shape == reference.shape == (8, 384) and torch.isfinite(pruned).all()
    cosine = torch.nn.functional.cosine_similarity(pruned, reference).mean().item()

    sample = {n: batch[n][:1].numpy() for n in loaded.input_names}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    sessions = {}
    for name, module in (("original", original), ("pruned", model)):
        variant = LoadedModel(
            name=name,
            source="test",
            module=module,
            input_names=loaded.input_names,
            dynamic_axes=loaded.dynamic_axes,
        )
        path = export_onnx(variant, sample, tmp_path / f"{name}.onnx")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expect = model(*(batch[n][:1] for n in loaded.input_names)).numpy()
    assert_allclose(sessions["pruned"].run(None, sample)[0], expect, atol=1e-4, rtol=0)
    # ONNX Runtime's transformer fusion (as the int8 stage runs it) with each model's head count.
    assert attention_shape(model) == {"num_heads": 9, "hidden_size": 288}
    for name, shape in (("original", attention_shape(original, inputs)), ("pruned", attention_shape(model))):
        optimized = optimize_model(
            str(tmp_path / f"{name}.onnx"), model_type="bert", opt_level=0, use_gpu=False, **shape
        )
        assert optimized.get_fused_operator_statistics().get("Attention") == 6
        optimized.save_model_to_file(str(tmp_path / f"{name}-fused.onnx"))
        sessions[f"{name} fused"] = ort.InferenceSession(
            str(tmp_path / f"{name}-fused.onnx"), options, providers=["CPUExecutionProvider"]
        )
    assert_allclose(sessions["pruned fused"].run(None, sample)[0], expect, atol=1e-4, rtol=0)

    p50 = _ort_p50_ms(sessions, sample)
    print(
        f"\nMiniLM-L6 pruned heads 0.25 / ffn 0.5: params {report.params_before:,} -> "
        f"{report.params_after:,}; cosine to original (no fine-tuning) {cosine:.3f}\n"
        f"ORT fp32 batch 1 seq 128, 2 threads, p50 of 30 interleaved: "
        f"original {p50['original']:.2f} ms, pruned {p50['pruned']:.2f} ms "
        f"({p50['original'] / p50['pruned']:.2f}x); with transformer fusion: original "
        f"{p50['original fused']:.2f} ms, pruned {p50['pruned fused']:.2f} ms "
        f"({p50['original fused'] / p50['pruned fused']:.2f}x)"
    )
    assert np.isfinite(list(p50.values())).all()
