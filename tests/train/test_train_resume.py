"""Checkpoints of the fine-tuning loop: a resumed fit ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_rows
from torch import nn

from presso.errors import PressoError
from presso.train import FitSettings, fit

# 192 training rows: 4 batches of 40 and one of 32
SETTINGS = FitSettings(epochs=5, lr=1e-2, batch_size=40, weight_decay=0.01, patience=None, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(kind="plain", hidden=16, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "plain":
        return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    if kind == "dropout":
        return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 2))
    return nn.Sequential(
        nn.Linear(6, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 2)
    )  # "batchnorm": running statistics are buffers


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _stop_after(epoch: int):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt  # as Ctrl-C between epochs

    return on_epoch


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["plain", "dropout", "batchnorm"])
@pytest.mark.parametrize(
    "settings",
    [
        SETTINGS,
        FitSettings(epochs=10, lr=0.05, batch_size=16, patience=2, seed=1),
        FitSettings(epochs=5, lr=1e-2, batch_size=40, patience=None, seed=3, schedule="linear", warmup=0.2),
    ],
    ids=["all-epochs", "early-stop", "linear-schedule"],
)
def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path, kind, settings):
    train, val = regression_rows()
    whole = _mlp(kind)
    expected = fit(whole, train, val, F.mse_loss, settings=settings)

    ckpt = tmp_path / "fit.pt"
    net = _mlp(kind)
    with pytest.raises(KeyboardInterrupt):
        fit(net, train, val, F.mse_loss, settings=settings, on_epoch=_stop_after(2), checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2

    rows = []
    net = _mlp(kind, seed=99)  # other starting weights: all of them come from the checkpoint
    got = fit(net, train, val, F.mse_loss, settings=settings, on_epoch=rows.append, checkpoint=ckpt)
    _assert_same(_state(net), _state(whole))
    assert got.history == expected.history  # train losses and scores equal as floats, not approximately
    assert (got.epochs_run, got.best_epoch, got.best_score, got.stopped) == (
        expected.epochs_run,
        expected.best_epoch,
        expected.best_score,
        expected.stopped,
    )
    assert (got.resumed_from, expected.resumed_from) == (2, 0)
    assert [r["epoch"] for r in rows] == list(range(3, expected.epochs_run + 1))  # only the new epochs
    assert rows  # the early stop, too, comes after the interruption
    if settings.patience is not None:
        assert expected.stopped == "early-stop" and expected.epochs_run < settings.epochs
    assert _files(tmp_path) == ["fit.pt"]


def test_ctrl_c_mid_epoch_keeps_the_last_finished_epoch_and_the_best_weights(tmp_path):
    train, val = regression_rows()
    whole = _mlp("dropout")
    fit(whole, train, val, F.mse_loss, settings=SETTINGS)

    calls, states = [0], []

    def loss(out, target):  # calls: 1 start validation, then 5 batches + 1 validation per epoch
        calls[0] += 1
        if calls[0] == 16:  # the third batch of epoch 3
            raise KeyboardInterrupt
        return F.mse_loss(out, target)

    ckpt = tmp_path / "fit.pt"
    net = _mlp("dropout")
    with pytest.raises(KeyboardInterrupt):
        fit(
            net,
            train,
            val,
            loss,
            settings=SETTINGS,
            on_epoch=lambda row: states.append((row, _state(net))),
            checkpoint=ckpt,
        )
    saved = torch.load(ckpt, weights_only=True)
    assert (
        len(states) == 2 and saved["epoch"] == 2 and not saved["finished"] and _files(tmp_path) == ["fit.pt"]
    )
    best = max(states, key=lambda s: s[0]["val_score"])
    _assert_same(_state(net), best[1])  # the module holds the best weights, as without a checkpoint

    report = fit(_mlp("dropout"), train, val, F.mse_loss, settings=SETTINGS, checkpoint=ckpt)
    assert report.resumed_from == 2
    net = _mlp("dropout", seed=5)
    fit(net, train, val, F.mse_loss, settings=SETTINGS, checkpoint=ckpt)  # finished: restores only
    _assert_same(_state(net), _state(whole))


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    train, val = regression_rows()
    whole = _mlp()
    expected = fit(whole, train, val, F.mse_loss, settings=SETTINGS)
    save = torch.save

    def torn(obj, f):  # Ctrl-C halfway through writing epoch 2
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    def on_epoch(row):
        if row["epoch"] == 1:
            monkeypatch.setattr(torch, "save", torn)

    ckpt = tmp_path / "fit.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(_mlp(), train, val, F.mse_loss, settings=SETTINGS, on_epoch=on_epoch, checkpoint=ckpt)
    monkeypatch.setattr(torch, "save", save)
    assert _files(tmp_path) == ["fit.pt"] and torch.load(ckpt, weights_only=True)["epoch"] == 1

    net = _mlp()
    report = fit(net, train, val, F.mse_loss, settings=SETTINGS, checkpoint=ckpt)
    assert report.resumed_from == 1 and report.history == expected.history
    _assert_same(_state(net), _state(whole))


def test_a_finished_checkpoint_restores_the_best_weights_without_training(tmp_path):
    train, val = regression_rows()
    ckpt = tmp_path / "sub" / "fit.pt"  # the folder is made
    first = _mlp()
    expected = fit(first, train, val, F.mse_loss, settings=SETTINGS, checkpoint=str(ckpt))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["finished"] and saved["stopped"] == "epochs" and saved["epoch"] == SETTINGS.epochs
    assert expected.resumed_from == 0

    calls, rows = [0], []

    def loss(out, target):
        calls[0] += 1
        return F.mse_loss(out, target)

    net = _mlp(seed=7)
    net.eval()
    report = fit(net, train, val, loss, settings=SETTINGS, on_epoch=rows.append, checkpoint=ckpt)
    assert calls[0] == 0 and rows == []  # neither trained nor validated
    assert (report.epochs_run, report.best_epoch, report.best_score, report.history, report.stopped) == (
        expected.epochs_run,
        expected.best_epoch,
        expected.best_score,
        expected.history,
        expected.stopped,
    )
    assert report.resumed_from == SETTINGS.epochs
    _assert_same(_state(net), _state(first))
    assert not net.training  # the module's mode is given back here too
    assert _files(ckpt.parent) == ["fit.pt"]


def test_without_validation_the_last_weights_are_resumed_and_kept(tmp_path):
    train, _ = regression_rows()
    whole = _mlp()
    expected = fit(whole, train, None, F.mse_loss, settings=SETTINGS)
    ckpt = tmp_path / "fit.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(_mlp(), train, None, F.mse_loss, settings=SETTINGS, on_epoch=_stop_after(3), checkpoint=ckpt)
    net = _mlp()
    report = fit(net, train, None, F.mse_loss, settings=SETTINGS, checkpoint=ckpt)
    assert report.history == expected.history and report.best_epoch == SETTINGS.epochs
    _assert_same(_state(net), _state(whole))


class Gated(nn.Module):
    """A second layer that a hook switches on: a state the state_dict does not hold."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 2), nn.Linear(2, 2)
        self.on = False

    def forward(self, x):
        out = self.a(x)
        return self.b(out) if self.on else out


def test_before_epoch_is_replayed_on_resume(tmp_path):
    train, val = regression_rows()

    def hook(net):
        def before_epoch(epoch):
            if epoch == 2:
                net.on = True
                return True
            return None

        return before_epoch

    whole = Gated()
    expected = fit(whole, train, val, F.mse_loss, settings=SETTINGS, before_epoch=hook(whole))
    ckpt = tmp_path / "fit.pt"
    net = Gated()
    with pytest.raises(KeyboardInterrupt):
        fit(
            net,
            train,
            val,
            F.mse_loss,
            settings=SETTINGS,
            before_epoch=hook(net),
            on_epoch=_stop_after(3),
            checkpoint=ckpt,
        )
    net = Gated()
    report = fit(net, train, val, F.mse_loss, settings=SETTINGS, before_epoch=hook(net), checkpoint=ckpt)
    assert net.on and report.history == expected.history and report.best_epoch == expected.best_epoch
    _assert_same(_state(net), _state(whole))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("settings", r"the fine-tuning settings differ"),
        ("rows", r"the number of training rows differ"),
        ("validation", r"the number of validation rows differ"),
        ("shapes", r"the parameter names or shapes differ"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, change, match):
    train, val = regression_rows()
    ckpt = tmp_path / "fit.pt"
    fit(_mlp(), train, val, F.mse_loss, settings=FitSettings(epochs=1), checkpoint=ckpt)
    settings, net = FitSettings(epochs=1), _mlp()
    if change == "settings":
        settings = FitSettings(epochs=2)
    elif change == "rows":
        train = ({"x": train[0]["x"][:100]}, train[1][:100])
    elif change == "validation":
        val = None
    else:
        net = _mlp(hidden=8)
    with pytest.raises(
        PressoError,
        match=rf"^The checkpoint .*fit\.pt is from another fine-tuning run \({match}\); "
        r"delete it or pick another checkpoint path\.$",
    ):
        fit(net, train, val, F.mse_loss, settings=settings, checkpoint=ckpt)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    train, val = regression_rows()
    torn, other = tmp_path / "torn.pt", tmp_path / "other.pt"
    torn.write_bytes(b"not a torch file")
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(PressoError, match=r"torn\.pt could not be read \(\w+\); delete it or pick another"):
        fit(_mlp(), train, val, F.mse_loss, checkpoint=torn)
    with pytest.raises(PressoError, match=r"other\.pt is not a presso fine-tuning checkpoint; delete it"):
        fit(_mlp(), train, val, F.mse_loss, checkpoint=other)
