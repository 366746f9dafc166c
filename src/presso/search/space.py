"""The search space of a model: which choices a trial makes, and the recipe they spell.

A trial is a recipe assembled from choices, in the order a pipeline must run them:

    structure (slim | distill a student | none) -> prune -> low-rank factors -> weights format

Every choice is categorical (a short list of values) so that the same space serves the
grid, random, TPE, NSGA-II and policy-gradient samplers, and a choice only exists when the
choices before it make it matter (``when``): a slim ratio only if the trial slims.

What the space holds comes from the model (:meth:`SearchSpace.for_model`): PyTorch models
get the structural choices and their recovery hyper-parameters; transformer encoders get
heads / feed-forward fractions and depth instead of channel ratios; convolutional models get
standard vs depthwise-separable student blocks; small models get a per-layer choice of which
layers to factorize; ONNX files (no PyTorch to train) get quantization choices with a
per-layer float fallback; Python callables get a student MLP whose layer sizes are searched.

Every trial stage runs without backoff (``backoff: 0``): a trial is exactly the point the
sampler chose, and a point that breaks the budget is reported as such, so the sampler
learns where the budget's edge is instead of the stage quietly trying milder settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from presso.errors import PressoError
from presso.recipe.schema import Recipe, Settings, Stage
from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Technique
from presso.techniques.registry import techniques

__all__ = ["Choice", "SearchSpace", "describe_stages", "families"]

# The grid sampler enqueues every point of the coarse grid: beyond this, it is refused.
GRID_LIMIT = 20_000

# Hyper-parameters the grid sampler holds at one value (see SearchSpace.coarse_grid)
_HYPER = ("lr", "epochs", "temperature", "l1", "alpha", "scope")

# Layers of a small model get their own factorize on/off choice; above this, one choice for all.
PER_LAYER_MAX = 8


@dataclass
class SearchSpace:
    """The choices of one model's search, and how a set of chosen values becomes a recipe."""

    kind: str  # "torch", "transformer", "onnx" or "callable"
    families: tuple[str, ...]
    choices: list[Choice] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # factorizable layers with their own choice
    onnx_nodes: list[str] = field(default_factory=list)  # ONNX layers with their own int8 fallback

    # ------------------------------------------------------------------ building

    @classmethod
    def for_model(cls, prepared, families: list[str] | None = None) -> SearchSpace:
        run = prepared.run
        loaded = run.model
        kind = ("transformer" if loaded.transformer else "torch") if loaded.kind == "torch" else loaded.kind
        allowed = tuple(f for f, entry in _entries().items() if kind in entry[1].kinds)
        chosen = _chosen_families(families, allowed, kind)
        space = cls(kind, chosen)
        if kind == "torch":
            space.layers = _factorizable(loaded.module)
        if kind == "onnx" and prepared.baseline is not None:
            space.onnx_nodes = _weighted_nodes(prepared.baseline)
        space.choices = space._choices(loaded)
        if not space.choices:
            raise PressoError(
                "The search space is empty: no technique of --techniques applies to this model."
            )
        return space

    def model(self, module: Any = None) -> SpaceModel:
        return SpaceModel(self.kind, module, tuple(self.layers), tuple(self.onnx_nodes))  # type: ignore[arg-type]

    def _slot(self, slot: str) -> list[tuple[str, SearchEntry]]:
        entries = _entries()
        return [(f, entries[f][1]) for f in self.families if entries[f][1].slot == slot]

    def _choices(self, loaded) -> list[Choice]:
        """Choices in pipeline order: the structure change, the optional stages (each on or
        off), the weights format; each technique's own choices right after its gate."""
        model, c = self.model(loaded.module), []
        structures = self._slot("structure")
        if structures:
            describe = ", or ".join(e.summary for _, e in structures)
            c.append(Choice("structure", ("none", *(f for f, _ in structures)), describe=describe))
        for family, entry in structures:
            c += entry.choices(model, _equals("structure", family))
        optional = [f for f, _ in self._slot("optional")]
        for family, entry in self._slot("optional"):
            gate = _none_of([x for x in entry.excludes if x in optional])
            c.append(Choice(family, (False, True), gate, entry.summary))
            c += entry.choices(model, _on(family, gate))
        formats = self._slot("weights")
        if formats:
            c.append(
                Choice(
                    "weights",
                    ("fp32", *(f for f, _ in formats)),
                    describe="how the weights are stored and run",
                )
            )
        for family, entry in formats:
            c += entry.choices(model, _equals("weights", family))
        return c

    # ------------------------------------------------------------------ using

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's values, asked of the sampler in pipeline order (conditional choices
        only when they matter)."""
        params: dict[str, Any] = {}
        for choice in self.choices:
            if choice.when(params):
                params[choice.name] = trial.suggest_categorical(choice.name, list(choice.values))
        return params

    def grid(self) -> dict[str, list]:
        return {c.name: list(c.values) for c in self.choices}

    def coarse_grid(self) -> dict[str, list]:
        """The grid sampler's space: every value of the main choices (what to apply and how
        strongly), the middle value of each hyper-parameter, and every layer compressed (their
        full product would be millions of points)."""
        out = {}
        for c in self.choices:
            if ".layer." in c.name or ".float." in c.name:
                out[c.name] = [c.values[0]]  # compress every layer: factorize it / do not keep it float
            elif c.name.rsplit(".", 1)[-1] in _HYPER:
                out[c.name] = [c.values[len(c.values) // 2]]
            else:
                out[c.name] = list(c.values)
        return out

    def grid_points(self, limit: int = GRID_LIMIT) -> list[dict[str, Any]]:
        """Every distinct point of the coarse grid: a choice that does not matter for a point
        (a slim ratio when the point distils a student) is not multiplied in, so digits has
        about 1,500 points where the plain product of the coarse values has 600,000."""
        grid = self.coarse_grid()
        points: list[dict[str, Any]] = [{}]
        for choice in self.choices:
            grown = []
            for point in points:
                if choice.when(point):
                    grown += [{**point, choice.name: v} for v in grid[choice.name]]
                else:
                    grown.append(point)
            points = grown
            if len(points) > limit:
                raise PressoError(
                    f"The grid of this model's search space has more than {limit:,} points; use "
                    "--sampler tpe, random, nsga2 or rl, or fewer --techniques."
                )
        return points

    def active(self, params: dict[str, Any]) -> dict[str, Any]:
        """Only the values that matter for these choices (a grid point sets them all)."""
        out: dict[str, Any] = {}
        for choice in self.choices:
            if choice.when(out) and choice.name in params:
                out[choice.name] = params[choice.name]
        return out

    def digest(self) -> str:
        text = json.dumps([[c.name, list(c.values)] for c in self.choices], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def size(self) -> int:
        n = 1
        for c in self.choices:
            n *= len(c.values)
        return n

    def recipe(self, params: dict[str, Any], name: str, settings: Settings) -> Recipe | None:
        """The recipe these values spell; None when they choose no stage at all."""
        p = self.active(params)
        model, entries = self.model(), _entries()
        picked = [
            p.get("structure", "none"),
            *(f for f, _ in self._slot("optional") if p.get(f)),
            p.get("weights"),
        ]
        stages: list[Stage] = []
        for family in self.families:
            if family not in picked:
                continue
            technique, entry = entries[family]
            options = entry.options(p, model)
            if options is not None:
                stages.append(Stage(technique=technique.name, options=options, optional=entry.stage_optional))
        return _none_if_empty(stages, name, settings, self)


def _none_if_empty(stages: list[Stage], name: str, settings: Settings, space: SearchSpace) -> Recipe | None:
    if not stages:
        return None
    return Recipe(name=name, description=describe_stages(stages), stages=stages, settings=settings)


def describe_stages(stages: list[Stage]) -> str:
    """A short line for tables: 'slim ratio 0.65 -> int8 dynamic'."""
    known = techniques()
    parts = []
    for s in stages:
        entry = known[s.technique].search if s.technique in known else None
        what = entry.describe(s.options) if entry is not None else ""
        parts.append(f"{s.technique} {what}".strip())
    return " -> ".join(parts)


def families() -> tuple[str, ...]:
    """The --techniques names, in pipeline order."""
    return tuple(_entries())


def _entries() -> dict[str, tuple[Technique, SearchEntry]]:
    """family -> (technique, its search entry), for every technique that joins the search."""
    found = [
        (t.search.order, t.search.family, t, t.search) for t in techniques().values() if t.search is not None
    ]
    return {family: (t, entry) for _, family, t, entry in sorted(found, key=lambda x: (x[0], x[1]))}


def _chosen_families(requested: list[str] | None, allowed: tuple[str, ...], kind: str) -> tuple[str, ...]:
    if not requested:
        return allowed
    known = families()
    unknown = [f for f in requested if f not in known]
    if unknown:
        raise PressoError(
            f"Unknown technique famil{'ies' if len(unknown) > 1 else 'y'} "
            f"{', '.join(map(repr, unknown))} for --techniques. Allowed: {', '.join(known)}."
        )
    absent = [f for f in requested if f not in allowed]
    if absent:
        what = {
            "transformer": "a transformer encoder",
            "torch": "this PyTorch model",
            "onnx": "an ONNX file (nothing to train)",
            "callable": "a Python callable",
        }[kind]
        raise PressoError(
            f"--techniques {', '.join(absent)} cannot apply to {what}. "
            f"For this model choose from: {', '.join(allowed)}."
        )
    return tuple(f for f in allowed if f in requested)


def _equals(name: str, value: str):
    return lambda values: values.get(name) == value


def _on(family: str, gate):
    return lambda values: bool(values.get(family)) and gate(values)


def _none_of(families: list[str]):
    return lambda values: not any(values.get(f) for f in families)


def _factorizable(module) -> list[str]:
    """Linear / Conv layers of a small model, but the last one (the output layer, where a
    low rank costs the most), each with its own factorize choice; none above PER_LAYER_MAX."""
    from torch import nn

    names = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    names = names[:-1]
    return names if 1 < len(names) <= PER_LAYER_MAX else []


def _weighted_nodes(path) -> list[str]:
    """MatMul / Gemm / Conv nodes of an ONNX model with a weight initializer, each with its
    own float fallback choice when there are few of them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    nodes = [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv") and any(x in inits for x in n.input) and n.name
    ]
    return nodes if 1 < len(nodes) <= PER_LAYER_MAX else []
