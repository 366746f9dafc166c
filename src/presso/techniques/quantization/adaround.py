"""Calibration-driven weight rounding: AdaRound and bias correction.

AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") learns, per weight, whether to round down or up so that the layer's
*output* on real inputs stays close to the float one, instead of rounding every weight
to its nearest grid point. With ``x = w / s`` the quantized weight is
``s * clamp(floor(x) + h(V), qmin, qmax)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * 1.2 - 0.1, 0, 1)``; ``V`` minimises

    ||X W^T - X W~^T||_F^2 / N  +  lam * sum(1 - |2 h(V) - 1|^beta)

(beta annealed from 20 to 2 after a 20% warm-up without the regulariser, lam = 0.01),
then rounds hard (``h >= 0.5``). The reconstruction term only needs the Gram matrix
``H = X^T X / N`` of the layer's inputs: ``||X D^T||^2 / N = sum(D * (D @ H))`` for
``D = W~ - W``, one (outputs, K) x (K, K) product per step however many rows were seen.

Bias correction (Nagel et al. 2019, DFQ; Banner et al. 2019): rounding shifts the mean
output by ``E[x] . (W~ - W)`` per output channel; subtracting it through the bias makes
the quantized layer unbiased on the calibration inputs.

Both need the float inputs of each layer: :func:`collect_inputs` runs the fp32 ONNX
model with those tensors as extra outputs and keeps their mean (all rows) and Gram
matrix (at most ``max_rows`` sampled rows, e.g. tokens, so memory stays bounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError
from presso.techniques.graph import input_uses
from presso.techniques.quantization.quantizers import QuantParams, dequantize, quantize

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (paper values)
ITERS, MIN_ITERS = 1000, 500  # optimisation steps per layer (see steps_for)
BUDGET_S = 60.0  # a model's AdaRound time, one core, above which it gets fewer steps
LAMBDA = 0.01  # weight of the rounding regulariser
BETA = (20.0, 2.0)  # annealed from the first to the second value
WARMUP = 0.2  # fraction of steps without the regulariser
LR = 1e-2
MAX_ROWS = 4096  # activation rows (samples, tokens, conv positions) per layer
MAX_GRAM_K = 8192  # larger inputs keep only their mean (no AdaRound: (K, K) too big)


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSpec:
    """How a node's input tensor becomes rows (n, K) that multiply its (outputs, K) weight."""

    tensor: str
    kind: str  # "rows": last axis is K; "conv": im2col patches
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    groups: int = 1


@dataclass
class LayerInputs:
    """Float inputs of one layer over the calibration rows, as (n, K) rows."""

    mean: np.ndarray  # (K,) E[x] over every row seen
    gram: np.ndarray | None  # (K, K) X^T X / n over the sampled rows; None when K is too large
    rows: int  # rows behind ``mean``
    sampled: int  # rows behind ``gram``


def input_spec(model, node) -> InputSpec | None:
    """How to read ``node``'s weight-side input (MatMul, Gemm, 1-D/2-D Conv), or None."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul":
        return InputSpec(node.input[0], "rows")
    if node.op_type == "Gemm":
        if "transA" in attrs and attrs["transA"].i:
            return None
        return InputSpec(node.input[0], "rows")
    if node.op_type != "Conv":
        return None
    inits = {i.name: i for i in model.graph.initializer}
    w = inits.get(node.input[1])
    if w is None or len(w.dims) not in (3, 4):
        return None
    pad_mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    if pad_mode not in ("NOTSET", "VALID"):
        return None
    nd = len(w.dims) - 2
    kernel = tuple(w.dims[2:])
    strides = tuple(attrs["strides"].ints) if "strides" in attrs else (1,) * nd
    dilations = tuple(attrs["dilations"].ints) if "dilations" in attrs else (1,) * nd
    pads = tuple(attrs["pads"].ints) if "pads" in attrs and pad_mode == "NOTSET" else (0,) * (2 * nd)
    groups = attrs["group"].i if "group" in attrs else 1
    return InputSpec(node.input[0], "conv", kernel, strides, pads, dilations, groups)


def _conv_patches(x: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """im2col rows (n, C * prod(kernel)) of a (B, C, *spatial) batch, channel-major as the
    weight's ``reshape(out, -1)``."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    kernel, strides, dilations, pads = spec.kernel, spec.strides, spec.dilations, spec.pads
    if len(kernel) == 1:  # 1-D conv as a 2-D one of height 1
        t = t.unsqueeze(2)
        kernel, strides, dilations = (1, *kernel), (1, *strides), (1, *dilations)
        pads = (0, pads[0], 0, pads[1])
    top, left, bottom, right = pads
    t = torch.nn.functional.pad(t, (left, right, top, bottom))  # ONNX pads may be asymmetric
    cols = torch.nn.functional.unfold(t, kernel, dilation=dilations, stride=strides)  # (B, K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B * L, K)


def _rows(value: np.ndarray, spec: InputSpec, mask: np.ndarray | None) -> torch.Tensor:
    if spec.kind == "conv":
        return _conv_patches(value, spec)
    x = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == mask.shape:
        return x[torch.from_numpy(mask != 0)]  # real tokens only, not padding: (n, K)
    return x.reshape(-1, x.shape[-1])  # (n, K)


class _Accumulator:
    """Running mean of every row and Gram matrix of a bounded random sample of rows."""

    def __init__(self, quota: int, gram: bool, rng: np.random.Generator):
        self.quota, self.want_gram, self.rng = quota, gram, rng
        self.sum: np.ndarray | None = None  # (K,) float64, from the first add()
        self.gram: np.ndarray | None = None  # (K, K) float64, when want_gram
        self.rows = self.sampled = 0

    def add(self, x: torch.Tensor) -> None:  # x: (n, K)
        if self.sum is None:
            k = x.shape[1]
            self.sum = np.zeros(k)
            self.want_gram = self.want_gram and k <= MAX_GRAM_K
            self.gram = np.zeros((k, k)) if self.want_gram else None
        self.sum += x.sum(0, dtype=torch.float64).numpy()
        self.rows += x.shape[0]
        if self.gram is not None:
            if x.shape[0] > self.quota:
                x = x[torch.from_numpy(np.sort(self.rng.choice(x.shape[0], self.quota, replace=False)))]
            self.gram += (x.T @ x).double().numpy()  # (K, K)
            self.sampled += x.shape[0]

    def result(self) -> LayerInputs:
        if self.sum is None:  # add() never ran: the inputs had no rows
            raise PressoError("collect_inputs() got no rows: give it at least one calibration row.")
        gram = None if self.gram is None else (self.gram / max(self.sampled, 1)).astype(np.float32)
        return LayerInputs(self.sum / max(self.rows, 1), gram, self.rows, self.sampled)


def collect_inputs(
    onnx_path: Path,
    specs: dict[str, InputSpec],
    inputs: dict[str, np.ndarray],
    *,
    gram: bool = True,
    max_rows: int = MAX_ROWS,
    batch_size: int = 64,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, LayerInputs]:
    """Statistics of each node's float input over the rows of ``inputs``.

    ``specs`` maps a node name to its :class:`InputSpec`; nodes that read the same
    tensor the same way share one pass. The fp32 model runs once over all rows, in
    batches, with the needed tensors as extra graph outputs; each batch contributes at
    most ``ceil(max_rows / batches)`` sampled rows to the Gram matrices (seeded).
    An ``attention_mask`` input of shape (B, T) drops padding tokens from (B, T, K) inputs.
    """
    import onnx
    import onnxruntime as ort

    from presso.runtime.session import default_threads

    model = onnx.load(str(onnx_path))
    graph_inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    tensors = sorted({s.tensor for s in specs.values()})
    for name in tensors:
        if name not in graph_inputs and name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = default_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if model.ByteSize() < 1_800_000_000:
        source = model.SerializeToString()
    else:  # protobuf's 2 GB limit: go through a file with external data
        path = Path(workdir or Path(onnx_path).parent) / "presso-collect.onnx"
        onnx.save(model, str(path), save_as_external_data=True)
        source = str(path)
    session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    fetch = [t for t in tensors if t not in graph_inputs]
    n = len(inputs[feeds[0]])
    batches = max(1, math.ceil(n / batch_size))
    rng = np.random.default_rng(seed)
    acc = {
        spec: _Accumulator(math.ceil(max_rows / batches), gram, rng)
        for spec in sorted(set(specs.values()), key=repr)
    }
    for start in range(0, n, batch_size):
        feed = {k: np.ascontiguousarray(inputs[k][start : start + batch_size]) for k in feeds}
        values = dict(zip(fetch, session.run(fetch, feed), strict=True)) if fetch else {}
        values.update({k: v for k, v in feed.items() if k in tensors})
        mask = feed.get("attention_mask")
        for spec, a in acc.items():
            a.add(_rows(values[spec.tensor], spec, mask))
    done = {spec: a.result() for spec, a in acc.items()}
    return {node: done[spec] for node, spec in specs.items()}


# ---------------------------------------------------------------------------- AdaRound


def _grid_view(w: torch.Tensor, qp: QuantParams):
    """(w viewed so the scales broadcast, scale, zero point) for a 2-D (O, K) weight."""
    if qp.group_size is not None:
        g = qp.group_size
        return w.reshape(w.shape[0], -1, g), qp.scale.unsqueeze(-1), qp.zero_point.unsqueeze(-1)
    if qp.axis is not None:
        return w, qp.scale.reshape(-1, 1), qp.zero_point.reshape(-1, 1)
    return w, qp.scale.reshape(()), qp.zero_point.reshape(())


def steps_for(shapes: list[tuple[int, int]]) -> int:
    """Optimisation steps per layer for a model whose AdaRound layers are (O, K) ``shapes``.

    A step costs about ``1.2e-8 * O * K + 1.3e-11 * O * K^2`` seconds on one core (measured
    with this implementation: 2.4 ms for 384 x 384, 10 ms for 1536 x 384, 19 ms for
    384 x 1536). Models that fit ``BUDGET_S`` at ``ITERS`` steps get them; bigger ones get
    fewer, down to ``MIN_ITERS`` (on all-MiniLM-L6-v2's layers 500 steps reach the held-out
    error of 1000 within 3%; small layers keep improving up to 1000).
    """
    cost = sum(1.2e-8 * o * k + 1.3e-11 * o * k * k for o, k in shapes)  # seconds per step
    return int(min(ITERS, max(MIN_ITERS, BUDGET_S / max(cost, 1e-12))))


def adaround(
    w,
    qp: QuantParams,
    gram,
    *,
    iters: int = ITERS,
    lam: float = LAMBDA,
    beta: tuple[float, float] = BETA,
    warmup: float = WARMUP,
    lr: float = LR,
) -> torch.Tensor:
    """Integers of ``w`` (outputs, K) on the grid ``qp``, rounded up or down by AdaRound.

    ``gram`` is ``X^T X / N`` (K, K) of the layer's inputs. Each result is ``floor(w / s)``
    or that plus one (plus the zero point, clamped to ``[qmin, qmax]``), in the dtype
    :func:`~presso.techniques.quantization.quantizers.quantize` returns; an output row
    whose error on the inputs behind ``gram`` would be above nearest rounding's keeps
    nearest rounding. Full-batch Adam from ``h(V) = w / s - floor(w / s)``: no random
    draws, the same inputs give the same integers (the rows behind ``gram`` are sampled
    with a seed, see :func:`collect_inputs`).

    Examples
    --------
    >>> import torch
    >>> from presso.techniques.quantization.quantizers import compute_qparams, quantize
    >>> w, x = torch.randn(8, 32), torch.randn(256, 32)
    >>> qp = compute_qparams(w, bits=3, symmetric=True, axis=0)
    >>> q = adaround(w, qp, x.T @ x / 256, iters=50)
    >>> q.shape, bool(((q.float() - quantize(w, qp).float()).abs() <= 1).all())
    (torch.Size([8, 32]), True)
    """
    w = torch.as_tensor(w, dtype=torch.float32)
    h_mat = torch.as_tensor(gram, dtype=torch.float32)
    if w.ndim != 2 or h_mat.shape != (w.shape[1], w.shape[1]):
        raise ValueError(
            f"adaround needs a (O, K) weight and a (K, K) Gram matrix; got "
            f"{tuple(w.shape)} and {tuple(h_mat.shape)}."
        )
    wv, s, z = _grid_view(w, qp)
    x = wv * (1.0 / s)  # as quantize(): float32 reciprocal
    base = torch.floor(x)
    rest = (x - base).clamp(0.0, 1.0)
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    v = torch.log(p / (1 - p)).contiguous()  # h(v) == rest: starts at the float weight
    zf = z.to(torch.float32)
    bz = base + zf  # integer below w / s, zero point included
    # Where floor and floor + 1 both lie in [qmin, qmax] the integer is bz + h; elsewhere
    # the clamp fixes it whatever h is. So W~ - W = d0 + h * sf with constants d0, sf.
    free = (bz >= qp.qmin) & (bz <= qp.qmax - 1)
    d0 = ((bz.clamp(qp.qmin, qp.qmax) - zf) * s - wv).reshape(w.shape)  # (O, K)
    sf = (s * free).expand_as(wv).reshape(w.shape).contiguous()  # (O, K)
    sf2 = sf * (2.0 * (ZETA - GAMMA))  # d loss / d h of the reconstruction is 2 (D H) sf
    opt = torch.optim.Adam([v], lr=lr, fused=True)
    start = int(warmup * iters)
    # One thread: the same integers on any machine (a multi-threaded matmul may sum in
    # another order), and no stalls on a busy CPU (measured on 2 cores with another process
    # on one: 2 threads took 200 ms a step on 384 x 384, 1 thread 3 ms; idle, 1.3 vs 2.4 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _optimise(v, opt, d0, sf, sf2, h_mat, iters, start, lam, beta)
        up = (v >= 0).to(torch.float32)  # h(v) >= 0.5 exactly when v >= 0
        q = torch.clamp(bz + up, qp.qmin, qp.qmax).reshape(w.shape)
        q = _no_worse_than_nearest(q, w, qp, h_mat)
    finally:
        torch.set_num_threads(threads)
    dtype = torch.uint8 if qp.qmin >= 0 else torch.int8
    return q.to(dtype)


def _no_worse_than_nearest(
    q: torch.Tensor, w: torch.Tensor, qp: QuantParams, h_mat: torch.Tensor
) -> torch.Tensor:
    """``q`` (O, K) with every output row whose reconstruction error is above nearest
    rounding's replaced by nearest rounding.

    The relaxed objective is not convex: on a hard grid (2 bits, small groups) the hard
    rounding of its optimum can end worse than plain rounding, and which local optimum Adam
    reaches depends on the CPU's float summation order (the test of this guard, 2-bit
    groups of 16, beat nearest on one x86 machine and lost by 3% on another). The error
    ``||X d_o||^2 / N = d_o H d_o`` of output ``o`` depends on row ``o`` alone, so taking
    the better row of each makes the layer at least as good as nearest on its inputs.
    """
    nearest = quantize(w, qp).to(torch.float32)

    def row_errors(ints):  # (O,) d_o H d_o, d = W~ - W
        d = dequantize(ints, qp) - w
        return ((d @ h_mat) * d).sum(1)

    worse = row_errors(q) > row_errors(nearest)
    return torch.where(worse.unsqueeze(1), nearest, q)


@torch.no_grad()
def _optimise(v, opt, d0, sf, sf2, h_mat, iters, start, lam, beta) -> None:
    """Adam on ``v`` for ``iters`` steps; the regulariser joins at step ``start``."""
    v2 = v.view(d0.shape)  # (O, K)
    for it in range(iters):
        # Forward and gradient by hand: one (O, K) x (K, K) product and a few
        # elementwise passes a step (a quarter of autograd's time on 384 x 1536).
        sig = torch.sigmoid(v2)
        h = sig.mul(ZETA - GAMMA).add_(GAMMA)
        live = (h > 0).logical_and_(h < 1)  # where the clamp of h passes gradient
        h.clamp_(0.0, 1.0)
        m = torch.addcmul(d0, h, sf) @ h_mat  # D H, D = W~ - W; ||X D^T||^2 / N = sum(D * D H)
        g = m.mul_(sf2)
        if it >= start:
            rel = (it - start) / max(iters - start, 1)
            b = beta[1] + (beta[0] - beta[1]) * (1 - rel)  # 20 -> 2, linearly
            t = h.mul_(2).sub_(1)  # d/dh of lam * (1 - |t|^b) is -2 lam b |t|^(b-2) t
            g.add_(t.abs().pow_(b - 2).mul_(t), alpha=-2 * lam * b * (ZETA - GAMMA))
        v.grad = g.mul_(sig.mul_(1 - sig)).mul_(live).view(v.shape)  # times dh/dv
        opt.step()


# ---------------------------------------------------------------------------- bias


def output_shift(delta: np.ndarray, mean: np.ndarray, groups: int = 1) -> np.ndarray:
    """``E[x] . (W~ - W)`` per output channel: the mean output error quantization adds.

    ``delta`` is ``W~ - W`` as (outputs, K / groups); ``mean`` is E[x] (K,). A grouped
    convolution's output ``o`` reads the inputs of group ``o // (outputs / groups)``.
    """
    d = np.asarray(delta, np.float64)
    m = np.asarray(mean, np.float64).reshape(groups, -1)  # (G, K / G)
    per_group = d.reshape(groups, -1, d.shape[1])  # (G, O / G, K / G)
    return np.einsum("gok,gk->go", per_group, m).reshape(-1)  # (O,)


NEGLIGIBLE = 1e-3  # a shift below this fraction of every channel's output RMS adds no node


def subtract_from_bias(model, node, shift: np.ndarray, rms: np.ndarray | None) -> str:
    """Make ``node`` (Gemm, Conv or MatMul) output ``y - shift`` (shift per output channel,
    last axis for Gemm/MatMul, axis 1 for Conv) by changing its bias; returns how.

    Gemm and Conv take it in their bias input (added when missing); a MatMul in the
    constant operand of the Add that alone consumes it, else in a new Add node. A new
    bias or node is only added when some channel's shift exceeds ``NEGLIGIBLE`` times its
    output RMS (``rms``; None: always).
    """
    edit = _BiasEdit(model, node)
    shift = np.asarray(shift, np.float64)
    tiny = rms is not None and bool(np.all(np.abs(shift) <= NEGLIGIBLE * np.asarray(rms)))
    done = None
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        # y = alpha A B + beta C: C takes shift * alpha / beta; with beta 0 it has no effect
        done = edit.into_bias_input(shift * alpha / beta, tiny) if beta != 0 else None
    elif node.op_type == "Conv":
        done = edit.into_bias_input(shift, tiny)
    elif node.op_type == "MatMul":
        done = edit.into_following_add(shift)
    if done:
        return done
    if tiny:
        return "negligible"
    return edit.new_add(shift)


class _BiasEdit:
    """The ways :func:`subtract_from_bias` changes ``model``'s graph around ``node``.

    ``inits`` and ``uses`` describe the graph as it was before the edit.
    """

    def __init__(self, model, node):
        self.graph, self.node = model.graph, node
        self.inits = {i.name: i for i in self.graph.initializer}
        self.uses = input_uses(self.graph)

    def minus(self, name: str, amount: np.ndarray) -> str:
        """Subtract ``amount`` from initializer ``name`` (a private copy if it is shared)."""
        from onnx import numpy_helper

        old = numpy_helper.to_array(self.inits[name])
        new = (old.astype(np.float64) - amount).astype(np.float32)
        if self.uses.get(name, 0) > 1:
            name = f"{name}_{self.node.name}_corrected"
        else:
            self.graph.initializer.remove(self.inits[name])
        self.graph.initializer.append(numpy_helper.from_array(new, name))
        return name

    def is_float_const(self, name: str) -> bool:
        return name in self.inits and self.inits[name].data_type == 1

    def into_bias_input(self, amount: np.ndarray, tiny: bool) -> str | None:
        """Gemm's C / Conv's B: corrected, or added; None when it is computed (not constant)."""
        from onnx import numpy_helper

        node = self.node
        if len(node.input) > 2 and node.input[2]:
            if self.is_float_const(node.input[2]):
                node.input[2] = self.minus(node.input[2], amount)
                return f"{node.op_type} bias"
            return None
        if tiny:
            return "negligible"
        name = f"{node.name}_bias_correction"
        self.graph.initializer.append(numpy_helper.from_array((-amount).astype(np.float32), name))
        node.input.append(name)
        return f"new {node.op_type} bias"

    def into_following_add(self, shift: np.ndarray) -> str | None:
        """A MatMul's shift into the constant operand of the Add that alone consumes its
        output (not a graph output); None when there is no such Add."""
        graph, out = self.graph, self.node.output[0]
        consumers = [n for n in graph.node if out in n.input]
        if not (
            len(consumers) == 1
            and consumers[0].op_type == "Add"
            and out not in {o.name for o in graph.output}
        ):
            return None
        add = consumers[0]
        other = add.input[1] if add.input[0] == out else add.input[0]
        dims = list(self.inits[other].dims) if other in self.inits else None
        if not (self.is_float_const(other) and (not dims or dims[-1] == len(shift))):
            return None
        add.input[list(add.input).index(other)] = self.minus(other, shift)
        return "following Add"

    def new_add(self, shift: np.ndarray) -> str:
        """No bias to change: y -> Add(y', -shift). Conv's channels are axis 1: shape (O, 1, ..)."""
        from onnx import helper, numpy_helper

        graph, node = self.graph, self.node
        out = node.output[0]
        name = f"{node.name}_bias_correction"
        value = (-shift).astype(np.float32)
        if node.op_type == "Conv":
            rank = len(self.inits[node.input[1]].dims) if node.input[1] in self.inits else 4
            value = value.reshape(-1, *([1] * (rank - 2)))
        graph.initializer.append(numpy_helper.from_array(value, name))
        node.output[0] = f"{out}_before_bias_correction"
        add = helper.make_node("Add", [node.output[0], name], [out], name=f"{node.name}/bias_correction")
        position = list(graph.node).index(node)
        graph.node.insert(position + 1, add)
        return "new Add"
