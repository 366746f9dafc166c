"""The ``prune`` recipe stage: masks on Linear / Conv weights (unstructured or N:M),
raised on a schedule while the model is fine-tuned, then exported with zeros.

1. Choose each layer's final sparsity: one global ranking, the same per layer, or per-layer
   ratios from sensitivity curves under ``--max-drop`` (``sensitivity.py``).
2. Fine-tune (``recover.py``) while a ``before_epoch`` hook raises the masks along the
   schedule (one-shot, iterative, gradual); each raise re-baselines early stopping, so the
   best weights kept are always those of the final masks.
3. Fold the masks, export, score; if the budget breaks, retry milder (``with_backoff``).
   The runner stores the zeros as bitmask + values at the end of the run (after any
   quantization stage), so ``size_bytes`` reflects the sparsity.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import first_tensor
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.pruning import criteria
from presso.techniques.pruning.config import PruneConfig
from presso.techniques.pruning.masks import (
    PRUNABLE,
    Prunable,
    apply_masks,
    effective_weight,
    iterative_sparsity,
    make_permanent,
    nm_mask,
    polynomial_sparsity,
    unstructured_masks,
)
from presso.techniques.pruning.search import PRUNE
from presso.techniques.recovery import Recovery, layer_nodes, milder, recovery_for, with_backoff


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def prunable_layers(module: nn.Module, skip: list[str]) -> dict[str, Prunable]:
    """Linear / Conv layers by module name, without those in ``skip`` (unknown names refused)."""
    layers = {name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE)}
    if unknown := [s for s in skip if s not in layers]:
        raise PressoError(
            f"The 'skip' option names '{unknown[0]}', which is not a Linear or Conv layer of this "
            f"model. Layers: {', '.join(list(layers)[:12])}{' ...' if len(layers) > 12 else ''}."
        )
    kept = {n: m for n, m in layers.items() if n not in skip}
    if not kept:
        raise PressoError("The 'prune' stage found no Linear or Conv layer to prune (check 'skip').")
    return kept


def schedule_sparsity(epoch: int, cfg: PruneConfig, final: float) -> float:
    """Sparsity a layer with final sparsity ``final`` has during ``epoch`` (1-based)."""
    if cfg.ramp_schedule == "one-shot" or cfg.epochs == 0:
        return final
    assert cfg.epochs is not None  # recovery_for resolved it
    if cfg.ramp_schedule == "iterative":
        rounds = min(cfg.rounds, cfg.epochs)
        r = 1 + (epoch - 1) * rounds // cfg.epochs  # the round this epoch belongs to
        return iterative_sparsity(r, rounds, final)
    ramp = max(1, round(cfg.ramp * cfg.epochs))
    return polynomial_sparsity(min(epoch, ramp), ramp, final)


def _gradients(module: nn.Module, layers: Mapping[str, nn.Module], rec: Recovery) -> dict[str, torch.Tensor]:
    """d loss / d weight of each layer over the training rows (for Taylor scores)."""
    xs = [torch.from_numpy(rec.train[0][n]) for n in rec.ctx.input_names]
    y = torch.from_numpy(rec.train[1])
    module.zero_grad(set_to_none=True)
    was = module.training
    module.eval()
    loss_fn = rec.loss
    for start in range(0, len(y), 256):
        out = first_tensor(module(*[x[start : start + 256] for x in xs]))
        (loss_fn(out, y[start : start + 256]) * len(out) / len(y)).backward()
    module.train(was)
    grads = {}
    for name, layer in layers.items():
        p = cast(torch.Tensor, layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight)
        grads[name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    module.zero_grad(set_to_none=True)
    return grads


def _scores(
    module, layers, weights: dict[str, torch.Tensor], cfg: PruneConfig, rec: Recovery, step: int
) -> dict[str, torch.Tensor]:
    """Each layer's weight scores by the criterion; ``weights`` are the effective weights."""
    if cfg.criterion == "taylor":
        grads = _gradients(module, layers, rec)
        scores = {n: criteria.taylor(w, grads[n]) for n, w in weights.items()}
    elif cfg.criterion == "random":
        scores = {
            n: criteria.random_scores(w, seed=rec.ctx.seed * 1000 + step * 97 + i)
            for i, (n, w) in enumerate(weights.items())
        }
    else:
        scores = {n: criteria.magnitude(w) for n, w in weights.items()}
    # Pruned weights stay pruned: masks only grow along the schedule.
    return {
        n: torch.where(weights[n] != 0, s, torch.full_like(s, -1.0))
        if hasattr(layers[n], "weight_mask")
        else s
        for n, s in scores.items()
    }


def masks_at(
    module, layers, cfg: PruneConfig, finals: dict[str, float] | float, epoch: int, rec: Recovery
) -> dict[str, torch.Tensor]:
    """Each layer's mask at ``epoch``: ``finals`` is one global sparsity or one per layer."""
    weights = {n: effective_weight(m) for n, m in layers.items()}
    scores = _scores(module, layers, weights, cfg, rec, epoch)
    if cfg.pattern == "n:m":
        return {f"{n}.weight": nm_mask(scores[n].clamp(min=0), cfg.n, cfg.m, name=n) for n in layers}
    if isinstance(finals, float):
        masks = unstructured_masks(weights, schedule_sparsity(epoch, cfg, finals), scores, scope="global")
        return {f"{n}.weight": mask for n, mask in masks.items()}
    out = {}
    for n in layers:
        s = schedule_sparsity(epoch, cfg, finals[n])
        out[f"{n}.weight"] = unstructured_masks({n: weights[n]}, s, {n: scores[n]}, scope="layer")[n]
    return out


def set_masks(module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Apply masks the first time, then replace them (torch's prune would multiply them)."""
    for key, mask in masks.items():
        owner, _, _ = key.rpartition(".")
        layer = module.get_submodule(owner)
        if hasattr(layer, "weight_mask"):
            current = cast(torch.Tensor, layer.weight_mask)  # the buffer torch.nn.utils.prune added
            current.copy_(mask.to(current.dtype))
        else:
            apply_masks(module, {key: mask})


def _nm_layers(layers: dict[str, Prunable], cfg: PruneConfig) -> tuple[dict[str, Prunable], list[str]]:
    """Layers whose inputs per output divide by m (others cannot follow the pattern)."""
    ok: dict[str, Prunable] = {}
    left: list[str] = []
    for n, layer in layers.items():
        k = layer.weight[0].numel()
        (ok.__setitem__(n, layer) if k % cfg.m == 0 else left.append(f"{n} ({k} inputs)"))
    if not ok:
        raise PressoError(
            f"No Linear or Conv layer of this model has a multiple of m={cfg.m} inputs per output, "
            f"so none can be {cfg.n}:{cfg.m} sparse ({', '.join(left[:4])})."
        )
    return ok, left


def _finals(module, layers, cfg: PruneConfig, ctx: StageContext):
    """``(finals, table)``: ``finals(sparsity)`` gives the final sparsity of a run aiming at
    ``sparsity`` (one global number, the same per layer, or per-layer from sensitivity
    curves, measured once and re-allocated for each target); ``table`` rows the curves."""
    if cfg.scope == "global" or cfg.pattern == "n:m":
        return (lambda target: target), []
    if cfg.scope == "layer":
        return (lambda target: {n: target for n in layers}), []
    from presso.techniques.pruning.sensitivity import allocate, curves_table, sensitivity_curves

    if ctx.score_outputs is None:
        raise PressoError(
            "scope 'sensitivity' needs the pipeline's scorer; run the stage through presso.compress."
        )
    score_outputs = ctx.score_outputs
    xs = [torch.from_numpy(ctx.calibration.inputs[n]) for n in ctx.input_names]

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            out = m(*xs)
        return score_outputs(first_tensor(out).float().numpy()).drop

    ctx.log(f"prune: sensitivity curves of {len(layers)} layers")
    curves = sensitivity_curves(module, list(layers), evaluate, kind="unstructured", progress=ctx.log)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    return (lambda target: allocate(curves, sizes, target, ctx.max_drop)), curves_table(curves)


def _layer_rows(module, layers: Mapping[str, Prunable], exported: Path, curves: list[dict]) -> list[dict]:
    nodes = layer_nodes(exported, layers)
    by_layer = {row["layer"]: row for row in curves}
    rows = []
    for n, layer in layers.items():
        w = layer.weight.detach()
        zeros = int((w == 0).sum())
        row = {
            "layer": n,
            "parameters": int(w.numel()),
            "zeros": zeros,
            "sparsity": round(zeros / w.numel(), 4),
        }
        if n in nodes:
            row["node"] = nodes[n]
        row.update({k: v for k, v in by_layer.get(n, {}).items() if k != "layer"})
        rows.append(row)
    return rows


@technique(
    "prune",
    config=PruneConfig,
    domain="torch",
    summary=(
        "weight pruning: unstructured (magnitude / Taylor / random, global, per layer or from "
        "sensitivity curves) or N:M masks on a one-shot, iterative or gradual schedule with "
        "fine-tuning; zeros stored as a bitmask + surviving values"
    ),
    sparse=True,
    search=PRUNE,
)
def prune_weights(onnx_path: Path, cfg: PruneConfig, ctx: StageContext) -> StageResult:
    """The ``prune`` technique (see the module docstring)."""
    rec = recovery_for(ctx, cfg, "prune")
    cfg = rec.cfg  # epochs and lr resolved for this model
    original = ctx.module
    notes: list[str] = []
    layers0 = prunable_layers(original, cfg.skip)
    if cfg.pattern == "n:m":
        layers0, left = _nm_layers(layers0, cfg)
        if left:
            notes.append(
                f"prune: {_plural(len(left), 'layer')} left dense, inputs per output not a multiple of "
                f"m={cfg.m}: {', '.join(left[:6])}"
            )
    finals_for, curves = _finals(original, layers0, cfg, ctx)

    def attempt(fraction: float) -> Candidate:
        module = copy.deepcopy(original)
        layers = {n: module.get_submodule(n) for n in layers0}
        finals = finals_for(fraction)  # a retry re-allocates, so the pinned sparsity reproduces it
        label = f"{cfg.n}:{cfg.m}" if cfg.pattern == "n:m" else f"{fraction:.0%} sparse"
        ctx.log(f"prune: {label}, {cfg.ramp_schedule} schedule, {cfg.epochs} epochs")
        changes: list[float] = []

        def before_epoch(epoch: int) -> bool:
            masks = masks_at(module, layers, cfg, finals, epoch, rec)
            kept = sum(int(m.sum()) for m in masks.values())
            if changes and changes[-1] == kept:
                return False
            changes.append(kept)
            set_masks(module, masks)
            return True

        report = None
        if cfg.epochs:
            report = rec.fit(module, list(layers.values()), before_epoch=before_epoch)
        # The time cap may stop a ramp early: finish it so the sparsity is the one asked for.
        assert cfg.epochs is not None  # recovery_for resolved it
        before_epoch(max(cfg.epochs, 1) + 10**6)
        make_permanent(module.eval())
        total = sum(m.weight.numel() for m in layers.values())
        zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
        assert ctx.export is not None  # recovery_for refused a context without one
        dst = ctx.export(module, ctx.workdir / f"prune-{fraction:g}.onnx")
        cand = Candidate(
            label, dst, module=module, options={"sparsity": fraction} if cfg.pattern != "n:m" else {}
        )
        cand.score = ctx.score(dst)
        cand.layers = _layer_rows(module, layers, dst, curves)
        cand.note = f"{zeros / total:.1%} of {total:,} prunable weights are zero"
        how = "magnitude" if cfg.pattern == "n:m" else f"{cfg.criterion}, scope {cfg.scope}"
        cand.notes = [
            f"prune: {label} ({how}, {cfg.ramp_schedule}): {zeros:,} of {total:,} weights of "
            f"{_plural(len(layers), 'layer')} are zero; "
            + (rec.describe(report) if report else "no fine-tuning (epochs: 0)")
        ]
        return cand

    fractions = [cfg.target] if cfg.pattern == "n:m" else milder(cfg.target, cfg.backoff)
    result = with_backoff(fractions, attempt, ctx, "prune")
    result.notes = notes
    return result
