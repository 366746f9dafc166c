"""Models with several outputs (tuple, dict, ModelOutput), --output choosing one, and
inputs the data does not provide."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.cli.main import main
from presso.errors import PressoError
from presso.export.onnx_export import export_onnx
from presso.model.sources import load_model


class TwoHeads(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.body = nn.Linear(6, 8)
        self.logits = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        if self.kind == "tuple":
            return self.logits(h), h
        if self.kind == "dict":
            return {"logits": self.logits(h), "embedding": h}
        from transformers.utils import ModelOutput

        @dataclass
        class Out(ModelOutput):
            logits: torch.Tensor | None = None
            embedding: torch.Tensor | None = None

        return Out(logits=self.logits(h), embedding=h)


ROWS = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("tuple", None), ("tuple", "1"), ("dict", None), ("dict", "embedding"), ("model_output", "embedding")],
)
def test_output_chosen_in_pytorch_and_onnx(tmp_path, kind, name):
    model = load_model(TwoHeads(kind), output=name)
    with torch.no_grad():
        h = torch.relu(TwoHeads(kind).body(torch.from_numpy(ROWS)))
        expected = (h if name is not None else TwoHeads(kind).logits(h)).numpy()
    assert_allclose(model.run({"x": ROWS}), expected, atol=1e-6)
    path = export_onnx(model, {"x": ROWS[:2]}, tmp_path / "m.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output"]  # exactly the one chosen
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": ROWS})
    assert_allclose(got[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "name", "listed"), [("dict", "hidden", "logits, embedding"), ("tuple", "2", "0, 1")]
)
def test_unknown_output_lists_the_available_ones(kind, name, listed):
    model = load_model(TwoHeads(kind), output=name)
    with pytest.raises(PressoError, match=f"no output '{name}': its outputs are {listed}. Pass one"):
        model.run({"x": ROWS})


def test_chosen_output_survives_copies_and_pickling():
    import copy

    model = load_model(TwoHeads("dict"), output="embedding")
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(model.module), buffer)  # how stage checkpoints keep modules
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert restored(torch.from_numpy(ROWS)).shape == (5, 8)
        restored.body.weight.zero_()  # the copy's forward reads the copy's weights
        restored.body.bias.zero_()
        assert restored(torch.from_numpy(ROWS)).abs().max() == 0
        assert model.module(torch.from_numpy(ROWS)).abs().max() > 0


def _two_output_onnx(path):
    torch.onnx.export(
        TwoHeads("tuple").eval(),
        (torch.from_numpy(ROWS[:2]),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits", "embedding"],
        dynamic_axes={"x": {0: "batch"}},
    )


def test_onnx_file_output_by_graph_name(tmp_path):
    from presso.model.onnx_file import keep_output

    _two_output_onnx(tmp_path / "two.onnx")
    model = load_model(tmp_path / "two.onnx", output="embedding")
    assert model.run({"x": ROWS}).shape == (5, 8)
    keep_output(tmp_path / "two.onnx", "embedding")  # what the baseline copy gets
    graph = onnx.load(str(tmp_path / "two.onnx")).graph
    assert [o.name for o in graph.output] == ["embedding"]
    assert {i.name for i in graph.initializer} == {"body.weight", "body.bias"}  # the other head is gone
    with pytest.raises(PressoError, match="has no output 'probs': its outputs are embedding"):
        load_model(tmp_path / "two.onnx", output="probs")


FACTORIES = """
import torch
from torch import nn

class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, mask):
        return self.lin(x * mask)

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x), x

def masked():
    return Masked()

def pair():
    return Pair()
"""


def _cli(tmp_path, capsys, *args):
    (tmp_path / "models.py").write_text(FACTORIES)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rows.npz", X=rng.normal(size=(40, 4)).astype(np.float32), y=rng.integers(0, 2, 40))
    rc = main(
        ["compress", *args, "--data", str(tmp_path / "rows.npz"), "--out", str(tmp_path / "out"), "--quiet"]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_missing_forward_argument_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rc, out, err = _cli(tmp_path, capsys, str(tmp_path / "models.py") + ":masked")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1
    assert (
        "input(s) ['x', 'mask']" in err
        and "it has ['X', 'y']" in err
        and "np.savez(path, x=..., mask=..." in err
    )
    assert not list((tmp_path / "tmp").iterdir()) and not (tmp_path / "out").exists()  # nothing left behind


def test_cli_unknown_output_exits_2(tmp_path, capsys):
    rc, out, err = _cli(tmp_path, capsys, str(tmp_path / "models.py") + ":pair", "--output", "logits")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "no output 'logits': its outputs are 0, 1" in err
