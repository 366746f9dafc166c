"""The per-layer table: stored bytes per layer and its place in report.html."""

from __future__ import annotations

import torch
from torch import nn

import presso
from presso.measure import BenchSettings
from presso.measure.size import file_size, layer_storage_bytes
from presso.techniques.quantization.config import Int4Config
from presso.techniques.quantization.weight_only import write_int4


def test_stored_bytes_count_packed_weights_scales_and_biases(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    src = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 64),), str(src), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    dst = tmp_path / "q.onnx"
    rows = write_int4(src, dst, Int4Config(), {})
    sizes = layer_storage_bytes(dst, [r["node"] for r in rows])
    first, second = (sizes[r["node"]] for r in rows)
    # 64x32 weights in 4 bits + one float scale per group of 32 inputs + float bias.
    assert first == 64 * 32 // 2 + 32 * 2 * 4 + 32 * 4
    assert second == 32 * 10 // 2 + 10 * 1 * 4 + 10 * 4
    fp32 = layer_storage_bytes(src, [r["node"] for r in rows])
    assert list(fp32.values()) == [(64 * 32 + 32) * 4, (32 * 10 + 10) * 4]
    assert sum(sizes.values()) < file_size(dst)  # the rest is graph structure


def test_report_html_has_a_layer_table_with_stored_bytes(tmp_path):
    ex = presso.load_example("tabular")
    result = presso.compress(
        ex.model, "int4", data=ex.data, task=ex.task, bench=BenchSettings(rounds=1, throughput_batch=8)
    )
    layers = result.report.stages[0].layers
    assert layers and all(isinstance(row["stored_bytes"], int) and row["stored_bytes"] > 0 for row in layers)
    out = tmp_path / "art"
    result.save(out)
    page = (out / "report.html").read_text()
    assert "Layers after stage 1 (int4)" in page and "stored_bytes" in page
    assert all(row["node"] in page for row in layers)
    # Every layer's weights are part of the file, packed: about a byte per 2 parameters.
    stored = sum(r["stored_bytes"] for r in layers)
    assert stored <= result.report.compressed.size_bytes
    assert stored < 0.2 * 4 * sum(r["parameters"] for r in layers)


def test_terminal_layer_summary_per_kind_of_stage():
    from presso.report.terminal import _layer_summary

    assert (
        _layer_summary([{"precision": "int4"}, {"precision": "int4"}, {"node": "x"}])
        == "layers 2 int4, 1 other"
    )
    assert (
        _layer_summary([{"zeros": 9, "parameters": 10}, {"zeros": 1, "parameters": 30}])
        == "2 layers, 10 of 40 weights zero"
    )
    assert (
        _layer_summary([{"storage": "bitmask"}, {"storage": "dense"}])
        == "1 of 2 weight tensors stored as bitmask + values"
    )
    assert _layer_summary([{"layer": "fc", "outputs": "64 -> 22"}]) == "1 layer reshaped"
    assert _layer_summary([]) == ""


def test_dynamic_int8_layers_have_stored_bytes_too():
    """ORT's dynamic quantizer names each integer node NAME_quant; the per-layer rows name
    the float layer: every row still gets its stored bytes (int8 weights + scales + bias)."""
    from presso.techniques.quantization.config import Int8Config

    ex = presso.load_example("tabular")
    result = presso.compress(
        ex.model,
        [Int8Config(variants=["dynamic"])],
        data=ex.data,
        task=ex.task,
        max_drop=1.0,
        bench=BenchSettings(rounds=1, throughput_batch=8),
    )
    layers = result.report.stages[0].layers
    assert [row["node"] for row in layers] == ["/net/net.0/Gemm", "/net/net.2/Gemm", "/net/net.4/Gemm"]
    linears = [m for m in ex.model.net if isinstance(m, nn.Linear)]
    for row, linear in zip(layers, linears, strict=True):
        # int8 weights, a float scale and an int8 zero point per output, the float bias
        out_features = linear.out_features
        assert row["stored_bytes"] == linear.weight.numel() + out_features * (4 + 1 + 4)
