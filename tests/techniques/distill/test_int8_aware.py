"""int8-aware training: Linear layers compute as ONNX Runtime's dynamic int8, checked against
presso's numpy model of that int8 (itself equal to ORT's output, tests/runtime/test_int8_gemm.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import presso
from presso.runtime.int8_gemm import dynamic_matmul, quantize_s8_columns, quantize_u8
from presso.techniques.distill.int8_aware import dynamic_u8_rows, int8_aware, s8_channels
from presso.train.checkpoint import trained_weights
from tests.techniques.distill.test_distill_stage import QUICK, _blobs, _teacher


def _rows_with_outliers(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 7, 48)).astype(np.float32)
    x[0, 3, 5] = 40.0  # one outlier widens row 0's range only
    x[1] = np.abs(x[1])  # all positive: the range still starts at 0
    x[2] = 0.0  # nothing to quantize: scale 1
    return x


def test_inputs_are_rounded_as_ort_dynamic_quantize_linear_does_per_row():
    x = _rows_with_outliers()
    got = dynamic_u8_rows(torch.from_numpy(x)).numpy()
    for row, out in zip(x, got, strict=True):
        q, scale, zero_point = quantize_u8(row)
        np.testing.assert_allclose(out, (q.astype(np.float32) - zero_point) * scale, rtol=0, atol=1e-6)
    # row 0's outlier costs the other rows nothing, and row 0 a coarse grid
    assert np.abs(got[3] - x[3]).max() < 0.02 < np.abs(got[0] - x[0]).max()


def test_weights_are_rounded_per_output_channel_as_quantize_dynamic_stores_them():
    w = np.random.default_rng(1).normal(size=(24, 48)).astype(np.float32)
    w[3] = 0.0
    q, scale = quantize_s8_columns(w.T)  # ORT's MatMul weight is the Linear weight transposed
    got = s8_channels(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, (q.astype(np.float32) * scale).T, rtol=0, atol=1e-7)


def test_a_linear_layer_computes_what_ort_dynamic_int8_gives_and_passes_gradients_through():
    torch.manual_seed(0)
    layer = nn.Linear(48, 24)
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.from_numpy(_rows_with_outliers()[:2]).requires_grad_()
    plain = model(x)
    with int8_aware(model) as count:
        y = layer(x)
        y.sum().backward()
    assert count == 1
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    for row, out in zip(x.detach().numpy(), y.detach().numpy(), strict=True):  # each row alone, as at batch 1
        expected = dynamic_matmul(row, w.T, saturating=False) + b
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    # straight through: d sum(y) / dx = sum over outputs of the rounded weights
    np.testing.assert_allclose(
        x.grad.numpy(), np.broadcast_to(s8_channels(layer.weight).detach().sum(0).numpy(), x.shape), atol=1e-6
    )
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    # leaving the block restores the layer's own forward, weights untouched
    assert "forward" not in vars(layer)
    torch.testing.assert_close(model(x), plain)
    assert np.abs(y.detach().numpy() - layer(x).detach().numpy()).max() > 1e-3  # int8 differed


def test_distill_int8_aware_trains_a_student_of_the_same_weights_and_says_so(tmp_path):
    X, y = _blobs()
    teacher = _teacher(X, y)
    run = dict(width=0.25, bench=QUICK, max_drop=1.0, epochs=4)
    aware = presso.distill(teacher, (X, y), int8_aware=True, checkpoint=str(tmp_path / "a.pt"), **run)
    plain = presso.distill(teacher, (X, y), checkpoint=str(tmp_path / "p.pt"), **run)
    assert any("computing as ONNX Runtime's dynamic int8" in n for n in aware.report.notes)
    assert not any("dynamic int8" in n for n in plain.report.notes)
    # the same weights by name and shape (checkpoints and start_from work alike), trained otherwise
    (sa, _), (sp, _) = trained_weights(tmp_path / "a.pt"), trained_weights(tmp_path / "p.pt")
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sp.items()}
    assert any(not torch.equal(sa[k], sp[k]) for k in sa)
    assert aware.report.budget.drop < 0.2  # it still learned the teacher
    assert [s.technique for s in aware.recipe.stages] == ["distill", "int8"]  # int8_aware implies int8
    assert aware.recipe.stages[0].options["int8_aware"] is True
