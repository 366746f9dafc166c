"""Hashed weight sharing (HashedNets, Chen et al. 2015): K shared values per layer.

A hash of each weight's flat position ``i`` (in PyTorch's layout: ``(out, in)`` for
Linear, ``(out, in / groups, *kernel)`` for Conv) picks one of the layer's K values,
and a second hash gives a sign in {-1, +1} that makes collisions cancel on average::

    h(i)  = ((i * a + b) mod P) mod K          the bucket of position i
    xi(i) = 2 * (((i * c + d) mod P) mod 2) - 1  its sign (+1 everywhere without sign_hash)
    w[i]  = xi(i) * values[h(i)]

with ``P = 2^31 - 1`` (a prime) and ``a, c`` in [1, P), ``b, d`` in [0, P) drawn from the
layer's seed: a Carter-Wegman universal hash. As ``i < 2^31`` and ``a < 2^31``,
``i * a + b < 2^62 + 2^31`` fits int64, so numpy, PyTorch and ONNX (Range, Mul, Add, Mod
on int64) compute the same buckets. ``i -> (i * a + b) mod P`` is one-to-one on
``[0, P)``, so the buckets of a layer are filled evenly.

The stage (``hash_weights``):

1. replaces the weight of each Linear / Conv layer by ``HashedWeight`` (a torch
   parametrization; gradients of the positions sharing a value add up in it, the hashing
   trick), its values starting at the least-squares fit of the trained weight: the mean
   of ``xi(i) * w[i]`` over the positions of each bucket;
2. fine-tunes the values (and biases, and unhashed layers) to the original model's
   outputs on the calibration rows, a seeded part held back for early stopping, plus
   mixup rows labelled by the model before hashing (without them a few hundred rows are
   overfitted: digits at compression 0.5 drops 1.6 points instead of 0.6);
3. exports the materialised weights, then stores each one as its K values plus the hash
   computed in the graph: Range -> Mul/Add/Mod -> Gather(values) (-> Mul by the sign)
   -> Reshape (-> Transpose for a MatMul, which stores ``W.T``). ONNX Runtime folds this
   into a constant when the session is created (any graph optimization level but
   "disabled"), so the model runs at float speed from a file holding K values per layer;
   a layer that the budget search sends back to fp32 gets its trained weight from before
   hashing.
"""

from __future__ import annotations

import copy
import functools
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from presso.errors import PressoError
from presso.runtime.onnx_files import save_onnx
from presso.techniques.base import StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.quantization.hashing_config import HashedConfig
from presso.techniques.recovery import fit_to_teacher, mixup_rows, teacher_split, weights_by_value

P = 2_147_483_647  # 2^31 - 1, prime: positions up to P - 1 hash one-to-one before "mod K"
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hash_key(seed: int) -> tuple[int, int, int, int]:
    """(a, b, c, d) of the bucket hash (a, b) and the sign hash (c, d) for ``seed``."""
    rng = np.random.default_rng(seed)
    a, c = (int(v) for v in rng.integers(1, P, size=2))
    b, d = (int(v) for v in rng.integers(0, P, size=2))
    return a, b, c, d


def _hash(i, mul: int, add: int, modulus: int):
    """``((i * mul + add) mod P) mod modulus`` of int64 numpy arrays or torch tensors."""
    return (i * mul + add) % P % modulus


def bucket_index(numel: int, k: int, seed: int) -> np.ndarray:
    """Bucket in ``[0, k)`` of each of ``numel`` flat positions, int64.

    Examples
    --------
    >>> idx = bucket_index(1000, 250, seed=0)
    >>> idx.shape, int(idx.min()), int(idx.max()), int(np.bincount(idx).max()) <= 8
    ((1000,), 0, 249, True)
    """
    a, b, _, _ = hash_key(seed)
    return _hash(np.arange(numel, dtype=np.int64), a, b, k)


def sign(numel: int, seed: int) -> np.ndarray:
    """The sign hash xi in {-1.0, +1.0} of each of ``numel`` flat positions, float32.

    Examples
    --------
    >>> s = sign(10_000, seed=0)
    >>> sorted(set(s.tolist())), abs(float(s.mean())) < 0.05
    ([-1.0, 1.0], True)
    """
    _, _, c, d = hash_key(seed)
    return (2 * _hash(np.arange(numel, dtype=np.int64), c, d, 2) - 1).astype(np.float32)


def layer_seed(seed: int, name: str) -> int:
    """A layer's hash seed: the run's seed and the layer's name (stable under reordering)."""
    return int(np.random.SeedSequence([seed % 2**32, zlib.crc32(name.encode())]).generate_state(1)[0])


class HashedWeight(nn.Module):
    """A torch parametrization: ``weight = xi * values[h]``, reshaped, from K ``values``.

    Registered on a layer's weight, its ``right_inverse`` turns the trained weight into the
    least-squares values (so ``original`` holds K values); gradients reach them through the
    index (the hashing trick).

    Examples
    --------
    >>> from torch.nn.utils import parametrize
    >>> layer = torch.nn.Linear(64, 32)
    >>> parametrize.register_parametrization(layer, "weight", HashedWeight((32, 64), 512, seed=0))
    ...  # doctest: +ELLIPSIS
    ParametrizedLinear(...)
    >>> layer.parametrizations.weight.original.shape, layer.weight.shape
    (torch.Size([512]), torch.Size([32, 64]))
    """

    # Buffers registered in __init__, declared here because mypy types nn.Module's
    # attribute lookup as Tensor | Module.
    index: torch.Tensor  # (n,) int64 bucket of each flat position
    xi: torch.Tensor  # (n,) float32 sign of each flat position

    def __init__(self, shape: tuple[int, ...], k: int, seed: int, sign_hash: bool = True):
        super().__init__()
        self.shape, self.k, self.seed, self.sign_hash = tuple(shape), int(k), int(seed), bool(sign_hash)
        numel = math.prod(self.shape)
        a, b, c, d = hash_key(self.seed)
        pos = torch.arange(numel, dtype=torch.int64)  # (n,)
        self.register_buffer("index", _hash(pos, a, b, self.k), persistent=False)  # (n,)
        xi = (2 * _hash(pos, c, d, 2) - 1).float() if self.sign_hash else torch.ones(numel)
        self.register_buffer("xi", xi, persistent=False)  # (n,)

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # (K,) -> shape
        # index_select: its backward (index_add) sums shared gradients in a fixed order on CPU;
        # values[index] accumulates them in thread order, so fine-tuning would not repeat.
        return (torch.index_select(values, 0, self.index) * self.xi).reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:  # shape -> (K,)
        """argmin_v ||xi * v[h] - w||: per bucket, the mean of xi * w over its positions."""
        flat = weight.detach().reshape(-1).float() * self.xi  # (n,)
        sums = torch.zeros(self.k, dtype=flat.dtype).index_add_(0, self.index, flat)
        counts = torch.bincount(self.index, minlength=self.k).clamp_(min=1)
        return (sums / counts).to(weight.dtype)


def prepare_hashed(
    module: nn.Module,
    compression: float,
    *,
    sign_hash: bool = True,
    seed: int = 0,
    min_values: int = 16,
    skip: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Hash the weights of ``module``'s Linear / Conv layers in place; returns layer name ->
    its weight before hashing. Layers in ``skip``, with fewer than ``min_values`` weights or
    already parametrized stay as they are."""
    originals = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, _LAYERS) or name in skip or parametrize.is_parametrized(layer, "weight"):
            continue
        numel = layer.weight.numel()
        if numel < min_values:
            continue
        if numel >= P:
            raise PressoError(
                f"Layer '{name}' has {numel} weights; hashed weight sharing hashes positions "
                f"below 2^31 - 1. Keep it float with keep_float."
            )
        originals[name] = layer.weight.detach().clone()
        k = math.ceil(compression * numel)
        param = HashedWeight(layer.weight.shape, k, layer_seed(seed, name), sign_hash)
        parametrize.register_parametrization(layer, "weight", param)
    return originals


@dataclass(frozen=True)
class HashedLayer:
    """One materialised layer: its K values, hash seed and weights before/after hashing."""

    name: str
    k: int
    seed: int
    sign_hash: bool
    values: np.ndarray  # (K,)
    weight: np.ndarray  # xi * values[h], PyTorch layout
    original: np.ndarray  # the trained weight before hashing, PyTorch layout


def materialize(module: nn.Module, originals: dict[str, torch.Tensor]) -> dict[str, HashedLayer]:
    """Replace each ``HashedWeight`` parametrization of ``module`` by its plain weight."""
    out = {}
    for name, layer in module.named_modules():
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        param = layer.parametrizations.weight[0]
        if not isinstance(param, HashedWeight):
            continue
        values = layer.parametrizations.weight.original.detach().float().numpy().copy()
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        out[name] = HashedLayer(
            name,
            param.k,
            param.seed,
            param.sign_hash,
            values,
            layer.weight.detach().float().numpy().copy(),
            originals[name].float().numpy(),
        )
    return out


def match_initializers(onnx_path: Path, weights: dict[str, np.ndarray]) -> dict[str, tuple[str, str, bool]]:
    """Layer name -> (ONNX node, weight initializer, transposed) for ``weights`` (PyTorch
    layout), matched by value (:func:`presso.techniques.recovery.weights_by_value`); a
    transposed weight's graph rebuilds PyTorch's layout, hashing its positions, then
    transposes. Each layer takes its first match."""
    out: dict[str, tuple[str, str, bool]] = {}
    for name, node, weight, transposed in weights_by_value(onnx_path, weights):
        out.setdefault(name, (node, weight, transposed))
    return out


def _rebuild(node: str, weight: str, layer: HashedLayer, transposed: bool) -> tuple[list, list]:
    """(initializers, nodes) that compute initializer ``weight`` from ``layer``'s K values."""
    from onnx import TensorProto, helper, numpy_helper

    p = f"hashed/{weight}/"
    a, b, c, d = hash_key(layer.seed)
    scalars = {"n": layer.weight.size, "a": a, "b": b, "c": c, "d": d, "k": layer.k}
    inits = [numpy_helper.from_array(np.array(v, np.int64), p + k) for k, v in scalars.items()] + [
        numpy_helper.from_array(layer.values.astype(np.float32), p + "values"),  # the K stored values
        numpy_helper.from_array(np.array(layer.weight.shape, np.int64), p + "shape"),
    ]
    nodes = []

    def mk(op_type: str, inputs: list[str], output: str, out_name: str | None = None, **attrs) -> str:
        out_name = out_name or p + output
        nodes.append(helper.make_node(op_type, inputs, [out_name], name=f"{node}/hash/{output}", **attrs))
        return out_name

    pos = mk("Range", ["hashed/zero", p + "n", "hashed/one"], "pos")  # (n,) int64 flat positions
    h = mk("Mod", [mk("Add", [mk("Mul", [pos, p + "a"], "ia"), p + "b"], "iab"), "hashed/prime"], "h")
    flat = mk("Gather", [p + "values", mk("Mod", [h, p + "k"], "bucket")], "gathered", axis=0)  # (n,)
    if layer.sign_hash:
        g = mk("Mod", [mk("Add", [mk("Mul", [pos, p + "c"], "ic"), p + "d"], "icd"), "hashed/prime"], "g")
        bit = mk("Mod", [g, "hashed/two"], "bit")
        xi = mk("Sub", [mk("Mul", [bit, "hashed/two"], "bit2"), "hashed/one"], "xi_int")  # {-1, +1}
        flat = mk("Mul", [flat, mk("Cast", [xi], "xi", to=TensorProto.FLOAT)], "signed")
    shaped = mk("Reshape", [flat, p + "shape"], "torch_layout", None if transposed else weight)
    if transposed:  # a MatMul stores W.T: hash PyTorch's (out, in) positions, then transpose
        mk("Transpose", [shaped], "transpose", weight, perm=[1, 0])
    return inits, nodes


def write_hashed(
    src: Path,
    dst: Path,
    cfg: HashedConfig,
    precision: dict[str, str] | None = None,
    grids=None,
    *,
    layers: dict[str, tuple[HashedLayer, bool]],
) -> list[dict]:
    """Rewrite ``src`` into ``dst`` with the weight initializers in ``layers`` (initializer ->
    (layer, transposed)) stored as K values and rebuilt by the hash in the graph; one row per
    layer. Nodes that ``precision`` maps to ``"fp32"`` get their trained weight from before
    hashing back. ``cfg`` and ``grids`` are unused (the writer signature of ``accuracy_aware``).
    """
    import onnx
    from onnx import numpy_helper

    from presso.techniques.graph import float_weight_plans

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep = {n for n, p in (precision or {}).items() if p == "fp32"}
    new_nodes, rows = [], []
    for node, op, weight in float_weight_plans(model, set()):
        if weight not in layers:
            continue
        layer, transposed = layers[weight]
        graph.initializer.remove(inits[weight])
        if node in keep:  # the layer falls back: its trained weight from before hashing
            original = layer.original.T if transposed else layer.original
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(original), weight))
            continue
        extra, nodes = _rebuild(node, weight, layer, transposed)
        graph.initializer.extend(extra)
        new_nodes += nodes
        err = float(
            np.linalg.norm(layer.weight - layer.original) / max(float(np.linalg.norm(layer.original)), 1e-12)
        )
        rows.append(
            {
                "node": node,
                "op": op,
                "precision": f"hashed {layer.k} values",
                "parameters": int(layer.weight.size),
                "stored_values": layer.k,
                "relative_error": round(err, 6),
            }
        )
    if new_nodes:
        const = {"zero": 0, "one": 1, "two": 2, "prime": P}
        graph.initializer.extend(
            numpy_helper.from_array(np.array(v, np.int64), f"hashed/{k}") for k, v in const.items()
        )
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)  # rebuild weights before any consumer
    save_onnx(model, dst)
    return rows


@technique(
    "hashed",
    config=HashedConfig,
    domain="torch",
    summary=(
        "hashed weight sharing (HashedNets): a hash of each weight's position picks one of K "
        "shared values per layer, fine-tuned to the original model; stores K values + the hash "
        "seed"
    ),
)
def hash_weights(onnx_path: Path, cfg: HashedConfig, ctx: StageContext) -> StageResult:
    """The ``hashed`` technique: hash, fine-tune, export, store K values per layer."""
    from presso.techniques.quantization.accuracy_aware import each
    from presso.techniques.quantization.weight_only import accuracy_aware

    if ctx.module is None or ctx.export is None:
        raise PressoError(
            "The 'hashed' stage fine-tunes the PyTorch model; give presso a PyTorch model "
            "or Hugging Face folder, and put 'hashed' before ONNX stages."
        )
    module, notes = ctx.module, []
    skip: frozenset[str] = frozenset()
    if cfg.keep_float:  # node names of an export of the module as it is -> its layer names
        weights = {
            n: m.weight.detach().float().numpy() for n, m in module.named_modules() if isinstance(m, _LAYERS)
        }
        found = {
            node: name
            for name, (node, _, _) in match_initializers(
                ctx.export(module, ctx.workdir / "hashed-original.onnx"), weights
            ).items()
        }
        skip = frozenset(found[n] for n in cfg.keep_float if n in found)
        if missing := sorted(set(cfg.keep_float) - set(found)):
            notes.append(f"hashed: keep_float names no Linear / Conv layer: {', '.join(missing[:6])}")
    copies = cfg.augment if cfg.epochs else 0
    teacher = copy.deepcopy(module).eval() if copies else None  # labels the mixup rows
    originals = prepare_hashed(
        module, cfg.compression, sign_hash=cfg.sign_hash, seed=ctx.seed, min_values=cfg.min_values, skip=skip
    )
    if not originals:
        raise PressoError(
            f"The 'hashed' stage found no Linear or Conv layer with at least {cfg.min_values} "
            "weights to hash in this model (lower min_values, or check keep_float)."
        )
    train, val = teacher_split(ctx, cfg.validation_fraction, "hashed")
    train, n_mixed = mixup_rows(train, teacher, copies, ctx.seed, ctx.input_names)
    ctx.log(f"hashed: fine-tuning {len(originals)} hashed layers on {len(train[1])} rows")
    report = fit_to_teacher(module, train, val, ctx, "hashed", cfg, patience=cfg.patience)
    hashed = materialize(module.eval(), originals)
    exported = ctx.export(module, ctx.workdir / "hashed-float.onnx")
    matched = match_initializers(exported, {name: h.weight for name, h in hashed.items()})
    layers = {weight: (hashed[name], transposed) for name, (_, weight, transposed) in matched.items()}
    result = accuracy_aware(exported, cfg, ctx, "hashed", functools.partial(write_hashed, layers=layers))

    def own(cand) -> None:
        cand.module = module
        # no DequantizeLinear here: the weight-only session note does not apply
        cand.notes = [n for n in cand.notes if "disable_quant_qdq" not in n]

    result.ranked = each(result.ranked, own)  # mixes are built lazily, as the pipeline verifies
    stored = sum(h.k for h in hashed.values() if h.name in matched)
    total = sum(h.weight.size for h in hashed.values() if h.name in matched)
    result.notes[:0] = [
        *notes,
        (
            f"hashed: {len(matched)} layers store {stored} shared values for {total} weights (compression "
            f"{cfg.compression}, sign hash {'on' if cfg.sign_hash else 'off'}); ONNX Runtime recomputes the hash "
            "and folds the weights once at session creation (default graph optimizations), then runs at fp32 speed"
        ),
        (
            f"hashed: fine-tuned for {report.epochs_run} epochs on {len(train[1]) - n_mixed} calibration rows"
            + (f" and {n_mixed} mixup rows labelled by the original model" if n_mixed else "")
            + f" (best epoch {report.best_epoch}, validation loss {-report.best_score:.4g}, stopped: {report.stopped})"
            + (
                ""
                if len(matched) == len(hashed)
                else f"; {len(hashed) - len(matched)} hashed layers were changed by the export and are stored float"
            )
        ),
    ]
    return result
