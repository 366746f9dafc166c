"""Models people export: transformer and recurrent layers, several inputs, ops only the
dynamo exporter translates, and ops no exporter does (one line, the details in a log)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.export.onnx_export import ExportError, export_onnx
from presso.model.sources import load_model


def _run(path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["output"], inputs)[0]


@torch.no_grad()
def _torch(module: nn.Module, inputs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return module.eval()(*[torch.from_numpy(inputs[n]) for n in names]).numpy()


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoder (its eval fast path has no ONNX translation), mean over time."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 3)

    def forward(self, x):  # (B, T, 8)
        return self.head(self.encoder(self.embed(x)).mean(1))  # (B, 3)


class PaddedTextClassifier(nn.Module):
    """Token ids with padding: the key padding mask makes TransformerEncoder use nested tensors."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 32, padding_idx=0)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(32, 2)

    def forward(self, ids):  # (B, T) int64, 0 = padding
        pad = ids == 0
        h = self.encoder(self.embed(ids), src_key_padding_mask=pad)  # (B, T, 32)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))


class AttentionPool(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x):  # (B, T, 16)
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out.mean(1))


def test_transformer_encoder_exports_and_holds_parity(tmp_path):
    module = EncoderClassifier().train()  # handed in training: presso exports eval mode
    model = load_model(module)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 10, 8)).astype(np.float32)
    path = export_onnx(model, {"x": x}, tmp_path / "m.onnx")
    # TorchScript bakes the length into the attention's reshapes; dynamo's graph takes any.
    assert model.exporter == "dynamo"
    assert model.dynamic_axes["x"] == {0: "batch", 1: "sequence"}
    assert any("TorchScript" in n and "at length 5" in n for n in model.notes)
    for shape in [(1, 10, 8), (3, 10, 8), (7, 4, 8), (2, 31, 8)]:
        xb = rng.normal(size=shape).astype(np.float32)
        assert_allclose(_run(path, {"x": xb}), _torch(EncoderClassifier(), {"x": xb}, ["x"]), atol=1e-4)
    # Each float weight read by one node: ONNX Runtime's static quantizer refuses shared ones.
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    readers = Counter(name for node in graph.node for name in node.input if name in weights)
    assert readers and max(readers.values()) == 1
    assert not any(node.metadata_props for node in graph.node)  # 1.4 kB of debug text a node


def test_padded_text_encoder_with_nested_tensors(tmp_path):
    model = load_model(PaddedTextClassifier())
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, size=(4, 12))
    ids[:, 8:] = 0  # padded tails
    path = export_onnx(model, {"ids": ids}, tmp_path / "m.onnx")
    for shape in [(5, 12), (3, 7)]:
        other = rng.integers(1, 50, size=shape)
        other[:2, 4:] = 0
        assert_allclose(
            _run(path, {"ids": other}), _torch(PaddedTextClassifier(), {"ids": other}, ["ids"]), atol=1e-4
        )


def test_multihead_attention_alone_keeps_length_dynamic(tmp_path):
    model = load_model(AttentionPool())
    rng = np.random.default_rng(2)
    path = export_onnx(model, {"x": rng.normal(size=(3, 9, 16)).astype(np.float32)}, tmp_path / "m.onnx")
    assert model.dynamic_axes["x"] == {0: "batch", 1: "sequence"}
    for shape in [(1, 9, 16), (6, 9, 16), (2, 4, 16)]:
        x = rng.normal(size=shape).astype(np.float32)
        assert_allclose(_run(path, {"x": x}), _torch(AttentionPool(), {"x": x}, ["x"]), atol=1e-4)


class Recurrent(nn.Module):
    """A 2-layer bidirectional LSTM or GRU; time-major layers get the batch transposed."""

    def __init__(self, cell: str, batch_first: bool):
        super().__init__()
        torch.manual_seed(0)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.batch_first = batch_first
        self.rnn = rnn(5, 16, num_layers=2, bidirectional=True, batch_first=batch_first, dropout=0.2)
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 2)

    def forward(self, series):  # (B, T, 5)
        out, _ = self.rnn(series if self.batch_first else series.transpose(0, 1))
        last = out[:, -1] if self.batch_first else out[-1]  # (B, 32)
        return self.head(self.norm(last))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_layers_dynamic_batch_and_length(tmp_path, cell, batch_first):
    module = Recurrent(cell, batch_first)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    model = load_model(module.train())
    rng = np.random.default_rng(3)
    path = export_onnx(model, {"series": rng.normal(size=(4, 12, 5)).astype(np.float32)}, tmp_path / "m.onnx")
    assert model.dynamic_axes["series"] == {0: "batch", 1: "sequence"}
    for shape in [(1, 12, 5), (7, 12, 5), (3, 5, 5), (2, 20, 5)]:
        x = rng.normal(size=shape).astype(np.float32)
        assert_allclose(_run(path, {"series": x}), _torch(model.module, {"series": x}, ["series"]), atol=1e-4)


class FlattenSteps(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6 * 4, 2)

    def forward(self, x):  # (B, 6, 4): a fixed number of steps
        return self.head(x.flatten(1))


def test_fixed_length_model_stays_fixed_without_a_note(tmp_path):
    model = load_model(FlattenSteps())
    export_onnx(model, {"x": np.ones((2, 6, 4), np.float32)}, tmp_path / "m.onnx")
    assert model.dynamic_axes == {"x": {0: "batch"}}
    assert model.notes == []


class Recommender(nn.Module):
    """Dense float features and int64 categorical ids, given as two arrays."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.user = nn.Embedding(20, 8)
        self.item = nn.Embedding(30, 8)
        self.dense = nn.Linear(4, 8)
        self.head = nn.Linear(24, 1)

    def forward(self, features, ids):  # (B, 4) float32, (B, 2) int64: user, item
        parts = [self.dense(features), self.user(ids[:, 0]), self.item(ids[:, 1])]
        return self.head(torch.cat(parts, 1))


def test_mixed_dtype_inputs_from_npz(tmp_path):
    from presso.data.resolve import resolve_data

    rng = np.random.default_rng(4)
    n = 16
    ids = np.stack([rng.integers(0, 20, n), rng.integers(0, 30, n)], 1).astype(np.int32)
    np.savez(tmp_path / "rows.npz", features=rng.normal(size=(n, 4)), ids=ids)  # float64, int32 on disk
    model = load_model(Recommender())
    data = resolve_data(tmp_path / "rows.npz", model)
    assert data.inputs["features"].dtype == np.float32 and data.inputs["ids"].dtype == np.int64
    path = export_onnx(model, data.head(2).inputs, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    kinds = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert kinds == {"features": onnx.TensorProto.FLOAT, "ids": onnx.TensorProto.INT64}
    # The ids' axis 1 is a fixed set of fields (indexed by position): it stays fixed.
    assert model.dynamic_axes["ids"] == {0: "batch"}
    assert_allclose(
        _run(path, data.inputs), _torch(Recommender(), data.inputs, ["features", "ids"]), atol=1e-5
    )


class Spectrum(nn.Module):
    """torch.fft.rfft: the TorchScript exporter has no symbolic for it, the dynamo one has."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(9, 2)

    def forward(self, x):  # (B, 16)
        return self.head(torch.fft.rfft(self.proj(x), dim=-1).abs())


def test_dynamo_exports_what_torchscript_cannot(tmp_path, capfd):
    model = load_model(Spectrum())
    rng = np.random.default_rng(5)
    path = export_onnx(model, {"x": rng.normal(size=(2, 16)).astype(np.float32)}, tmp_path / "m.onnx")
    assert model.exporter == "dynamo"
    assert any("dynamo exporter" in n and "aten::fft_rfft" in n for n in model.notes)
    x = rng.normal(size=(5, 16)).astype(np.float32)
    assert_allclose(_run(path, {"x": x}), _torch(Spectrum(), {"x": x}, ["x"]), atol=1e-4)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the exporters' printing went to the (discarded) log


class Cumulative(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1).values


class RunningMax(nn.Module):
    """torch.cummax, which neither exporter translates, inside a named submodule."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.trend = Cumulative()

    def forward(self, x):
        return self.trend(self.proj(x))


def test_no_exporter_one_line_error_and_log(tmp_path, capfd):
    model = load_model(RunningMax())
    with pytest.raises(ExportError) as info:
        export_onnx(model, {"x": np.ones((2, 8), np.float32)}, tmp_path / "m.onnx")
    message = str(info.value)
    assert "\n" not in message
    assert "RunningMax" in message and "aten::cummax" in message and "Cumulative 'trend'" in message
    assert "ONNX file" in message  # what to do
    log = info.value.log_path
    assert str(log) in message and log.is_file()
    details = log.read_text()
    assert "torchscript exporter" in details and "dynamo exporter" in details
    assert "Traceback" in details and "aten.cummax" in details
    assert "Torch IR graph at exception" in details  # printed by C++, captured all the same
    assert not (tmp_path / "m.onnx").exists()
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no graph dump, no exporter chatter on the terminal


class MeanByTracedLength(nn.Module):
    """Divides by the length as a Python float: TorchScript bakes it into the graph."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # (B, T, 4)
        return self.head(x.sum(1) / float(x.shape[1]))


def test_length_kept_fixed_when_no_graph_holds_parity(tmp_path, monkeypatch):
    import presso.export.onnx_export as onnx_export

    def no_dynamo(*args, **kwargs):
        raise RuntimeError("dynamo unavailable in this test")

    monkeypatch.setattr(onnx_export, "dynamo", no_dynamo)
    model = load_model(MeanByTracedLength())
    x = np.random.default_rng(6).normal(size=(2, 8, 4)).astype(np.float32)
    path = export_onnx(model, {"x": x}, tmp_path / "m.onnx")
    assert model.exporter == "torchscript"
    assert model.dynamic_axes == {"x": {0: "batch"}}
    assert model.notes == [
        "input 'x' (length 8) keeps its length fixed in ONNX: the exported graph did not match "
        "PyTorch at length 4; feed it rows of the fixed length"
    ]
    xb = np.random.default_rng(7).normal(size=(5, 8, 4)).astype(np.float32)
    assert_allclose(_run(path, {"x": xb}), _torch(model.module, {"x": xb}, ["x"]), atol=1e-5)


def test_export_logs_are_timestamped_and_the_newest_kept():
    from presso.export.failure import KEEP_LOGS, log_dir, write_log

    paths = [write_log(f"attempt {i}", "Some Model") for i in range(KEEP_LOGS + 3)]
    kept = sorted(log_dir().glob("export-*.log"))
    assert kept == sorted(paths[-KEEP_LOGS:])  # the three oldest went
    assert paths[-1].read_text() == f"attempt {KEEP_LOGS + 2}" and "Some_Model" in paths[-1].name
