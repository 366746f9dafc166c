"""The prune and slim recipe stages end to end through presso.compress, and their helpers."""

from __future__ import annotations

import copy
import re
import textwrap
import warnings
from itertools import pairwise

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.testing import assert_allclose
from onnx import numpy_helper
from torch import nn

import presso
from presso.errors import BudgetError, PressoError
from presso.measure import BenchSettings
from presso.model.sources import load_model
from presso.progress import Progress
from presso.recipe import measure as recipe_measure
from presso.recipe.schema import Recipe, Stage
from presso.techniques.pruning.config import PruneConfig
from presso.techniques.pruning.masks import iterative_sparsity
from presso.techniques.pruning.prune_stage import schedule_sparsity
from presso.techniques.pruning.sensitivity import LEVELS, allocate
from presso.techniques.pruning.structured import masked_equivalent, prune_channels

QUICK = BenchSettings(rounds=1, throughput_batch=8)
FAST = {"epochs": 2, "augment": 0}  # fine-tuning kept short: these tests check sparsity, not quality


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    """Peak memory is measured in two fresh processes per run (~5 s of each compress here);
    no test in this file looks at it, and the schema allows it to be unknown. One torch
    thread: on a busy 2-core machine OpenMP's spinning makes these tiny models 20x slower."""
    monkeypatch.setattr(recipe_measure, "peak_memory_mb", lambda *args, **kwargs: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _labelled(model: nn.Module, shape: tuple[int, ...], rows: int = 300, seed: int = 0):
    """Random inputs labelled by the model's own predictions: baseline accuracy 1.0."""
    x = np.random.default_rng(seed).normal(size=(rows, *shape)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return x, y


def _compress(model, technique: str, options: dict, data, max_drop: float = 1.0, **kwargs):
    recipe = Recipe(name="t", stages=[Stage(technique=technique, options=options)])
    return presso.compress(
        model,
        recipe,
        data=data,
        task=kwargs.pop("task", "classification"),
        max_drop=max_drop,
        bench=QUICK,
        **kwargs,
    )


def _stored_weights(path, tmp_path) -> dict[str, np.ndarray]:
    """Weights of each Gemm / MatMul / Conv node (PyTorch layout (out, in, ...)) as ONNX Runtime
    sees them once the session is created: sparse storage rebuilt and constant-folded."""
    folded = tmp_path / "folded.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(folded))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul", "Conv") and node.input[1] in inits:
            w = inits[node.input[1]]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b):
                w = w.T  # stored (in, out)
            out[node.name] = w
    return out


def _stage(report, technique: str):
    return next(s for s in report.stages if s.technique == technique)


# 1. The sparsity schedule


def test_one_shot_is_final_from_the_first_epoch():
    cfg = PruneConfig(schedule="one-shot", epochs=5)
    assert [schedule_sparsity(e, cfg, 0.8) for e in range(1, 6)] == [0.8] * 5


def test_iterative_schedule_steps_once_per_round():
    cfg = PruneConfig(schedule="iterative", rounds=3, epochs=6)
    got = [schedule_sparsity(e, cfg, 0.9) for e in range(1, 7)]
    want = [iterative_sparsity(r, 3, 0.9) for r in (1, 1, 2, 2, 3, 3)]
    assert got == want
    assert_allclose(got[::2], [1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9], rtol=0, atol=1e-12)


@pytest.mark.parametrize("epochs, ramp, end", [(10, 0.6, 6), (80, 0.5, 40), (3, 0.6, 2), (1, 0.6, 1)])
def test_gradual_schedule_reaches_final_at_the_end_of_the_ramp(epochs, ramp, end):
    cfg = PruneConfig(schedule="gradual", epochs=epochs, ramp=ramp)
    got = [schedule_sparsity(e, cfg, 0.9) for e in range(1, epochs + 3)]
    assert all(a <= b for a, b in pairwise(got))
    assert got[end - 1] == 0.9 and all(s == 0.9 for s in got[end - 1 :])
    if end > 1:
        assert got[end - 2] < 0.9 and got[0] > 0


@pytest.mark.parametrize("schedule", ["one-shot", "iterative", "gradual"])
def test_no_fine_tuning_means_final_sparsity_at_once(schedule):
    cfg = PruneConfig(schedule=schedule, epochs=0)
    assert schedule_sparsity(1, cfg, 0.75) == 0.75


# 2. Unstructured pruning through compress


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "random"])
def test_unstructured_prune_stores_the_requested_sparsity(criterion, scope, tmp_path):
    model = _mlp(16, 64, 48, 4)
    options = {**FAST, "epochs": 3, "sparsity": 0.8, "criterion": criterion, "scope": scope}
    result = _compress(model, "prune", options, _labelled(model, (16,)))
    rows = _stage(result.report, "prune").layers
    stored = _stored_weights(result.model_path, tmp_path)
    assert len(rows) == 3 and sorted(stored) == sorted(r["node"] for r in rows)
    zeros = {r["node"]: int((stored[r["node"]] == 0).sum()) for r in rows}
    for r in rows:  # the report describes the stored model
        assert stored[r["node"]].size == r["parameters"]
        assert r["sparsity"] == round(zeros[r["node"]] / r["parameters"], 4)
    if scope == "global":
        total = sum(r["parameters"] for r in rows)
        assert abs(sum(zeros.values()) / total - 0.8) <= 0.005
    else:
        for r in rows:
            assert abs(zeros[r["node"]] / r["parameters"] - 0.8) <= 1 / r["parameters"]


def test_skipped_layer_stays_dense_and_iterative_rounds_reach_the_target(tmp_path):
    model = _mlp(16, 64, 48, 4)
    options = {**FAST, "epochs": 3, "schedule": "iterative", "rounds": 3, "sparsity": 0.8, "skip": ["4"]}
    result = _compress(model, "prune", options, _labelled(model, (16,)))
    rows = _stage(result.report, "prune").layers
    assert [r["layer"] for r in rows] == ["0", "2"]
    stored = _stored_weights(result.model_path, tmp_path)
    pruned = [stored[r["node"]] for r in rows]
    assert abs(sum(int((w == 0).sum()) for w in pruned) / sum(w.size for w in pruned) - 0.8) <= 0.005
    (dense,) = [w for node, w in stored.items() if node not in {r["node"] for r in rows}]
    assert dense.shape == (4, 48) and (dense != 0).all()


def test_time_cap_mid_ramp_still_ends_at_the_target_sparsity(tmp_path):
    model = _mlp(16, 64, 48, 4)
    options = {**FAST, "epochs": 10, "schedule": "gradual", "sparsity": 0.8, "max_minutes": 1e-6}
    result = _compress(model, "prune", options, _labelled(model, (16,)))
    stage = _stage(result.report, "prune")
    assert "for 1 epoch on" in stage.notes[-1] and "stopped: time" in stage.notes[-1]
    stored = _stored_weights(result.model_path, tmp_path).values()
    assert abs(sum(int((w == 0).sum()) for w in stored) / sum(w.size for w in stored) - 0.8) <= 0.005


# 3. Per-layer sparsities from sensitivity curves


def _blobs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 Gaussian classes in 16-d (fixed centres): a task a small MLP learns with wide margins."""
    centres = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, rows)
    return (centres[y] + rng.normal(size=(rows, 16))).astype(np.float32), y


def _trained_mlp() -> nn.Sequential:
    model = _mlp(16, 64, 48, 4).train()
    x, y = (torch.from_numpy(a) for a in _blobs(1000, seed=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_sensitivity_scope_allocates_per_layer_sparsities_from_its_curves(tmp_path):
    options = {**FAST, "epochs": 3, "sparsity": 0.7, "scope": "sensitivity"}
    result = _compress(_trained_mlp(), "prune", options, _blobs(300, seed=2), max_drop=0.05)
    stage = _stage(result.report, "prune")
    assert stage.chosen == "70% sparse"  # the first variant: no milder retry scaled the ratios down
    rows = stage.layers
    levels = [f"drop@{lv:g}" for lv in LEVELS]
    assert all(set(levels) <= set(r) for r in rows)
    sizes = {r["layer"]: r["parameters"] for r in rows}
    curves = {r["layer"]: [(lv, r[key]) for lv, key in zip(LEVELS, levels, strict=True)] for r in rows}
    finals = allocate(curves, sizes, 0.7, 0.05)
    stored = _stored_weights(result.model_path, tmp_path)
    for r in rows:  # every layer at the sparsity allocate() chose from the reported curves
        got = float((stored[r["node"]] == 0).mean())
        assert abs(got - finals[r["layer"]]) <= 1 / r["parameters"]
        # ... at least the largest level whose solo drop is within --max-drop
        within = max((lv for lv, d in curves[r["layer"]] if d <= 0.05), default=0.0)
        assert got >= within - 1 / r["parameters"]
    assert len({round(r["sparsity"], 2) for r in rows}) > 1  # not one ratio for all
    mean = sum(r["sparsity"] * r["parameters"] for r in rows) / sum(sizes.values())
    assert mean >= 0.7 - 1e-3


def test_a_sensitivity_retry_reallocates_so_its_pinned_sparsity_reproduces_it(tmp_path, monkeypatch):
    """A milder retry allocates its own per-layer sparsities from the curves for the milder
    target, exactly what re-running the pinned recipe (sparsity = that target) does."""
    from presso.techniques.pruning import prune_stage

    monkeypatch.setattr(prune_stage, "milder", lambda first, steps: [0.5])  # start at a retry of 0.7
    options = {**FAST, "epochs": 3, "sparsity": 0.7, "scope": "sensitivity"}
    result = _compress(_trained_mlp(), "prune", options, _blobs(300, seed=2), max_drop=0.05)
    assert result.recipe.stages[0].options["sparsity"] == 0.5
    rows = _stage(result.report, "prune").layers
    levels = [f"drop@{lv:g}" for lv in LEVELS]
    curves = {r["layer"]: [(lv, r[key]) for lv, key in zip(LEVELS, levels, strict=True)] for r in rows}
    finals = allocate(curves, {r["layer"]: r["parameters"] for r in rows}, 0.5, 0.05)
    stored = _stored_weights(result.model_path, tmp_path)
    for r in rows:
        assert abs(float((stored[r["node"]] == 0).mean()) - finals[r["layer"]]) <= 1 / r["parameters"]


# 4. N:M (2:4) pruning


def _cnn() -> nn.Sequential:
    """(N, 1, 4, 4) -> (N, 4); the first conv has 1 * 3 * 3 = 9 inputs per output."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 24),
        nn.ReLU(),
        nn.Linear(24, 4),
    ).eval()


def test_two_four_keeps_two_of_every_four_inputs_in_the_stored_model(tmp_path):
    model = _cnn()
    options = {**FAST, "pattern": "n:m", "n": 2, "m": 4}  # the schedule defaults to one-shot for n:m
    result = _compress(model, "prune", options, _labelled(model, (1, 4, 4)))
    stage = _stage(result.report, "prune")
    assert stage.chosen == "2:4"
    assert any(re.search(r"1 layer left dense.*m=4: 0 \(9 inputs\)", n) for n in stage.notes)
    stored = _stored_weights(result.model_path, tmp_path)
    pruned = {r["node"] for r in stage.layers}
    assert len(pruned) == 3 and len(stored) == 4
    for node, w in stored.items():
        if node in pruned:
            groups = w.reshape(w.shape[0], -1, 4)  # (out, K / 4, 4): consecutive inputs in (in, kh, kw) order
            assert (groups == 0).sum(-1).min() >= 2
            assert abs(float((w == 0).mean()) - 0.5) < 0.01
        else:
            assert w.shape == (4, 1, 3, 3) and (w != 0).all()  # the 9-input conv stays dense


# 5. Penalties and label targets


class _Log(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_penalties_enter_the_training_loss_and_are_noted():
    model = _mlp(16, 64, 48, 4)
    data = _labelled(model, (16,))
    options = {**FAST, "epochs": 1, "sparsity": 0.5, "schedule": "one-shot"}
    losses = {}
    for key, extra in (("plain", {}), ("penalised", {"l1": 10.0, "group_lasso": 10.0})):
        log = _Log()
        result = _compress(model, "prune", {**options, **extra}, data, progress=log)
        note = _stage(result.report, "prune").notes[-1]
        assert ("with l1 10.0 and group_lasso 10.0 penalties" in note) == (key == "penalised")
        (losses[key],) = [
            float(m.group(1))
            for line in log.lines
            if (m := re.match(r"prune: epoch 1/1, loss ([^,]+)", line))
        ]
    assert losses["penalised"] > losses["plain"] + 0.5


def test_label_targets_fine_tune_on_labels_and_need_them():
    model = _mlp(16, 64, 48, 4)
    x, y = _labelled(model, (16,))
    options = {**FAST, "targets": "labels", "augment": 4}
    result = _compress(model, "prune", options, (x, y))
    note = _stage(result.report, "prune").notes[-1]
    # 300 rows: 90 calibration rows, 18 of them held back for early stopping; no mixup with labels
    assert "fine-tuned to labels for 2 epochs on 72 calibration rows" in note and "mixup" not in note
    with pytest.raises(PressoError, match=r"targets: labels.*data has none.*targets: teacher"):
        _compress(model, "prune", options, x)


# 6. Refusals


@pytest.mark.parametrize(
    "technique, options, match",
    [
        (
            "prune",
            {"pattern": "n:m", "n": 4, "m": 4, "schedule": "one-shot"},
            r"stage 1 'prune'.*n must be < m.*n=4, m=4",
        ),
        (
            "prune",
            {"pattern": "n:m", "n": 2, "m": 4, "schedule": "gradual"},
            r"stage 1 'prune'.*n:m pattern is applied once.*use schedule one-shot",
        ),
        (
            "prune",
            {"skip": ["2", "fc9"]},
            r"'skip' option names 'fc9', which is not a Linear or Conv layer of this model. Layers: 0, 2, 4",
        ),
        ("slim", {"ratio": 0.5, "ratoi": 0.5}, r"stage 1 'slim': unknown option 'ratoi'"),
        ("prune", {"sparsity": 1.0}, r"stage 1 'prune': option 'sparsity'"),
    ],
)
def test_bad_prune_and_slim_recipes_are_refused(technique, options, match):
    model = _mlp(16, 64, 48, 4)
    with pytest.raises(PressoError, match=match):
        _compress(model, technique, {**FAST, **options}, _labelled(model, (16,), rows=60))


@pytest.mark.parametrize("technique", ["prune", "slim"])
def test_pruning_stages_need_a_pytorch_model(technique, tmp_path):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            _mlp(16, 64, 48, 4),
            (torch.zeros(1, 16),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    x = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
    match = f"stage 1 '{technique}' trains the PyTorch model; it needs a PyTorch model or Hugging Face folder"
    with pytest.raises(PressoError, match=match + ", not an ONNX file"):
        _compress(str(path), technique, FAST, x)


# 7. Sparse storage at the end of the run


@pytest.mark.int8_kernel
@pytest.mark.parametrize("variant, op", [("static-s8s8", "DequantizeLinear"), ("dynamic", "MatMulInteger")])
def test_sparse_then_int8_stores_the_int8_zeros_as_a_bitmask(variant, op, tmp_path):
    model = _mlp(64, 256, 256, 10)
    prune = {**FAST, "epochs": 1, "sparsity": 0.9, "scope": "layer", "schedule": "one-shot"}
    recipe = Recipe(
        name="t",
        stages=[
            Stage(technique="prune", options=prune),
            Stage(technique="int8", options={"variants": [variant]}),
        ],
    )
    x, y = _labelled(model, (64,))
    result = presso.compress(model, recipe, data=(x, y), task="classification", max_drop=1.0, bench=QUICK)
    report = result.report
    assert [s.technique for s in report.stages] == ["prune", "int8", "sparse-storage"]
    rows = report.stages[-1].layers
    assert [(r["op"], r["storage"]) for r in rows] == [(op, "bitmask")] * 3
    for r in rows:  # 1 byte per kept weight + 1 bit per weight, instead of 1 byte per weight
        assert r["sparsity"] >= 0.9 - 1e-3
        assert r["stored_bytes"] <= (1 - r["sparsity"]) * r["dense_bytes"] + r["dense_bytes"] / 8 + 8
    assert report.compressed.size_bytes < report.baseline.size_bytes / 8  # int8 alone: about / 4
    sess = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: x[:4]})[0].shape == (4, 10)


# 8. Milder retries when the budget breaks


def test_a_broken_budget_retries_milder_sparsities_before_refusing():
    model = _mlp(16, 64, 48, 4)  # an untrained net: its predictions flip at any pruning
    options = {"epochs": 0, "sparsity": 0.95, "backoff": 2}
    with pytest.raises(BudgetError) as info:
        _compress(model, "prune", options, _labelled(model, (16,)), max_drop=0.0)
    # its own labels are imbalanced: the budget is on balanced accuracy
    tried = re.findall(
        r"(\d+)% sparse: (?:balanced_)?accuracy drop ([\d.]+) on calibration rows", str(info.value)
    )
    assert [int(s) for s, _ in tried] == [95, 90, 80]  # the pruned fraction's kept part doubles each retry
    assert all(float(d) > 0 for _, d in tried)


# 9. slim on a user model given as "file.py:fn"

RES_CNN = textwrap.dedent('''
    import torch
    from torch import nn


    class PreActBlock(nn.Module):
        """x + conv(relu(bn(conv(relu(bn(x))))))."""

        def __init__(self, c):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return x + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))


    class Down(nn.Module):
        """Projection shortcut: both paths widen and halve the resolution, then add."""

        def __init__(self, a, b):
            super().__init__()
            self.bn, self.conv = nn.BatchNorm2d(a), nn.Conv2d(a, b, 3, stride=2, padding=1)
            self.proj = nn.Conv2d(a, b, 1, stride=2)

        def forward(self, x):
            return self.proj(x) + self.conv(torch.relu(self.bn(x)))


    class ResCNN(nn.Module):
        """(N, 3, 8, 8) -> (N, 5)."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.block1, self.down, self.block2 = PreActBlock(16), Down(16, 32), PreActBlock(32)
            self.bn, self.head = nn.BatchNorm2d(32), nn.Linear(32, 5)

        def forward(self, image):
            y = self.block2(self.down(self.block1(self.stem(image))))
            return self.head(torch.relu(self.bn(y)).mean(dim=(2, 3)))


    def build():
        torch.manual_seed(0)
        return ResCNN()
''')


@pytest.fixture
def res_cnn(tmp_path):
    """The factory file and weights with non-trivial BatchNorm statistics (so that pruning
    the wrong BatchNorm channels would show)."""
    factory = tmp_path / "rescnn.py"
    factory.write_text(RES_CNN)
    namespace: dict = {}
    exec(RES_CNN, namespace)
    model = namespace["build"]()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    torch.save(model.state_dict(), tmp_path / "rescnn.pt")
    return {"spec": f"{factory}:build", "weights": tmp_path / "rescnn.pt", "model": model.eval()}


def test_slim_on_a_residual_factory_model_removes_channels_and_runs(res_cnn, tmp_path):
    x, y = _labelled(res_cnn["model"], (3, 8, 8), rows=200)
    result = _compress(res_cnn["spec"], "slim", {**FAST, "ratio": 0.5}, (x, y), weights=res_cnn["weights"])
    report = result.report
    assert report.compressed.parameters <= 0.6 * report.baseline.parameters
    rows = {r["layer"]: r for r in _stage(report, "slim").layers}
    assert rows["stem"]["outputs"] == "16 -> 8" and rows["down.proj"]["outputs"] == "32 -> 16"
    assert rows["head"]["outputs"] == "5 -> 5" and rows["head"]["inputs"] == "32 -> 16"
    convs = [w for w in _stored_weights(result.model_path, tmp_path).values() if w.ndim == 4]
    assert len(convs) == 7 and max(w.shape[0] for w in convs) == 16
    sess = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x[:16]})
    assert out.shape == (16, 5) and np.isfinite(out).all()


def test_residual_factory_model_pruned_equals_its_masked_original(res_cnn):
    model = load_model(res_cnn["spec"], weights=res_cnn["weights"]).module
    original = copy.deepcopy(model)
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    report = prune_channels(model, (x[:8],), ratio=0.5)
    removed = {
        name: report.layers[(name, "out")].removed
        for name in ("stem", "block1.conv2", "down.proj", "down.conv", "block2.conv2")
    }
    # two residual streams, each pruned as one channel set through the additions and BatchNorms
    assert removed["stem"] == removed["block1.conv2"] and len(removed["stem"]) == 8
    assert removed["down.proj"] == removed["down.conv"] == removed["block2.conv2"]
    assert model.block1.bn1.num_features == 8 and model.bn.num_features == 16 and model.head.in_features == 16
    masked = masked_equivalent(original, report)
    with torch.no_grad():
        got, want = model(x).numpy(), masked(x).numpy()
        assert np.abs(want - original(x).numpy()).max() > 1e-2  # the removed channels mattered
    assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# 10. Activation importance removes dead neurons


def test_activation_importance_removes_the_dead_neurons():
    dead = (1, 3, 4, 8, 10, 11, 13, 14)
    model = _mlp(8, 16, 16, 3)
    with torch.no_grad():
        model[0].weight[list(dead)] = 0
        model[0].bias[list(dead)] = -1.0  # ReLU(-1) = 0 for every input
        model[2].weight[:, list(dead)] *= 10  # large outgoing weights: magnitude would keep them
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    pruned, removed = {}, {}
    for importance in ("activation", "l2"):
        pruned[importance] = copy.deepcopy(model)
        report = prune_channels(
            pruned[importance], (x,), ratio=0.5, importance=importance, ignored_layers=["2"]
        )  # only the first layer's neurons
        removed[importance] = report.layers[("0", "out")].removed
        assert len(removed[importance]) == 8 and pruned[importance][2].in_features == 8
    assert removed["activation"] == dead
    assert not set(removed["l2"]) & set(dead)
    with torch.no_grad():  # what reached the output is all still there
        assert_allclose(pruned["activation"](x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


# Built-in recipes on the digits example (a trained CNN): quality kept, the promised sizes


@pytest.mark.int8_kernel
@pytest.mark.parametrize("name", ["sparse-int8", "2:4", "slim"])
def test_builtin_pruning_recipes_on_digits(name):
    ex = presso.load_example("digits")
    report = presso.compress(ex.model, name, data=ex.data, task=ex.task, bench=QUICK).report
    assert report.budget.passed and report.budget.drop <= 0.01
    smaller = report.baseline.size_bytes / report.compressed.size_bytes
    if name == "sparse-int8":
        assert [s.technique for s in report.stages] == ["prune", "int8", "sparse-storage"]
        rows = report.stages[0].layers
        zeros = sum(r["sparsity"] * r["parameters"] for r in rows)
        assert zeros / sum(r["parameters"] for r in rows) >= 0.895
        assert smaller >= 6.0  # int8 alone: about 3.5x
    elif name == "2:4":
        assert any("features.0 (9 inputs)" in n for n in report.stages[0].notes)
        assert smaller >= 1.6
    else:
        assert report.compressed.parameters <= 0.3 * report.baseline.parameters
        assert smaller >= 3.0


def test_transformer_retry_fractions_are_reproduced_by_the_pinned_recipe():
    """A milder slim retry scales heads and ffn together; recipe.yaml pins both, so the
    pinned recipe re-runs exactly the retried fractions (pinning ffn alone would restore
    the original heads fraction)."""
    from presso.techniques.pruning.config import SlimConfig
    from presso.techniques.pruning.slim_stage import heads_and_ffn

    cfg = SlimConfig(heads=0.25, ffn=0.5)
    heads, ffn = heads_and_ffn(cfg, 0.25)  # the first milder retry
    assert (heads, ffn) == (0.125, 0.25)
    pinned = SlimConfig(heads=heads, ffn=ffn)
    assert heads_and_ffn(pinned, pinned.ffn) == (0.125, 0.25)
    assert heads_and_ffn(SlimConfig(heads=0.25, ffn=ffn), ffn) != (0.125, 0.25)  # ffn alone: wrong heads
