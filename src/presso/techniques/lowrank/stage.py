"""The ``factorize`` recipe stage: replace layers by low-rank factors, fine-tune, export.

With ``rank: auto`` every chosen layer keeps a quarter of its parameters; if the budget
breaks on the calibration or held-out rows, milder retries keep half, then three
quarters (``with_backoff``, shared with the pruning stages). The ranks each candidate
used are pinned in recipe.yaml, so re-running it factorizes exactly the same way.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from presso.errors import NothingToDo, PressoError
from presso.model.loaded import count_parameters
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.lowrank.config import FactorizeConfig
from presso.techniques.lowrank.factorize import (
    LayerDecision,
    Selector,
    factorizable,
    factorize_layer,
    left_whole,
    replace_module,
)
from presso.techniques.lowrank.search import LOWRANK
from presso.techniques.lowrank.speed import input_shapes, speed_selectors, speeds_up
from presso.techniques.recovery import example_inputs, milder, recovery_for, with_backoff

# Feed-forward layers of BERT-style encoders (Hugging Face names): the FFN holds two
# thirds of a layer's weights, and leaving the attention projections whole keeps ONNX
# Runtime's attention fusion, which matches their exact pattern.
_FFN = re.compile(r"(\.intermediate\.dense|(?<!attention)\.output\.dense)$")


def target_layers(
    module: nn.Module, cfg: FactorizeConfig, ctx: StageContext, order: list[str]
) -> tuple[list[str], str]:
    """(layer names to factorize, what was left out and why)."""
    candidates = factorizable(module)
    if isinstance(cfg.layers, list):
        missing = [n for n in cfg.layers if n not in candidates]
        if missing:
            raise PressoError(
                f"factorize: no Linear / Conv layer named {', '.join(map(repr, missing))}; the model's "
                f"are: {', '.join(candidates) or 'none'}."
            )
        return list(cfg.layers), ""
    if cfg.layers == "all":
        return candidates, ""
    if ctx.transformer is not None:
        ffn = [n for n in candidates if _FFN.search(n)]
        if ffn:
            return (
                ffn,
                "attention projections and other layers kept whole (layers: auto = feed-forward layers)",
            )
    run = [n for n in order if n in candidates]
    if len(run) > 1:
        return [
            n for n in candidates if n != run[-1]
        ], f"output layer {run[-1]} kept whole (layers: all includes it)"
    return candidates, ""


def input_grams(
    module: nn.Module, names: list[str], ctx: StageContext, batch: int = 64
) -> dict[str, np.ndarray]:
    """X^T X / N of each named Linear layer's inputs over the calibration rows (float64)."""
    grams: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def record(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + (x.T @ x).numpy()
            counts[name] = counts.get(name, 0) + len(x)

        return hook

    hooks = [module.get_submodule(n).register_forward_pre_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            for feed in ctx.calibration.batches(batch):
                module(*[torch.from_numpy(np.ascontiguousarray(feed[k])) for k in ctx.input_names])
    finally:
        for h in hooks:
            h.remove()
    return {n: g / counts[n] for n, g in grams.items()}


def _selector(cfg: FactorizeConfig, name: str, keep: float | None) -> Selector:
    if name in cfg.ranks:
        r = cfg.ranks[name]
        # Selector refuses a list that is not a pair [R_out, R_in].
        return Selector(rank=r if isinstance(r, int) else cast(tuple[int, int], tuple(r)))
    if keep is not None:
        return Selector(keep=keep)
    return Selector(
        rank=cfg.rank if isinstance(cfg.rank, int) else None,
        ratio=cfg.ratio,
        energy=cfg.energy,
        max_error=cfg.max_error,
    )


def _describe(cfg: FactorizeConfig, keep: float | None) -> str:
    if keep is not None:
        return f"keep {keep:.0%} of each layer's parameters"
    if cfg.rank == "speed":
        return "the largest rank measured faster (rank: speed)"
    if cfg.automatic:
        return "ranks given per layer"
    return _selector(cfg, "", None).describe()


@dataclass
class _Targets:
    """The layers one stage factorizes and what was measured about them, once: milder
    retries reuse it rather than tracing, probing and timing the model again."""

    names: list[str]
    left_out: str  # what target_layers left out and why, for the notes
    shapes: dict[str, tuple]  # batch-1 input shape per layer the forward pass runs
    grams: dict[str, np.ndarray]  # weighting: activations only
    timed: dict[str, Selector | None]  # rank: speed only; None where no rank ran faster


def _targets(original: nn.Module, cfg: FactorizeConfig, ctx: StageContext) -> _Targets:
    shapes = input_shapes(original, factorizable(original), example_inputs(ctx))
    names, left_out = target_layers(original, cfg, ctx, list(shapes))
    if not names:
        raise PressoError("factorize: the model has no Linear or Conv layers to factorize.")
    linear = [n for n in names if isinstance(original.get_submodule(n), nn.Linear)]
    grams = input_grams(original, linear, ctx) if cfg.weighting == "activations" else {}
    timed = (
        speed_selectors(original, [n for n in names if n not in cfg.ranks], shapes, ctx.workdir, ctx.log)
        if cfg.rank == "speed"
        else {}
    )
    return _Targets(names, left_out, shapes, grams, timed)


def _factorized(
    layer: nn.Module,
    name: str,
    j: int,
    t: _Targets,
    cfg: FactorizeConfig,
    ctx: StageContext,
    keep: float | None,
) -> tuple[nn.Module | None, LayerDecision]:
    """The layer's factors and its report row, or None and the row saying why it stays whole."""
    if name in t.timed and t.timed[name] is None:
        return None, left_whole(layer, name, "no rank measured faster than the dense layer on ONNX Runtime")
    new, d = factorize_layer(
        layer, name, t.timed.get(name) or _selector(cfg, name, keep), gram=t.grams.get(name)
    )
    # Ranks chosen by timing (rank: speed) or pinned per layer are taken as they are, untimed.
    if (
        new is not None
        and cfg.pays == "speed"
        and cfg.rank != "speed"
        and name not in cfg.ranks
        and (name not in t.shapes or not speeds_up(layer, new, t.shapes[name], ctx.workdir / f"pays-{j}"))
    ):
        return None, left_whole(
            layer, name, f"its rank-{d.rank} factors did not run measurably faster (pays: speed)"
        )
    return new, d


def _decide(
    module: nn.Module, t: _Targets, cfg: FactorizeConfig, ctx: StageContext, keep: float | None
) -> list[LayerDecision]:
    """Replace the target layers of ``module`` (in place) by their factors where they pay."""
    decisions = []
    for j, name in enumerate(t.names):
        layer = module.get_submodule(name)
        ctx.log(f"factorize: layer {j + 1}/{len(t.names)} ({name})")
        new, d = _factorized(layer, name, j, t, cfg, ctx, keep)
        if new is not None:
            replace_module(module, name, new)
        decisions.append(d)
    return decisions


def _factors(module: nn.Module, done: list[LayerDecision]) -> list[nn.Module]:
    """The thin layers that replaced the factorized ones (what fine-tuning may penalise)."""
    return [
        m
        for d in done
        for m in module.get_submodule(d.layer).modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]


def _pins(done: list[LayerDecision]) -> dict[str, Any]:
    """recipe.yaml options that redo this candidate exactly: its layers at the ranks they got,
    whatever selector found them (a re-run must not time or back off again)."""
    return {
        "rank": "auto",
        "ratio": None,
        "energy": None,
        "max_error": None,
        "pays": "size",
        "layers": [d.layer for d in done],
        "ranks": {
            d.layer: (int(d.rank) if d.method == "svd" else [int(v) for v in d.rank.split("x")]) for d in done
        },
    }


def _stage_note(
    label: str, before: int, after: int, decisions: list[LayerDecision], left_out: str, tuned: str
) -> str:
    alone = [f"{d.layer} ({d.reason})" for d in decisions if not d.factorized]
    return (
        f"factorize: {label}: parameters {before:,} -> {after:,}"
        + (f"; left whole: {', '.join(alone)}" if alone else "")
        + (f"; {left_out}" if left_out else "")
        + f"; {tuned}"
    )


@technique(
    "factorize",
    config=FactorizeConfig,
    domain="torch",
    summary=(
        "low-rank factorization: Linear layers by truncated SVD (two thin layers), convolutions "
        "by Tucker-2 (1x1 -> core -> 1x1); rank by fixed rank, ratio, kept energy, max error or "
        "measured speed; fine-tuned to the original model"
    ),
    search=LOWRANK,
)
def factorize_stage(onnx_path: Path, cfg: FactorizeConfig, ctx: StageContext) -> StageResult:
    """The ``factorize`` technique (see the module docstring)."""
    rec = recovery_for(ctx, cfg, "factorize")
    cfg = rec.cfg
    original = ctx.module
    targets = _targets(original, cfg, ctx)

    def attempt(removed: float | None) -> Candidate:
        keep = None if removed is None else round(1.0 - removed, 6)
        module = copy.deepcopy(original)
        before = count_parameters(module)
        decisions = _decide(module, targets, cfg, ctx, keep)
        done = [d for d in decisions if d.factorized]
        if not done:
            why = "; ".join(f"{d.layer}: {d.reason}" for d in decisions)
            raise NothingToDo(
                f"factorize: no layer would pay ({why}). Lower the rank (e.g. keep: 0.25), use "
                "pays: size, or choose other layers."
            )
        fit = rec.fit(module, _factors(module, done)) if cfg.epochs else None
        module.eval()
        after = count_parameters(module)
        label = f"factorized {len(done)}/{len(decisions)} layers ({_describe(cfg, keep)})"
        assert ctx.export is not None  # recovery_for refused a context without one
        dst = ctx.export(module, ctx.workdir / f"factorized-{len(tried_labels)}.onnx")
        tried_labels.append(label)
        cand = Candidate(label, dst, module=module, options=_pins(done))
        cand.score = ctx.score(dst)
        cand.layers = [d.row() for d in decisions]
        cand.note = f"parameters {before:,} -> {after:,} ({after / before:.2f}x)"
        tuned = rec.describe(fit) if fit else "no fine-tuning (epochs: 0)"
        cand.notes = [_stage_note(label, before, after, decisions, targets.left_out, tuned)]
        return cand

    tried_labels: list[str] = []
    if cfg.automatic and not cfg.ranks:
        return with_backoff(milder(1.0 - cfg.keep, cfg.backoff), attempt, ctx, "factorize")
    return with_backoff([None], attempt, ctx, "factorize")
