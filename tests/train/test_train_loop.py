"""The fine-tuning loop: determinism, best weights kept, stopping rules, teacher losses and scores."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import regression_rows
from numpy.testing import assert_allclose
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from presso.errors import PressoError
from presso.train import FitReport, FitSettings, fit, task_score, teacher_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed=0, dropout=0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _neg_mse(net, data) -> float:
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(data[0]["x"])).numpy()
    return task_score("regression")(out, data[1])


class Scripted:
    """A score_fn returning a fixed sequence: epoch 0 (the starting weights), then each epoch."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = 0

    def __call__(self, outputs, targets):
        self.calls += 1
        return self.scores[self.calls - 1]


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    train, val = regression_rows()
    net = _mlp(dropout=0.2)  # dropout draws from fit's seeded stream too
    runs = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        m = copy.deepcopy(net)
        torch.manual_seed(1000 + len(runs))  # the caller's global seed must not matter
        report = fit(
            m, train, val, F.mse_loss, settings=FitSettings(epochs=3, lr=1e-2, seed=seed, patience=None)
        )
        runs[key] = (_state(m), [h["train_loss"] for h in report.history])
    assert _same(runs["a"][0], runs["b"][0]) and runs["a"][1] == runs["b"][1]
    assert not _same(runs["a"][0], runs["c"][0])


def test_fit_leaves_the_global_rng_alone():
    train, val = regression_rows()
    net = _mlp(dropout=0.5)
    torch.manual_seed(5)
    fit(net, train, val, F.mse_loss, settings=FitSettings(epochs=1))
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))


# --- best weights, stopping -------------------------------------------------------------------


def test_best_epoch_weights_are_restored():
    train, val = regression_rows()
    net = _mlp()
    states = []
    score = Scripted([0.1, 0.5, 0.9, 0.3, 0.2])
    report = fit(
        net,
        train,
        val,
        F.mse_loss,
        score,
        FitSettings(epochs=4, lr=1e-2, patience=None),
        on_epoch=lambda row: states.append(_state(net)),
    )
    assert (report.epochs_run, report.best_epoch, report.best_score, report.stopped) == (4, 2, 0.9, "epochs")
    assert [h["val_score"] for h in report.history] == [0.5, 0.9, 0.3, 0.2]
    assert _same(_state(net), states[1]) and not _same(_state(net), states[3])
    assert net.training  # the module's mode is given back


def test_a_diverging_fit_ends_where_it_started():
    train, val = regression_rows()
    net = _mlp()
    fit(net, train, val, F.mse_loss, settings=FitSettings(epochs=20, lr=1e-2, patience=None))
    start, start_score = _state(net), _neg_mse(net, val)
    report = fit(
        net, train, val, F.mse_loss, task_score("regression"), FitSettings(epochs=3, lr=50.0, patience=None)
    )  # a huge step size: every epoch worse
    assert all(h["val_score"] < start_score for h in report.history)
    assert report.best_epoch == 0 and report.best_score == start_score
    assert _same(_state(net), start) and _neg_mse(net, val) == report.best_score


def test_training_improves_and_reports_the_restored_score():
    train, val = regression_rows()
    net = _mlp()
    before = _neg_mse(net, val)
    report = fit(net, train, val, F.mse_loss, settings=FitSettings(epochs=10, lr=1e-2, batch_size=32))
    after = _neg_mse(net, val)
    assert report.best_epoch > 0 and after > before + 0.1  # measured: -0.82 -> -0.10
    assert_allclose(after, report.best_score, rtol=1e-5)  # default score: -loss on all of val


def test_early_stop_after_patience_epochs_without_improvement():
    train, val = regression_rows()
    score = Scripted([0.5, 0.6, 0.4, 0.6, 0.55, 0.9, 0.9])
    report = fit(_mlp(), train, val, F.mse_loss, score, FitSettings(epochs=6, patience=3))
    assert (report.epochs_run, report.best_epoch, report.stopped) == (4, 1, "early-stop")  # 0.6 is not > 0.6


def test_time_cap_stops_after_the_epoch_that_crosses_it():
    train, val = regression_rows()
    report = fit(_mlp(), train, val, F.mse_loss, settings=FitSettings(epochs=5, max_seconds=1e-9))
    assert (report.epochs_run, report.stopped) == (1, "time")


def test_without_validation_every_epoch_runs_and_the_last_weights_stay():
    train, _ = regression_rows()
    net, rows = _mlp(), []
    report = fit(
        net, train, None, F.mse_loss, settings=FitSettings(epochs=3, patience=1), on_epoch=rows.append
    )
    assert isinstance(report, FitReport)
    assert (report.epochs_run, report.best_epoch, report.stopped) == (3, 3, "epochs")
    assert math.isnan(report.best_score) and [r["val_score"] for r in rows] == [None] * 3
    assert rows == report.history and rows[2]["train_loss"] < rows[0]["train_loss"]


def test_before_epoch_true_makes_the_current_weights_the_new_reference():
    train, val = regression_rows()
    # The starting 0.9 is never beaten, but the reset at epoch 3 validates again (0.2).
    score = Scripted([0.9, 0.5, 0.6, 0.2, 0.3, 0.25])
    report = fit(
        _mlp(),
        train,
        val,
        F.mse_loss,
        score,
        FitSettings(epochs=4, patience=None),
        before_epoch=lambda epoch: epoch == 3,
    )
    assert (report.best_epoch, report.best_score) == (3, 0.3)
    assert score.calls == 6


def test_keyboard_interrupt_propagates_with_the_best_weights_restored():
    train, val = regression_rows()
    net, states = _mlp(), []

    def stop(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            net,
            train,
            val,
            F.mse_loss,
            Scripted([0.0, 0.5, 0.4]),
            FitSettings(epochs=5),
            on_epoch=lambda row: states.append(_state(net)),
            before_epoch=stop,
        )
    assert len(states) == 2 and _same(_state(net), states[0])


# --- inputs ----------------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)

    def forward(self, a, b):
        return self.a(a) + self.b(b), a  # a tuple: its first item is the output


def test_inputs_are_passed_in_input_names_order():
    rng = np.random.default_rng(0)
    x = {"b": rng.normal(size=(40, 2)).astype(np.float32), "a": rng.normal(size=(40, 3)).astype(np.float32)}
    y = rng.normal(size=(40, 1))  # float64 targets become float32
    report = fit(
        TwoInputs(), (x, y), (x, y), F.mse_loss, settings=FitSettings(epochs=2), input_names=["a", "b"]
    )
    assert report.epochs_run == 2
    with pytest.raises(RuntimeError):  # dict order (b, a) does not fit the layers
        fit(TwoInputs(), (x, y), None, F.mse_loss, settings=FitSettings(epochs=1))


@pytest.mark.parametrize(
    ("train", "match"),
    [
        (
            ({"x": np.zeros((4, 6), np.float32)}, np.zeros((5, 2), np.float32)),
            r"'x' has 4 rows but the targets have 5",
        ),
        (
            ({"y": np.zeros((4, 6), np.float32)}, np.zeros((4, 2), np.float32)),
            r"Input 'x' is not in the training data",
        ),
        (({}, np.zeros((4, 2), np.float32)), r"must be a pair \(inputs, targets\)"),
    ],
)
def test_bad_data(train, match):
    with pytest.raises(PressoError, match=match):
        fit(_mlp(), train, None, F.mse_loss, input_names=["x"] if train[0] else None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": -1}, r"'epochs' option .* must be an int >= 0\. Got -1 instead"),
        ({"lr": 0.0}, r"'lr' option .* must be a positive number"),
        ({"batch_size": 0}, r"'batch_size' option"),
        ({"patience": 0}, r"'patience' option .* an int >= 1 or None"),
        ({"weight_decay": -0.1}, r"'weight_decay' option"),
        ({"max_seconds": 0}, r"'max_seconds' option"),
        ({"seed": 1.5}, r"'seed' option"),
        ({"schedule": "cosine"}, r"'schedule' option .* one of constant, linear\. Got 'cosine'"),
        ({"warmup": 1.0}, r"'warmup' option .* a fraction in \[0, 1\)"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(PressoError, match=match):
        FitSettings(**kwargs)


def test_linear_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    train, _ = regression_rows()  # 192 rows: 12 steps of 16 per epoch, 36 in all
    net = _mlp()
    seen: list[float] = []
    settings = FitSettings(epochs=3, lr=0.1, batch_size=16, patience=None, schedule="linear", warmup=0.25)
    # the step size each optimizer step is taken with
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        fit(net, train, None, F.mse_loss, settings=settings)
    finally:
        hook.remove()
    warm = 9  # a quarter of 36 steps
    expected = [0.1 * (s + 1) / warm for s in range(warm)] + [0.1 * (36 - s) / 27 for s in range(warm, 36)]
    assert_allclose(seen, expected, rtol=1e-12)
    assert seen[warm - 1] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.1 / 27)


def test_bf16_runs_the_forward_under_autocast_and_keeps_float32_weights_and_loss():
    train, val = regression_rows()
    settings = {"epochs": 1, "lr": 0.01, "batch_size": 16, "patience": None}
    dtypes: list[torch.dtype] = []

    def loss(out, y):
        dtypes.append(out.dtype)
        return F.mse_loss(out, y)

    nets = {}
    for precision in ("fp32", "bf16"):
        nets[precision] = net = _mlp()
        # the first Linear's output dtype in the training forward: bf16 under autocast
        seen: list[torch.dtype] = []

        def record(module, _inputs, out, seen=seen):
            if module.training:
                seen.append(out.dtype)

        handle = net[0].register_forward_hook(record)
        fit(net, train, val, loss, settings=FitSettings(**settings, precision=precision))
        handle.remove()
        assert set(seen) == {torch.float32 if precision == "fp32" else torch.bfloat16}
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert set(dtypes) == {torch.float32}  # the loss always sees float32 outputs
    # the same 12 steps: bf16 rounding moves the weights a little, not the training
    fp32, bf16 = _state(nets["fp32"]), _state(nets["bf16"])
    assert not _same(fp32, bf16)
    assert max(float((fp32[k] - bf16[k]).abs().max()) for k in fp32) < 0.02
    assert _neg_mse(nets["bf16"], val) == pytest.approx(_neg_mse(nets["fp32"], val), rel=0.05)
    with pytest.raises(
        PressoError, match="'precision' option of the fine-tuning settings must be one of fp32, bf16"
    ):
        FitSettings(precision="fp16")


# --- teacher losses and scores ---------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_with_identical_logits_is_zero(temperature):
    logits = torch.tensor([[1.0, -2.0, 0.5], [3.0, 3.0, 0.0]])
    assert float(teacher_loss("classification", temperature)(logits, logits.clone())) == pytest.approx(
        0, abs=1e-7
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_two_classes_by_hand(temperature):
    student = torch.tensor([[0.0, 0.0]])  # uniform at every temperature
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax at T = 1: (0.75, 0.25)
    p1 = 3 ** (1 / temperature) / (3 ** (1 / temperature) + 1)
    kl = p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)
    if temperature == 1.0:
        assert kl == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    got = float(teacher_loss("classification", temperature)(student, teacher))
    assert_allclose(got, kl * temperature**2, rtol=1e-6)


def test_kl_is_a_batch_mean():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    loss = teacher_loss("classification")
    two = loss(torch.cat([s, t]), torch.cat([t, t]))  # second row agrees: half the single-row loss
    assert_allclose(float(two), float(loss(s, t)) / 2, rtol=1e-6)


def test_regression_and_embedding_losses():
    s, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    for task in ("regression", "forecast", "anomaly"):
        assert float(teacher_loss(task)(s, t)) == pytest.approx((1 + 4) / 4)
    emb = teacher_loss("embedding")
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(emb(a, 3 * a)) == pytest.approx(0.0, abs=1e-7)
    assert float(emb(a, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))) == pytest.approx(1.5)  # cos 0 and -1


def test_scores():
    out = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 5.0], [1.0, 0.0]])
    ref = np.array([[0.0, 3.0], [0.0, 3.0], [1.0, 2.0], [4.0, 3.0]])
    assert task_score("classification")(out, ref) == 0.75
    assert task_score("classification")(out, np.array([1, 1, 1, 1])) == 0.5  # labels
    assert task_score("regression")(np.array([1.0, 2.0]), np.array([[1.0], [4.0]])) == -2.0
    assert task_score("embedding")(
        np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 0.0], [1.0, 0.0]])
    ) == pytest.approx(0.5)


def test_unknown_task_and_bad_temperature():
    with pytest.raises(PressoError, match=r"Unknown task 'translation'\. Choose one of: classification"):
        teacher_loss("translation")
    with pytest.raises(PressoError, match=r"Unknown task 'translation'"):
        task_score("translation")
    with pytest.raises(PressoError, match=r"'temperature' option must be a positive number"):
        teacher_loss("classification", 0.0)
    with pytest.raises(PressoError, match=r"integers; for labels use .*cross_entropy"):
        teacher_loss("classification")(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_batch_size_one_trains_every_row():
    """batch_size 1 used to skip every batch (the lone-last-row rule) and divide by zero."""
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)
    net = torch.nn.Linear(1, 1)
    r = fit(
        net,
        ({"x": x}, 3 * x),
        None,
        torch.nn.functional.mse_loss,
        settings=FitSettings(epochs=2, lr=0.05, batch_size=1),
    )
    assert r.epochs_run == 2 and np.isfinite(r.history[-1]["train_loss"])


def test_a_long_epoch_over_a_batch_source_reports_its_rows_as_it_goes(monkeypatch):
    """An epoch over a large corpus takes most of an hour on two cores: the fit says how far
    it has come in between (here: after every batch), ending at the epoch's row count."""
    from presso.train import loop
    from presso.train.batches import LengthBuckets

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    y = x[:, :2] * 2.0

    def fetch(rows):
        return {"x": x[rows]}, y[rows]

    source = LengthBuckets(np.ones(100, int), fetch, batch_size=16)
    heard: list[tuple[int, int, int]] = []
    fit(
        _mlp(),
        source,
        None,
        F.mse_loss,
        settings=FitSettings(epochs=2, lr=0.01),
        input_names=["x"],
        on_rows=lambda *r: heard.append(r),
    )
    for epoch in (1, 2):
        rows = [seen for e, seen, total in heard if e == epoch]
        # after each of the 7 batches (six of 16 rows, one of 4, in a shuffled order)
        steps = np.diff([0, *rows])
        assert len(rows) == 7 and rows[-1] == 100 and sorted(steps) == [4] + [16] * 6
        assert {total for e, _, total in heard if e == epoch} == {100}
