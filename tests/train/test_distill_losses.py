"""Distillation losses against numbers worked out by hand or in numpy: soft targets, Hinton's mix,
probability teachers, regression, cosine, feature hints and the feature tap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.train.losses import (
    FeatureTap,
    HintLoss,
    cosine_loss,
    hinton_loss,
    looks_like_probabilities,
    regression_loss,
    similarity_loss,
    soft_target_loss,
    teacher_logits_from,
)

S = [[1.0, 2.0, 3.0]]
T = [[3.0, 2.0, 1.0]]


def _softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(student, teacher, temp):
    """sum p (log p - log q) per row, mean over rows, in float64 numpy."""
    p, q = _softmax(np.asarray(teacher) / temp), _softmax(np.asarray(student) / temp)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)))


def _ce(student, labels):
    s = np.asarray(student, np.float64)
    logz = np.log(np.exp(s).sum(-1))
    return float(np.mean(logz - s[np.arange(len(s)), labels]))


def _f(x: torch.Tensor) -> float:
    return float(x.detach())


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float32, requires_grad=grad)


# ---- soft targets -------------------------------------------------------------------------


def test_soft_target_matches_hand_kl_at_t2():
    # p = softmax([1.5, 1, .5]), q = softmax([.5, 1, 1.5]); KL = sum p log(p/q) = 0.32016; loss = 4 KL
    assert_allclose(_kl(S, T, 2.0), 0.3201567, atol=1e-6)
    assert_allclose(float(soft_target_loss(_t(S), _t(T), temperature=2.0)), 4 * _kl(S, T, 2.0), rtol=1e-5)


@pytest.mark.parametrize("temp", [0.5, 1.0, 2.0, 5.0])
def test_soft_target_is_t_squared_times_kl(temp):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    loss = float(soft_target_loss(_t(s), _t(t), temperature=temp))
    assert_allclose(loss / _kl(s, t, temp), temp**2, rtol=1e-4)


def test_soft_target_zero_when_student_equals_teacher():
    x = torch.randn(5, 7)
    assert float(soft_target_loss(x, x.clone(), temperature=3.0)) == pytest.approx(0.0, abs=1e-6)


def test_soft_target_rows_are_all_leading_axes():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))  # (N, T, C): mean over 6 rows
    expected = 4 * _kl(s.reshape(6, 4), t.reshape(6, 4), 2.0)
    assert_allclose(float(soft_target_loss(_t(s), _t(t), 2.0)), expected, rtol=1e-5)


def test_gradients_reach_student_not_teacher():
    s, t = _t(S, grad=True), _t(T, grad=True)
    hinton_loss(s, t, torch.tensor([0]), temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and torch.any(s.grad != 0)
    assert t.grad is None


# ---- Hinton's mix -------------------------------------------------------------------------


def test_alpha_zero_is_exactly_cross_entropy():
    s, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    got = hinton_loss(s, torch.randn(8, 5), y, temperature=3.0, alpha=0.0)
    assert torch.equal(got, F.cross_entropy(s, y))
    assert_allclose(float(F.cross_entropy(_t(S), torch.tensor([2]))), _ce(S, [2]), rtol=1e-6)


def test_alpha_one_is_exactly_soft_targets_without_labels():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    got = hinton_loss(s, t, None, temperature=3.0, alpha=1.0)
    assert torch.equal(got, soft_target_loss(s, t, temperature=3.0))


def test_alpha_half_is_the_hand_mix():
    # CE(s, 2) = log(e + e^2 + e^3) - 3 = 0.40761; 0.5 * CE + 0.5 * 4 * KL
    expected = 0.5 * _ce(S, [2]) + 0.5 * 4 * _kl(S, T, 2.0)
    assert_allclose(expected, 0.5 * 0.4076060 + 0.5 * 4 * 0.3201567, rtol=1e-6)
    assert_allclose(
        float(hinton_loss(_t(S), _t(T), torch.tensor([2]), temperature=2.0, alpha=0.5)), expected, rtol=1e-5
    )


def test_whole_number_float_labels_are_class_indices():
    got = hinton_loss(_t(S), _t(T), torch.tensor([2.0]), alpha=0.0)
    assert_allclose(float(got), _ce(S, [2]), rtol=1e-6)


# ---- probability teachers -----------------------------------------------------------------


def test_probabilities_become_log_probabilities():
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    assert looks_like_probabilities(p) and looks_like_probabilities(torch.tensor(p))
    logits = teacher_logits_from(p)
    assert_allclose(torch.softmax(logits, -1).numpy(), p, atol=1e-6)
    # at temperature T the teacher's distribution is p ** (1/T), renormalised
    tempered = p**0.5 / (p**0.5).sum(-1, keepdims=True)
    assert_allclose(torch.softmax(logits / 2, -1).numpy(), tempered, atol=1e-6)


def test_zero_probabilities_are_clamped_finite():
    logits = teacher_logits_from(torch.tensor([[0.0, 1.0], [0.3, 0.7]]))
    assert torch.all(torch.isfinite(logits))
    assert_allclose(float(logits[0, 0]), np.log(1e-7), rtol=1e-6)
    assert np.isfinite(float(soft_target_loss(torch.randn(2, 2), logits, temperature=4.0)))


@pytest.mark.parametrize("x", [[[2.0, -1.0]], [[0.2, 0.7]], [[1.0], [1.0]], [[1, 0]], [[np.nan, 1.0]]])
def test_logits_pass_unchanged(x):
    x = torch.tensor(x)
    assert not looks_like_probabilities(x)
    assert teacher_logits_from(x) is x


# ---- regression and cosine ----------------------------------------------------------------


def test_regression_loss_is_numpy_mse_with_teacher_reshaped():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=12)
    assert_allclose(float(regression_loss(_t(s), _t(t))), np.mean((s - t.reshape(4, 3)) ** 2), rtol=1e-5)


def test_cosine_loss_orthogonal_and_identical_rows():
    s = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    t = np.array([[0.0, 5.0, 0.0], [1.0, 2.0, 3.0]])  # cos 0 and cos 1 -> 1 - 0.5
    cos = (s * t).sum(1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
    assert_allclose(cos, [0.0, 1.0])
    assert_allclose(float(cosine_loss(_t(s), _t(t))), 0.5, atol=1e-6)


def test_cosine_loss_zero_row_is_finite():
    assert np.isfinite(float(cosine_loss(torch.zeros(2, 3), torch.ones(2, 3))))


# ---- feature hints ------------------------------------------------------------------------


def test_hint_equal_widths_has_no_parameters_and_is_mse():
    hint = HintLoss(6, 6)
    assert list(hint.parameters()) == []
    s, t = np.random.default_rng(3).normal(size=(2, 2, 5, 6))
    assert_allclose(_f(hint(_t(s), _t(t))), np.mean((s - t) ** 2), rtol=1e-5)


def test_hint_normalized_is_mse_over_the_teachers_mean_square_whatever_the_scale():
    hint = HintLoss(6, 6, normalize=True)
    s, t = np.random.default_rng(4).normal(size=(2, 3, 7, 6))
    expected = np.mean((s - t) ** 2) / np.mean(t**2)
    assert_allclose(_f(hint(_t(s), _t(t))), expected, rtol=1e-5)
    assert_allclose(_f(hint(_t(50 * s), _t(50 * t))), expected, rtol=1e-5)  # hidden states of any scale
    assert _f(hint(_t(t), _t(t))) == 0.0


def test_hint_projects_last_axis_of_hidden_states():
    hint = HintLoss(3, 2)
    assert tuple(hint.proj.weight.shape) == (2, 3)
    w = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    with torch.no_grad():
        hint.proj.weight.copy_(_t(w))
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 2))  # (N, T, C)
    assert_allclose(_f(hint(_t(s), _t(t))), np.mean((s @ w.T - t) ** 2), rtol=1e-5)


def test_hint_projects_channel_axis_of_conv_maps():
    hint = HintLoss(3, 2)
    w = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    with torch.no_grad():
        hint.proj.weight.copy_(_t(w))
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 2, 4, 5))  # (N, C, H, W)
    projected = np.einsum("oc,nchw->nohw", w, s)
    assert_allclose(_f(hint(_t(s), _t(t))), np.mean((projected - t) ** 2), rtol=1e-5)
    conv = nn.Conv2d(3, 2, 1, bias=False)  # the same as a 1x1 convolution
    with torch.no_grad():
        conv.weight.copy_(_t(w)[:, :, None, None])
    assert_allclose(_f(hint(_t(s), _t(t))), _f(F.mse_loss(conv(_t(s)), _t(t))), rtol=1e-5)


def test_hint_channels_first_flag_for_conv1d():
    hint = HintLoss(3, 2, channels_first=True)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 2, 7)  # (N, C, L)
    assert hint(s, t).shape == ()


def test_hint_trains_projection_and_student():
    hint, s, t = HintLoss(3, 2), torch.randn(4, 3, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    hint(s, t).backward()
    assert s.grad is not None and hint.proj.weight.grad is not None and t.grad is None


# ---- feature tap --------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.rnn = nn.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):  # (N, L, 3)
        out, _ = self.rnn(self.body(x))
        return self.head(out)


def test_feature_tap_records_layer_outputs():
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(2, 6, 3)
    with FeatureTap(net, ["body", "rnn"]) as tap:
        net(x)
    with torch.no_grad():
        body = net.body(x)
        rnn, _ = net.rnn(body)  # tuple output: the first tensor is recorded
    assert_allclose(tap.features["body"].detach().numpy(), body.numpy(), rtol=1e-6)
    assert_allclose(tap.features["rnn"].detach().numpy(), rnn.numpy(), rtol=1e-6)
    assert len(net.body._forward_hooks) == 0 and len(net.rnn._forward_hooks) == 0


def test_feature_tap_removes_hooks_when_forward_raises():
    net = _Net()
    with pytest.raises(RuntimeError), FeatureTap(net, "head"):
        net(torch.randn(2, 6, 7))  # wrong input width
    assert len(net.head._forward_hooks) == 0


def test_feature_tap_with_hint_loss_between_student_and_teacher():
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Sequential(nn.Linear(3, 8), nn.ReLU())
    x, hint = torch.randn(5, 3), HintLoss(4, 8)
    with FeatureTap(student, "0") as s_tap, FeatureTap(teacher, "0") as t_tap:
        student(x)
        with torch.no_grad():
            teacher(x)
    hint(s_tap.features["0"], t_tap.features["0"]).backward()
    assert student[0].weight.grad is not None and teacher[0].weight.grad is None


def test_feature_tap_unknown_layer_lists_valid_names():
    with pytest.raises(PressoError, match=r"Layer 'nope' is not in the module.*body, body\.0"):
        with FeatureTap(_Net(), ["body", "nope"]):
            pass


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "x", None, True, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(PressoError, match=r"'alpha' option must be a number in \[0, 1\]"):
        hinton_loss(_t(S), _t(T), torch.tensor([0]), alpha=alpha)


@pytest.mark.parametrize("temp", [0, -1, "2", float("inf")])
def test_bad_temperature(temp):
    with pytest.raises(PressoError, match="'temperature' option must be a positive number"):
        soft_target_loss(_t(S), _t(T), temperature=temp)
    with pytest.raises(PressoError, match="'temperature'"):
        hinton_loss(_t(S), _t(T), temperature=temp, alpha=1.0)


def test_missing_labels():
    with pytest.raises(PressoError, match="needs labels; give labels or set alpha: 1"):
        hinton_loss(_t(S), _t(T), None, alpha=0.5)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0.5]), "'labels' must be class indices"),
        (torch.tensor([0, 1]), "'labels' have 2 values but the logits have 1 rows"),
        (torch.tensor([3]), r"'labels' must be class indices in \[0, 3\)"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(PressoError, match=match):
        hinton_loss(_t(S), _t(T), labels, alpha=0.5)


@pytest.mark.parametrize("fn", [soft_target_loss, regression_loss, cosine_loss])
def test_mismatched_shapes(fn):
    match = r"'teacher(_logits)?' have shape \(2, 4\) but the 'student(_logits)?' have \(2, 3\)"
    with pytest.raises(PressoError, match=match):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))


def test_integer_teacher_and_student():
    with pytest.raises(PressoError, match="'teacher_logits' are integers"):
        soft_target_loss(_t(S), torch.tensor([[3, 2, 1]]))
    with pytest.raises(PressoError, match="'student' must be a floating-point tensor"):
        regression_loss(torch.tensor([[1, 2]]), _t([[1.0, 2.0]]))


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 4), "'student_width' option of HintLoss must be an int >= 1"),
        ((4, 2.5), "'teacher_width' option of HintLoss must be an int >= 1"),
        ((4, 4, "yes"), "'channels_first' option of HintLoss"),
    ],
)
def test_bad_hint_options(args, match):
    with pytest.raises(PressoError, match=match):
        HintLoss(*args)


def test_hint_shape_errors():
    with pytest.raises(PressoError, match=r"'student_feat' \(2, 5\) have width 5 on axis 1 .*_width 3"):
        HintLoss(3, 2)(torch.zeros(2, 5), torch.zeros(2, 2))
    with pytest.raises(
        PressoError,
        match=r"'student_feat' \(2, 3, 4, 4\) \(projected \(2, 2, 4, 4\)\) and "
        r"the 'teacher_feat' \(2, 2, 8, 8\) differ",
    ):
        HintLoss(3, 2)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 8, 8))


def test_tap_of_layer_without_tensor_output():
    class NoneOut(nn.Module):
        def forward(self, x):
            return None

    net = nn.Sequential(NoneOut())
    with pytest.raises(PressoError, match="Layer '0' returned NoneType, not a tensor"):
        with FeatureTap(net, "0"):
            net(torch.zeros(1))
    assert len(net[0]._forward_hooks) == 0


# ---------------------------------------------------------------- similarity (ranking) loss


def _embeddings(n: int = 8, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_similarity_loss_is_zero_for_the_teachers_similarities(kind):
    t = _embeddings()
    scale = torch.rand(8, 1, generator=torch.Generator().manual_seed(1)) + 0.5
    assert float(similarity_loss(t.clone(), t, kind=kind)) == pytest.approx(0.0, abs=1e-6)
    assert float(similarity_loss(t * scale, t, kind=kind)) == pytest.approx(
        0.0, abs=1e-6
    )  # cosines unchanged
    assert float(similarity_loss(t[:1], t[:1], kind=kind)) == 0.0  # one row has no neighbours
    assert float(similarity_loss(_embeddings(seed=2), t, kind=kind)) > 1e-3


def test_similarity_loss_mse_is_the_mean_squared_off_diagonal_gap():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    # teacher cosines (0,1) 0, (0,2) .7071, (1,2) .7071; student 1, .7071, .7071: one pair off by 1 (twice)
    assert float(similarity_loss(s, t, kind="mse")) == pytest.approx(2 / 6, abs=1e-6)


def _similarity_gap(x: torch.Tensor, t: torch.Tensor) -> float:
    u, v = F.normalize(x), F.normalize(t)
    return float((u @ u.T - v @ v.T).abs().mean())


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_similarity_loss_gradient_moves_the_student_towards_the_teachers_neighbourhoods(kind):
    t = _embeddings()
    s = (t + 0.8 * _embeddings(seed=3)).requires_grad_(True)
    before = similarity_loss(s, t, kind=kind)
    before.backward()
    with torch.no_grad():
        stepped = s - 0.05 * s.grad / s.grad.norm()
        assert float(similarity_loss(stepped, t, kind=kind)) < float(before)
        assert _similarity_gap(stepped, t) < _similarity_gap(s, t)
    assert float(s.grad.norm()) > 0


def test_similarity_loss_kl_matches_numpy():
    t, s = _embeddings(5, 4), _embeddings(5, 4, seed=4)
    temperature = 0.1

    def rows(x):
        u = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
        sim = u @ u.T / temperature
        off = sim[~np.eye(5, dtype=bool)].reshape(5, 4)
        return off - np.log(np.exp(off).sum(axis=1, keepdims=True))  # log-softmax over the other rows

    lt, ls = rows(t), rows(s)
    expected = temperature**2 * (np.exp(lt) * (lt - ls)).sum(axis=1).mean()
    assert float(similarity_loss(s, t, temperature=temperature)) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(PressoError, match="kind must be kl or mse"):
        similarity_loss(s, t, kind="l1")
