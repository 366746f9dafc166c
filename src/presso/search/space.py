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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from presso.errors import PressoError
from presso.recipe.schema import Recipe, Settings, Stage

FAMILIES = ("slim", "distill", "prune", "lowrank", "int8", "kmeans", "int4")

# The grid sampler enqueues every point of the coarse grid: beyond this, it is refused.
GRID_LIMIT = 20_000

# Hyper-parameters the grid sampler holds at one value (see SearchSpace.coarse_grid)
_HYPER = ("lr", "epochs", "temperature", "l1", "alpha", "scope")

# Layers of a small model get their own factorize on/off choice; above this, one choice for all.
PER_LAYER_MAX = 8


@dataclass(frozen=True)
class Choice:
    name: str
    values: tuple
    when: Callable[[dict], bool] = lambda p: True
    describe: str = ""


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
        if loaded.kind == "torch":
            kind = "transformer" if loaded.transformer else "torch"
        else:
            kind = loaded.kind
        allowed = {
            "torch": ("slim", "distill", "prune", "lowrank", "int8", "kmeans"),
            "transformer": ("slim", "distill", "lowrank", "int8"),
            "onnx": ("int8", "kmeans", "int4"),
            "callable": ("distill", "int8"),
        }[kind]
        if families:
            unknown = [f for f in families if f not in FAMILIES]
            if unknown:
                raise PressoError(
                    f"Unknown technique famil{'ies' if len(unknown) > 1 else 'y'} "
                    f"{', '.join(map(repr, unknown))} for --techniques. Allowed: {', '.join(FAMILIES)}."
                )
            absent = [f for f in families if f not in allowed]
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
            chosen = tuple(f for f in allowed if f in families)
        else:
            chosen = allowed
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

    def _choices(self, loaded) -> list[Choice]:
        fam, kind, c = self.families, self.kind, []
        transformer = kind == "transformer"
        structures = ["none"] + [f for f in ("slim", "distill") if f in fam]
        if len(structures) > 1:
            c.append(
                Choice("structure", tuple(structures), describe="remove channels / heads, or train a student")
            )
        is_slim = lambda p: p.get("structure") == "slim"  # noqa: E731
        is_student = lambda p: p.get("structure") == "distill"  # noqa: E731
        if "slim" in fam:
            if transformer:
                c += [
                    Choice("slim.heads", (0.0, 0.25, 0.5), is_slim, "attention heads removed per layer"),
                    Choice("slim.ffn", (0.25, 0.5, 0.75), is_slim, "feed-forward neurons removed per layer"),
                ]
            else:
                c.append(
                    Choice(
                        "slim.ratio",
                        (0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85),
                        is_slim,
                        "channels / neurons removed per layer",
                    )
                )
            c += _recovery("slim", is_slim, transformer)
        if "distill" in fam:
            if kind == "callable":
                c.append(
                    Choice(
                        "distill.hidden",
                        ("32", "64", "128", "32x32", "64x64", "128x128", "64x64x64"),
                        is_student,
                        "student MLP hidden layer sizes",
                    )
                )
            else:
                c.append(
                    Choice(
                        "distill.width",
                        (0.25, 0.35, 0.45, 0.6, 0.8, 1.0),
                        is_student,
                        "fraction of channels / neurons (heads, FFN) the student keeps",
                    )
                )
                if transformer:
                    c.append(
                        Choice("distill.depth", (2, 3, 4, 6), is_student, "encoder layers the student keeps")
                    )
                if _has_spatial_conv(loaded.module):
                    c.append(
                        Choice(
                            "distill.blocks",
                            ("standard", "separable"),
                            is_student,
                            "standard or depthwise-separable (MobileNet) convolutions",
                        )
                    )
            c += [
                Choice("distill.temperature", (1.0, 2.0, 4.0, 8.0), is_student, "soft-target temperature T"),
                Choice("distill.alpha", (0.5, 0.9, 1.0), is_student, "weight of the soft-target loss"),
            ]
            c += _recovery("distill", is_student, transformer, temperature=False)
        if "prune" in fam:
            c.append(
                Choice("prune", (False, True), describe="unstructured pruning (zeros stored as a bitmask)")
            )
            on = lambda p: bool(p.get("prune"))  # noqa: E731
            c += [
                Choice("prune.sparsity", (0.5, 0.7, 0.8, 0.9, 0.95), on, "fraction of weights zeroed"),
                Choice("prune.scope", ("global", "layer"), on, "one ranking over all layers, or per layer"),
            ]
            c += _recovery("prune", on, transformer)
        if "lowrank" in fam:
            lowrank_ok = (lambda p: not p.get("prune")) if "prune" in fam else (lambda p: True)
            c.append(Choice("lowrank", (False, True), lowrank_ok, "low-rank factors (SVD / Tucker-2)"))
            on = lambda p: bool(p.get("lowrank")) and lowrank_ok(p)  # noqa: E731
            c.append(
                Choice(
                    "lowrank.ratio",
                    (0.125, 0.25, 0.5),
                    on,
                    "rank kept, as a fraction of each layer's full rank",
                )
            )
            # Per-layer choices name the teacher's modules: a student with fewer blocks renames them.
            per_layer = lambda p: on(p) and p.get("structure") != "distill"  # noqa: E731
            for layer in self.layers:
                c.append(Choice(f"lowrank.layer.{layer}", (True, False), per_layer, f"factorize {layer}"))
        formats = ["fp32"] + [f for f in ("int8", "kmeans", "int4") if f in fam]
        if len(formats) > 1:
            c.append(Choice("weights", tuple(formats), describe="how the weights are stored and run"))
        is_int8 = lambda p: p.get("weights") == "int8"  # noqa: E731
        if "int8" in fam:
            variants = (
                ("dynamic", "dynamic-smooth") if transformer else ("dynamic", "static-s8s8", "static-u8s8")
            )
            c.append(Choice("int8.variant", variants, is_int8, "ONNX Runtime int8 kernels"))
            for node in self.onnx_nodes:
                c.append(Choice(f"int8.float.{node}", (False, True), is_int8, f"keep {node} in float"))
        if "kmeans" in fam:
            c.append(
                Choice(
                    "kmeans.bits",
                    (3, 4, 5, 6),
                    lambda p: p.get("weights") == "kmeans",
                    "bits per weight index (2^bits shared values per layer)",
                )
            )
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
        stages: list[Stage] = []
        structure = p.get("structure", "none")
        if structure == "slim":
            opts = (
                {"heads": p["slim.heads"], "ffn": p["slim.ffn"]}
                if self.kind == "transformer"
                else {"ratio": p["slim.ratio"]}
            )
            stages.append(
                Stage(technique="slim", options={**opts, **_recovery_options("slim", p), "backoff": 0})
            )
        elif structure == "distill":
            if self.kind == "callable":
                opts = {"student": "mlp", "hidden": [int(h) for h in str(p["distill.hidden"]).split("x")]}
            else:
                opts = {"width": p["distill.width"]}
                if "distill.depth" in p:
                    opts["depth"] = p["distill.depth"]
                if p.get("distill.blocks", "standard") != "standard":
                    opts["blocks"] = p["distill.blocks"]
            opts.update(
                {
                    "temperature": p["distill.temperature"],
                    "alpha": p["distill.alpha"],
                    **_recovery_options("distill", p),
                    "backoff": 0,
                }
            )
            stages.append(Stage(technique="distill", options=opts))
        if p.get("prune"):
            stages.append(
                Stage(
                    technique="prune",
                    options={
                        "sparsity": p["prune.sparsity"],
                        "scope": p["prune.scope"],
                        **_recovery_options("prune", p),
                        "backoff": 0,
                    },
                )
            )
        if p.get("lowrank"):
            opts = {"ratio": p["lowrank.ratio"]}
            chosen = [layer for layer in self.layers if p.get(f"lowrank.layer.{layer}")]
            if any(f"lowrank.layer.{layer}" in p for layer in self.layers):
                opts["layers"] = chosen
            # No layer chosen: no factorize stage, the later stages still run. A layer whose
            # factors would not save parameters stays whole; if none would, the stage is
            # skipped and the trial goes on without it.
            if opts.get("layers", True):
                stages.append(Stage(technique="factorize", options=opts, optional=True))
        weights = p.get("weights", "fp32")
        if weights == "int8":
            opts = {"variants": [p["int8.variant"]]}
            kept = [node for node in self.onnx_nodes if p.get(f"int8.float.{node}")]
            if kept:
                opts["keep_float"] = kept
            stages.append(Stage(technique="int8", options=opts))
        elif weights == "kmeans":
            stages.append(Stage(technique="kmeans", options={"bits": p["kmeans.bits"]}))
        elif weights == "int4":
            stages.append(Stage(technique="int4"))
        return _none_if_empty(stages, name, settings, self)


def _none_if_empty(stages: list[Stage], name: str, settings: Settings, space: SearchSpace) -> Recipe | None:
    if not stages:
        return None
    return Recipe(name=name, description=describe_stages(stages), stages=stages, settings=settings)


def describe_stages(stages: list[Stage]) -> str:
    """A short line for tables: 'slim ratio 0.65 -> int8 dynamic'."""
    parts = []
    for s in stages:
        o = s.options
        if s.technique == "slim":
            what = f"ratio {o['ratio']:g}" if "ratio" in o else f"heads {o['heads']:g} ffn {o['ffn']:g}"
        elif s.technique == "distill":
            if o.get("student") == "mlp":
                what = "mlp " + "x".join(map(str, o["hidden"]))
            else:
                what = f"width {o['width']:g}" + (f" depth {o['depth']}" if "depth" in o else "")
                what += " separable" if o.get("blocks") == "separable" else ""
        elif s.technique == "prune":
            what = f"{o['sparsity']:.0%} {o['scope']}"
        elif s.technique == "factorize":
            what = f"rank {o['ratio']:g}" + (f" {len(o['layers'])} layers" if "layers" in o else "")
        elif s.technique == "int8":
            what = o["variants"][0] + (f" ({len(o['keep_float'])} float)" if o.get("keep_float") else "")
        elif s.technique == "kmeans":
            what = f"{o['bits']} bits"
        else:
            what = ""
        parts.append(f"{s.technique} {what}".strip())
    return " -> ".join(parts)


def _recovery(prefix: str, when, transformer: bool, temperature: bool = True) -> list[Choice]:
    """Recovery (fine-tuning) hyper-parameters: learning rate, epochs, distillation temperature
    of the recovery loss, and an L1 penalty toward small weights (not for students)."""
    if transformer:  # an epoch of MiniLM on 192 sentences takes 30-60 s on 2 cores
        out = [
            Choice(f"{prefix}.lr", (1e-4, 2e-4, 5e-4), when, "fine-tuning learning rate"),
            Choice(f"{prefix}.epochs", (2, 4), when, "fine-tuning epochs"),
        ]
    else:
        out = [
            Choice(f"{prefix}.lr", (3e-4, 1e-3, 3e-3), when, "fine-tuning learning rate"),
            Choice(f"{prefix}.epochs", (30, 60, 120), when, "fine-tuning epochs"),
        ]
    if temperature:
        out.append(Choice(f"{prefix}.temperature", (1.0, 2.0, 4.0), when, "temperature of the recovery loss"))
    if prefix in ("slim", "prune") and not transformer:
        out.append(
            Choice(f"{prefix}.l1", (0.0, 1e-5, 1e-4), when, "L1 penalty on the weights while fine-tuning")
        )
    return out


def _recovery_options(prefix: str, p: dict) -> dict:
    keys = {"lr": "lr", "epochs": "epochs", "temperature": "temperature", "l1": "l1"}
    return {opt: p[f"{prefix}.{k}"] for k, opt in keys.items() if f"{prefix}.{k}" in p}


def _factorizable(module) -> list[str]:
    """Linear / Conv layers of a small model, but the last one (the output layer, where a
    low rank costs the most), each with its own factorize choice; none above PER_LAYER_MAX."""
    from torch import nn

    names = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    names = names[:-1]
    return names if 1 < len(names) <= PER_LAYER_MAX else []


def _has_spatial_conv(module) -> bool:
    from torch import nn

    if module is None:
        return False
    return any(
        isinstance(m, (nn.Conv1d, nn.Conv2d))
        and m.groups == 1
        and m.in_channels > 1
        and min(m.kernel_size) > 1
        for m in module.modules()
    )


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
