"""int8-aware training: a student whose Linear layers compute as ONNX Runtime's dynamic int8
will run them, so that distillation also learns to live with that int8.

While :func:`int8_aware` is active, every ``nn.Linear`` of the module multiplies

- its input quantized as ORT's ``DynamicQuantizeLinear`` does at run time: u8 over the
  range of the call, here of each row of the batch (at batch 1, one text is the whole call),
  round half to even, then dequantized;
- its weight quantized per output channel, symmetric, to [-127, 127], as
  ``quantize_dynamic(per_channel=True)`` writes it;

and both pass gradients straight through (the rounding counts as identity). The arithmetic
is that of ``presso.runtime.int8_gemm`` (equal to ORT's output where sums are exact), in
float32 whatever the autocast. Weights and names stay those of the plain module: its
checkpoints, ``start_from`` and export do not change; leaving the context restores the
layers' own forward.

Why not ``torch.ao`` QAT: its observers track ranges across batches (static int8), not the
per-call range of ORT's dynamic int8, and its prepared modules change parameter names.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

U8_MAX = 255
S8_MAX = 127


class _Rounded(torch.autograd.Function):
    """Values on an integer grid forward, the gradient passed straight through backward.

    One autograd node and in-place arithmetic on a float32 copy: the plain
    ``x + (value - x).detach()`` form kept several full-size temporaries per layer, most
    of a step's time beside bfloat16 matrix products."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, lo: int, hi: int) -> Tensor:
        # float32 whatever the autocast: 255 steps need more than bfloat16's 8 bits
        out = x.float().div(scale).round_().add_(zero_point).clamp_(lo, hi).sub_(zero_point).mul_(scale)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None, None, None


def dynamic_u8_rows(x: Tensor) -> Tensor:
    """``x`` as ORT's dynamic int8 sees it, each row (first axis) over its own range."""
    lo, hi = torch.aminmax(x.detach().reshape(x.shape[0], -1).float(), dim=1)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = (hi - lo) / U8_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.round(-lo / scale).clamp(0, U8_MAX)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return _Rounded.apply(x, scale.reshape(shape), zero_point.reshape(shape), 0, U8_MAX)


def s8_channels(w: Tensor) -> Tensor:
    """A Linear weight (outputs, inputs) as ``quantize_dynamic(per_channel=True)`` stores it."""
    scale = w.detach().float().abs().amax(1, keepdim=True) / S8_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return _Rounded.apply(w, scale, torch.zeros_like(scale), -S8_MAX, S8_MAX)


def _int8_forward(self: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(dynamic_u8_rows(x), s8_channels(self.weight), self.bias)


@contextlib.contextmanager
def int8_aware(module: nn.Module) -> Iterator[int]:
    """Within the block, ``module``'s Linear layers compute as ORT's dynamic int8; yields how
    many there are."""
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        # an instance attribute shadows the class's forward; deleting it restores that
        layer.forward = types.MethodType(_int8_forward, layer)  # type: ignore[method-assign]
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
