"""Structured pruning: physically smaller models, consistent dependants, clear refusals."""

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
from presso.examples.digits import DigitsCNN
from presso.examples.tabular import TabularMLP
from presso.techniques.pruning.structured import masked_equivalent, prune_channels


class Block(nn.Module):
    """conv-bn-relu-conv-bn + identity skip."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    """(N, 3, 8, 8) -> (N, 5): stem, two residual blocks, global pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))  # (N, 16) -> (N, 5)


class FoldsChannels(nn.Module):
    """Splits the channel dim of 'conv' across two dims: no tracer can follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, 8, 4, 4)
        y = y.view(y.shape[0], 4, 2, 16).transpose(1, 2)  # (N, 2, 4, 16)
        return self.head(y.reshape(y.shape[0], -1))


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.g(torch.relu(self.a(x))).mean(dim=(2, 3)))


class Concat(nn.Module):
    """Two branches concatenated, batch-normed, then mixed by a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.bn, self.mix = nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))  # (N, 16, H, W)
        return self.head(self.mix(y).mean(dim=(2, 3)))


class FlipsChannels(nn.Module):
    """Reverses the channel order: shapes stay valid, but kept channels would change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x).flip(1))
        return self.head(self.mix(y).mean(dim=(2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics so that BN pruning mistakes would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def _tabular() -> nn.Module:
    return TabularMLP().eval()


def _digits() -> nn.Module:
    return DigitsCNN().eval()


def _resnet() -> nn.Module:
    return _randomise_bn(ResNetish())


MODELS = {
    # name: (factory, input shape, params before, params after at ratio 0.5)
    "tabular": (_tabular, (30,), 6274, 2114),
    "digits": (_digits, (1, 8, 8), 38282, 9802),
    "resnet": (_resnet, (3, 8, 8), 9973, 2685),
}


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _setup(name: str, importance: str = "l2", scope: str = "layer"):
    factory, shape, *_ = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(16, *shape)
    original = copy.deepcopy(model)
    report = prune_channels(model, (x,), ratio=0.5, importance=importance, scope=scope)
    return original, model, report, x


@pytest.mark.parametrize("name", list(MODELS))
def test_ratio_half_at_least_halves_parameters_and_keeps_output_shape(name):
    original, model, report, x = _setup(name)
    _, _, before, after = MODELS[name]
    assert (report.params_before, report.params_after) == (before, after)
    assert _params(original) == before and _params(model) == after
    assert after <= before / 2
    with torch.no_grad():
        assert model(x).shape == original(x).shape
    # Every Conv/Linear but the output layer lost half its channels.
    outs = {c.name: (c.kept, len(c.removed)) for c in report.layers.values() if c.dim == "out"}
    assert outs and all(kept == removed for kept, removed in outs.values())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("importance", ["l2", "l1", "taylor", "random"])
def test_pruned_equals_masked_unremoved(name, importance):
    original, model, report, _ = _setup(name, importance=importance)
    masked = masked_equivalent(original, report)
    assert _params(masked) == _params(original)  # nothing removed, only zeroed
    x = torch.randn(64, *MODELS[name][1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = model(x).numpy(), masked(x).numpy()
        assert not np.allclose(want, original(x).numpy(), atol=1e-3)  # masking did change it
    assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_residual_channels_stay_coupled_through_add_and_batchnorm():
    _, model, report, _ = _setup("resnet")
    # The residual stream (stem conv, every block's conv2 and BN) keeps one channel set.
    stream = ["stem.0", "blocks.0.conv2", "blocks.1.conv2"]
    removed = {report.layers[(n, "out")].removed for n in stream}
    assert len(removed) == 1
    assert model.stem[1].num_features == model.blocks[0].bn2.num_features == 8
    assert model.blocks[1].bn2.running_mean.shape == (8,)
    assert model.head.in_features == 8 and model.head.out_features == 5


def test_concatenation_maps_indices_of_both_branches():
    torch.manual_seed(0)
    model = _randomise_bn(Concat())
    original, x = copy.deepcopy(model), torch.randn(8, 3, 4, 4)
    report = prune_channels(model, (x,), ratio=0.5)
    assert model.a.out_channels == model.b.out_channels == 4
    assert model.bn.num_features == model.mix.in_channels == 8
    bn = report.layers[("bn", "out")]
    assert (bn.before, bn.kept) == (16, 8)
    assert set(bn.removed) == set(report.layers[("a", "out")].removed) | {
        8 + i for i in report.layers[("b", "out")].removed
    }
    with torch.no_grad():
        assert_allclose(
            model(x).numpy(), masked_equivalent(original, report)(x).numpy(), rtol=1e-5, atol=1e-5
        )


def test_refuses_silent_channel_mixing_naming_the_layer():
    with pytest.raises(PressoError, match=r"layer 'conv'.*changes the outputs.*ignored_layers"):
        prune_channels(FlipsChannels().eval(), (torch.randn(2, 3, 4, 4),), ratio=0.5)


def test_global_scope_and_round_to():
    torch.manual_seed(0)
    model = _digits()
    report = prune_channels(model, (torch.randn(4, 1, 8, 8),), ratio=0.5, scope="global", round_to=4)
    assert report.params_after < report.params_before
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 4 == 0


def test_ignored_layers_keep_their_channels():
    torch.manual_seed(0)
    model = _tabular()
    report = prune_channels(model, (torch.randn(4, 30),), ratio=0.5, ignored_layers=["net.0"])
    assert model.net[0].out_features == 64 and model.net[2].out_features == 32
    assert ("net.0", "out") not in report.layers


@pytest.mark.parametrize("name", ["tabular", "digits", "resnet"])
def test_pruned_model_exports_and_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, model, _, x = _setup(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_refuses_channels_folded_by_a_view_naming_the_layer():
    model = FoldsChannels().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PressoError, match=r"layer 'conv'.*ignored_layers"):
        prune_channels(model, (torch.randn(2, 3, 4, 4),), ratio=0.5)
    # Nothing changed, and ignoring the named layer makes it go through.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    report = prune_channels(model, (torch.randn(2, 3, 4, 4),), ratio=0.5, ignored_layers=["conv"])
    assert report.params_after == report.params_before


def test_refuses_grouped_convolution_naming_it():
    x = (torch.randn(2, 3, 4, 4),)
    with pytest.raises(PressoError, match=r"layer 'g'.*grouped convolution.*'g' and the layers"):
        prune_channels(GroupedConv().eval(), x, ratio=0.5)
    with pytest.raises(PressoError, match=r"layer 'a'.*feed grouped convolution 'g'"):
        prune_channels(GroupedConv().eval(), x, ratio=0.5, ignored_layers=["g"])
    model = GroupedConv().eval()
    report = prune_channels(model, x, ratio=0.5, ignored_layers=["g", "a"])
    assert report.params_after == report.params_before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, "'ratio'.*Got 1.0"),
        ({"ratio": 0.5, "importance": "l3"}, "'importance'.*Got 'l3'"),
        ({"ratio": 0.5, "scope": "net"}, "'scope'.*Got 'net'"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(PressoError, match=match):
        prune_channels(_tabular(), (torch.randn(2, 30),), **kwargs)


def _throughput(sess, x: np.ndarray) -> float:
    start = time.perf_counter()
    sess.run(None, {"x": x})
    return x.shape[0] / (time.perf_counter() - start)


@pytest.mark.parametrize("name", ["tabular", "digits"])
def test_print_onnxruntime_throughput_before_and_after(name, tmp_path):
    """Prints (never asserts) batch-256 throughput, interleaved runs, medians."""
    ort = pytest.importorskip("onnxruntime")
    original, model, _, _ = _setup(name)
    x = torch.randn(256, *MODELS[name][1])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = []
    for tag, m in (("before", original), ("after", model)):
        path = tmp_path / f"{tag}.onnx"
        torch.onnx.export(
            m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"]
        )
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    xs = x.numpy()
    for s in sessions:
        s.run(None, {"x": xs})
    rates: list[list[float]] = [[], []]
    for _ in range(40):
        for i, s in enumerate(sessions):
            rates[i].append(_throughput(s, xs))
    before, after = (statistics.median(r) for r in rates)
    print(
        f"\n{name}: batch 256 ORT throughput before {before:,.0f}/s after {after:,.0f}/s "
        f"ratio {after / before:.2f}x"
    )
    assert before > 0 and after > 0


@pytest.mark.parametrize("name", ["tabular", "digits"])
def test_trained_examples_prune_consistently_on_their_rows(name):
    from presso import load_example

    example = load_example(name)
    model = example.model.eval()
    x = torch.from_numpy(next(iter(example.data.inputs.values()))).float()
    original = copy.deepcopy(model)
    report = prune_channels(model, (x[:32],), ratio=0.5)
    assert (report.params_before, report.params_after) == MODELS[name][2:]
    with torch.no_grad():
        got, want = model(x), masked_equivalent(original, report)(x)
        acc = [(m(x).argmax(1).numpy() == example.data.target).mean() for m in (original, model)]
    assert got.shape == original(x).shape
    assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    print(f"\n{name}: accuracy {acc[0]:.3f} -> {acc[1]:.3f} after 0.5 pruning, no fine-tuning")
