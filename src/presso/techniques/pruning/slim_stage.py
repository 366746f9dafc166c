"""The ``slim`` recipe stage: physically remove channels / neurons (or attention heads and
feed-forward neurons of a transformer encoder), fine-tune, export a smaller, faster model.

CNNs and MLPs go through ``structured.prune_channels`` (Torch-Pruning's dependency graph,
with presso's equivalence checks and refusals); transformer encoders (a Hugging Face model, or
any model whose data flow shows encoder blocks, e.g. ``nn.TransformerEncoder``) through
``transformer.prune_transformer``. ``schedule: iterative`` removes the same fraction of
the remaining channels in each of ``rounds`` rounds, fine-tuning in between. If the budget
breaks, milder ratios are retried (``with_backoff``).
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from presso.errors import PressoError
from presso.model.loaded import count_parameters
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.pruning.config import SlimConfig
from presso.techniques.pruning.masks import PRUNABLE
from presso.techniques.pruning.search import SLIM
from presso.techniques.recovery import example_inputs, layer_nodes, milder, recovery_for, with_backoff


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in module.named_modules() if isinstance(m, PRUNABLE)}


def _layer_rows(before: dict, module: nn.Module, exported: Path) -> list[dict]:
    layers = {n: m for n, m in module.named_modules() if isinstance(m, PRUNABLE)}
    nodes = layer_nodes(exported, layers)
    rows = []
    for n, m in layers.items():
        shape = tuple(m.weight.shape)
        old = before.get(n, shape)
        row = {
            "layer": n,
            "outputs": f"{old[0]} -> {shape[0]}",
            "inputs": f"{old[1]} -> {shape[1]}",
            "parameters": int(sum(p.numel() for p in m.parameters(recurse=False))),
        }
        if n in nodes:
            row["node"] = nodes[n]
        rows.append(row)
    return rows


def _is_transformer(ctx: StageContext) -> bool:
    """A model loaded as a transformer, or one whose traced forward shows encoder blocks."""
    if ctx.transformer is not None:
        return True
    if ctx.module is None:
        return False
    from presso.techniques.pruning.transformer import find_encoder_blocks

    try:
        return bool(find_encoder_blocks(ctx.module, example_inputs(ctx)))
    except PressoError:  # a model the trace cannot run: channel pruning says why, if it fails too
        return False


def heads_and_ffn(cfg: SlimConfig, fraction: float) -> tuple[float, float]:
    """The head and feed-forward fractions when ``fraction`` replaces the leading one
    (``ffn``, or ``heads`` when ffn is 0): milder retries scale both alike."""
    scale = fraction / (cfg.ffn or cfg.heads)
    return min(cfg.heads * scale, 0.95), min(cfg.ffn * scale, 0.95)


def _prune_once(module: nn.Module, cfg: SlimConfig, fraction: float, ctx: StageContext, transformer: bool):
    if transformer:
        from presso.techniques.pruning.transformer import prune_transformer

        heads, ffn = heads_and_ffn(cfg, fraction)
        importance = "taylor" if cfg.importance == "auto" else cfg.importance
        report = prune_transformer(
            module,
            example_inputs(ctx),
            heads_ratio=heads,
            ffn_ratio=ffn,
            importance=importance,
            scope=cfg.scope,
            round_to=cfg.round_to or 8,
            seed=ctx.seed,
        )
        return report
    from presso.techniques.pruning.structured import prune_channels

    importance = "l2" if cfg.importance == "auto" else cfg.importance
    return prune_channels(
        module,
        example_inputs(ctx),
        fraction,
        importance=importance,
        scope=cfg.scope,
        ignored_layers=cfg.skip,
        round_to=cfg.round_to,
        seed=ctx.seed,
    )


@technique(
    "slim",
    config=SlimConfig,
    domain="torch",
    summary=(
        "structured pruning: physically removes channels / neurons (or attention heads and "
        "feed-forward neurons), rewiring residual and concatenated layers, then fine-tunes: a "
        "smaller, faster model"
    ),
    search=SLIM,
)
def slim(onnx_path: Path, cfg: SlimConfig, ctx: StageContext) -> StageResult:
    """The ``slim`` technique (see the module docstring)."""
    rec = recovery_for(ctx, cfg, "slim")
    cfg = rec.cfg  # epochs and lr resolved for this model
    original = ctx.module
    transformer = _is_transformer(ctx)
    what = "attention heads and feed-forward neurons" if transformer else "channels / neurons"
    first = (cfg.ffn or cfg.heads) if transformer else cfg.ratio

    def attempt(fraction: float) -> Candidate:
        module = copy.deepcopy(original)
        before_shapes, before = _shapes(module), count_parameters(module)
        rounds = cfg.rounds if cfg.schedule == "iterative" else 1
        assert cfg.epochs is not None  # recovery_for resolved it
        per_round = 1.0 - (1.0 - fraction) ** (1.0 / rounds)
        fits = []
        for r in range(rounds):
            ctx.log(
                f"slim: removing {per_round:.0%} of the {what}"
                + (f" (round {r + 1}/{rounds})" if rounds > 1 else "")
            )
            _prune_once(module, cfg, per_round, ctx, transformer)
            epochs = cfg.epochs // rounds + (cfg.epochs % rounds if r == rounds - 1 else 0)
            if epochs:
                layers = [m for m in module.modules() if isinstance(m, PRUNABLE)]
                fits.append(rec.fit(module, layers, epochs=epochs))
        module.eval()
        after = count_parameters(module)
        assert ctx.export is not None  # recovery_for refused a context without one
        dst = ctx.export(module, ctx.workdir / f"slim-{fraction:g}.onnx")
        if transformer:
            heads, ffn = heads_and_ffn(cfg, fraction)
            label = f"{heads:.0%} of heads, {ffn:.0%} of ffn removed"
            pins = {"heads": heads, "ffn": ffn, "ratios": None}  # both: a milder retry scaled both
        else:
            label = f"{fraction:.0%} of {what} removed"
            pins = {"ratio": fraction, "ratios": None}  # recipe.yaml re-runs the chosen ratio only
        cand = Candidate(label, dst, module=module, options=pins)
        if ctx.transformer is not None:  # the same test as ``transformer``, narrowed for mypy
            from presso.techniques.pruning.transformer import attention_shape

            # ONNX Runtime's attention fusion (int8 stage) must see the pruned head count, or it
            # fuses the heads wrongly without an error; 0 / 0 (uneven heads) disables the fusion.
            cand.transformer = {**ctx.transformer, **attention_shape(module, example_inputs(ctx))}
        cand.score = ctx.score(dst)
        cand.layers = _layer_rows(before_shapes, module, dst)
        cand.note = f"parameters {before:,} -> {after:,} ({after / before:.2f}x)"
        tuned = "; ".join(rec.describe(f) for f in fits) if fits else "no fine-tuning (epochs: 0)"
        cand.notes = [
            f"slim: {label} ({cfg.importance}, scope {cfg.scope}, {rounds} round"
            f"{'s' if rounds > 1 else ''}): parameters {before:,} -> {after:,}; {tuned}"
        ]
        return cand

    if cfg.ratios and transformer:  # the schedule scales the configured heads / ffn
        fractions = [first * r / cfg.ratios[0] for r in cfg.ratios]
    else:
        fractions = cfg.ratios or milder(first, cfg.backoff)
    return with_backoff(fractions, attempt, ctx, "slim")
