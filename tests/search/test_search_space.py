"""The search space and the front, without training: Pareto front against a brute-force
reference, the picks' orders, constraints, the choices each example gets, the recipes random
points spell, the grid sampler's coarse grid, --techniques errors and the warm starts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

import presso
from presso.errors import PressoError
from presso.recipe.runner import prepare
from presso.recipe.schema import Settings
from presso.search.front import PICKS, dominates, near_front, ordered, pareto_front
from presso.search.samplers import warm_starts
from presso.search.space import SearchSpace, families
from presso.search.trial import Constraints
from presso.techniques.registry import techniques as registered

TORCH_FAMILIES = ("slim", "distill", "prune", "lowrank", "int8", "kmeans")
HYPER = ("lr", "epochs", "temperature", "l1", "alpha", "scope")


def _pt(drop, latency, size, name=""):
    return {"drop": drop, "latency_ms": latency, "size_bytes": size, "name": name}


# ------------------------------------------------------------------ front


def _brute_front(points):
    """Indices of the points no other point beats: <= on all three objectives, < on one."""
    keys = ("drop", "latency_ms", "size_bytes")
    keep = []
    for i, p in enumerate(points):
        beaten = False
        for j, q in enumerate(points):
            if i != j and all(q[k] <= p[k] for k in keys) and any(q[k] < p[k] for k in keys):
                beaten = True
                break
        if not beaten:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pareto_front_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Few distinct values per objective: many ties and exact duplicates.
    points = [
        _pt(float(rng.integers(0, 5)) / 100, float(rng.integers(0, 6)), int(rng.integers(0, 6)), str(i))
        for i in range(200)
    ]
    expected = _brute_front(points)
    front = pareto_front(points)
    assert [p["name"] for p in front] == [points[i]["name"] for i in expected]
    assert all(f is points[int(f["name"])] for f in front)  # the same dicts, in input order
    assert 1 <= len(front) < 200
    # Every point off the front is dominated by a point on it (dominance is transitive).
    off = [p for p in points if not any(p is f for f in front)]
    assert off and all(any(dominates(f, p) for f in front) for p in off)


def test_pareto_front_hand_cases():
    a, b = _pt(0.0, 1.0, 100, "a"), _pt(0.0, 1.0, 100, "b")  # equal: neither dominates, both stay
    worse = _pt(0.0, 1.0, 101, "worse")  # equal on two, worse on one: dropped
    trade = _pt(0.02, 0.5, 100, "trade")  # worse drop, faster: stays
    dominated = _pt(0.03, 2.0, 200, "dominated")
    assert [p["name"] for p in pareto_front([a, worse, b, trade, dominated])] == ["a", "b", "trade"]
    assert pareto_front([]) == []
    assert pareto_front([worse]) == [worse]
    assert not dominates(a, b) and not dominates(b, a) and dominates(a, worse) and not dominates(worse, a)


def test_near_front_keeps_points_beaten_only_within_the_latency_noise():
    # The digits case: slim's trial timing put it 5% behind a smaller, more faithful model
    # that was really 25% slower; only timing them together can tell.
    slim, dc = _pt(0.006, 0.0203, 19829, "slim"), _pt(0.004, 0.0194, 17373, "dc")
    far = _pt(0.006, 0.0300, 19829, "far")  # 55% slower than dc: beaten for sure
    trade = _pt(0.0, 0.0400, 50000, "trade")  # better drop than anything: on the front
    points = [slim, dc, far, trade]
    assert [p["name"] for p in pareto_front(points)] == ["dc", "trade"]
    assert [p["name"] for p in near_front(points, 0.3)] == ["slim", "dc", "trade"]
    assert [p["name"] for p in near_front(points, 0.6)] == ["slim", "dc", "far", "trade"]
    assert [p["name"] for p in near_front(points, 0.0)] == ["dc", "trade"]


@pytest.mark.parametrize("seed", [0, 1])
def test_near_front_holds_the_front_and_grows_with_the_noise(seed):
    rng = np.random.default_rng(seed)
    points = [
        _pt(float(rng.integers(0, 4)) / 100, float(rng.uniform(1, 3)), int(rng.integers(0, 6)), str(i))
        for i in range(120)
    ]
    front = {p["name"] for p in pareto_front(points)}
    previous = front
    for noise in (0.0, 0.05, 0.2, 0.5, 2.0):
        near = {p["name"] for p in near_front(points, noise)}
        assert previous <= near  # the front first, then more as the noise grows
        previous = near
        for p in points:  # off it: beaten by a point at least as good on drop and size, faster by more
            if p["name"] not in near:
                assert any(
                    q["drop"] <= p["drop"]
                    and q["size_bytes"] <= p["size_bytes"]
                    and q["latency_ms"] * (1 + noise) < p["latency_ms"]
                    for q in points
                )
    assert len(previous) > len(front)


FRONT = [
    _pt(0.0, 2.0, 100, "A"),
    _pt(0.0, 1.0, 300, "B"),
    _pt(0.01, 1.0, 200, "C"),
    _pt(0.02, 3.0, 50, "D"),
    _pt(0.03, 2.5, 50, "E"),
]


@pytest.mark.parametrize(
    "pick, names",
    [
        ("quality", "BACDE"),  # drop 0 for A and B: the faster B first
        ("latency", "BCAED"),  # 1.0 ms for B and C: the smaller drop (B) first
        ("size", "EDACB"),  # 50 bytes for D and E: the faster E first
        # ln(latency / 1) / ln 3 + ln(size / 50) / ln 6, then drop:
        # C 0 + ln4/ln6 = 0.774, E ln2.5/ln3 + 0 = 0.834, B 0 + 1 = 1 (drop 0), D 1 + 0 = 1 (drop 0.02),
        # A ln2/ln3 + ln2/ln6 = 1.018
        ("balanced", "CEBDA"),
    ],
)
def test_ordered_picks_with_their_tie_breaks(pick, names):
    out = ordered(FRONT, pick)
    assert "".join(p["name"] for p in out) == names
    assert sorted(map(id, out)) == sorted(map(id, FRONT))  # a permutation, nothing added or lost


def test_ordered_first_is_the_minimum_of_its_key_on_random_fronts():
    rng = np.random.default_rng(3)
    points = [
        _pt(float(rng.integers(0, 4)) / 100, float(rng.integers(0, 4)), int(rng.integers(0, 4)), str(i))
        for i in range(60)
    ]
    front = pareto_front(points)
    keys = {
        "quality": ("drop", "latency_ms", "size_bytes"),
        "latency": ("latency_ms", "drop", "size_bytes"),
        "size": ("size_bytes", "latency_ms", "drop"),
    }
    for pick, order in keys.items():
        best = min(tuple(p[k] for k in order) for p in front)
        assert tuple(ordered(front, pick)[0][k] for k in order) == best


def test_balanced_ties_break_on_drop_and_a_flat_objective_counts_zero():
    x, y = _pt(0.0, 1.0, 7, "x"), _pt(0.5, 2.0, 7, "y")  # same size: the faster x first whatever its drop
    assert [p["name"] for p in ordered([y, x], "balanced")] == ["x", "y"]
    u, v = _pt(0.2, 1.0, 7, "u"), _pt(0.1, 1.0, 7, "v")  # every objective flat but drop: drop decides
    assert [p["name"] for p in ordered([u, v], "balanced")] == ["v", "u"]
    single = [_pt(0.5, 3.0, 9, "only")]
    assert ordered(single, "balanced") == single


def test_ordered_rejects_an_unknown_pick():
    assert PICKS == ("quality", "latency", "size", "balanced")
    with pytest.raises(ValueError, match="pick must be one of"):
        ordered(FRONT, "fastest")


# ------------------------------------------------------------------ constraints


def test_constraints_drop_only():
    c = Constraints(max_drop=0.01)
    v = c.violations({"drop": 0.025, "latency_ms": 1e6, "size_bytes": 10**12})
    assert list(v) == ["max_drop"]
    assert_allclose(v["max_drop"], 0.015, rtol=0, atol=1e-15)
    assert not c.met({"drop": 0.025, "latency_ms": 1.0, "size_bytes": 1})
    assert c.met({"drop": 0.01, "latency_ms": 1e6, "size_bytes": 10**12})  # at the limit: met
    assert c.met({"drop": -0.02, "latency_ms": 1.0, "size_bytes": 1})  # better than the baseline
    assert not c.met({"drop": 0.0101, "latency_ms": 1.0, "size_bytes": 1})


def test_constraints_with_latency_and_size_limits():
    c = Constraints(max_drop=0.01, max_latency_ms=2.0, max_size_bytes=1000)
    v = c.violations({"drop": 0.0, "latency_ms": 2.5, "size_bytes": 900})
    assert list(v) == ["max_drop", "max_latency_ms", "max_size_bytes"]
    assert_allclose([v["max_drop"], v["max_latency_ms"], v["max_size_bytes"]], [-0.01, 0.5, -100], atol=1e-12)
    assert not c.met({"drop": 0.0, "latency_ms": 2.5, "size_bytes": 900})  # too slow
    assert not c.met({"drop": 0.0, "latency_ms": 1.0, "size_bytes": 1001})  # too big
    assert not c.met({"drop": 0.02, "latency_ms": 1.0, "size_bytes": 900})  # too inaccurate
    assert c.met({"drop": 0.01, "latency_ms": 2.0, "size_bytes": 1000})  # every limit reached exactly
    only_size = Constraints(max_drop=0.05, max_size_bytes=10)
    assert list(only_size.violations({"drop": 0.0, "latency_ms": 9.0, "size_bytes": 11})) == [
        "max_drop",
        "max_size_bytes",
    ]


# ------------------------------------------------------------------ spaces of the examples


@pytest.fixture(scope="module")
def _cache(tmp_path_factory):
    """The examples' cache of this test session (conftest's), for module-scoped fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRESSO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "presso-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module", params=["tabular", "digits"])
def prepared(request, _cache):
    ex = presso.load_example(request.param)
    done = prepare(ex.model, ex.data, task=ex.task)
    done.example = request.param
    yield done
    done.close()


def _linear_layers(module):
    from torch import nn

    return [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def test_torch_examples_get_the_torch_families_and_their_choices(prepared):
    space = SearchSpace.for_model(prepared)
    names = [c.name for c in space.choices]
    assert space.kind == "torch"
    assert space.families == TORCH_FAMILIES
    assert len(names) == len(set(names))
    assert dict(zip(names, [c.values for c in space.choices], strict=True))["structure"] == (
        "none",
        "slim",
        "distill",
    )
    for name in (
        "slim.ratio",
        "distill.width",
        "prune",
        "prune.sparsity",
        "lowrank",
        "lowrank.ratio",
        "weights",
        "int8.variant",
        "kmeans.bits",
    ):
        assert name in names
    assert space.grid()["weights"] == ["fp32", "int8", "kmeans"]
    # transformer-only and callable-only choices are absent
    assert not {"slim.heads", "slim.ffn", "distill.depth", "distill.hidden"} & set(names)
    # digits has a 3x3 convolution with more than one input channel: a separable student is possible
    assert ("distill.blocks" in names) == (prepared.example == "digits")
    # every factorizable layer but the output one gets its own choice (small models)
    layers = _linear_layers(prepared.run.model.module)[:-1]
    assert 1 < len(layers) <= 8
    assert space.layers == layers
    assert [n for n in names if n.startswith("lowrank.layer.")] == [f"lowrank.layer.{n}" for n in layers]
    assert not space.onnx_nodes and not any(".float." in n for n in names)


class _RandomTrial:
    """A stand-in for an Optuna trial: each asked choice drawn uniformly."""

    def __init__(self, rng):
        self.rng, self.asked = rng, []

    def suggest_categorical(self, name, values):
        self.asked.append(name)
        return values[int(self.rng.integers(len(values)))]


def _expected_techniques(space, p) -> list[str]:
    """The stages a point should spell, worked out from the point alone."""
    out = {"slim": ["slim"], "distill": ["distill"]}.get(p.get("structure", "none"), [])
    if p.get("prune"):
        out.append("prune")
    per_layer = [p[f"lowrank.layer.{n}"] for n in space.layers if f"lowrank.layer.{n}" in p]
    if p.get("lowrank") and (not per_layer or any(per_layer)):
        out.append("factorize")
    out += {"int8": ["int8"], "kmeans": ["kmeans"]}.get(p.get("weights", "fp32"), [])
    return out


def test_random_points_spell_valid_recipes(prepared):
    space = SearchSpace.for_model(prepared)
    rng = np.random.default_rng(0)
    settings = Settings(task=prepared.run.task, max_drop=0.01, seed=0)
    order = [c.name for c in space.choices]
    seen, empty = set(), 0
    for i in range(300):
        trial = _RandomTrial(rng)
        p = space.suggest(trial)
        assert trial.asked == list(p) and trial.asked == [n for n in order if n in p]  # pipeline order
        assert space.active(p) == p  # suggest asks only what matters
        # a value for a choice that does not matter changes nothing
        padded = {c.name: c.values[-1] for c in space.choices} | p
        assert space.active(padded) == p
        recipe = space.recipe(p, f"trial-{i}", settings)
        expected = _expected_techniques(space, p)
        if not expected:
            assert recipe is None, p
            empty += 1
            continue
        assert recipe is not None, p
        assert space.recipe(padded, f"trial-{i}", settings) == recipe
        techniques = [s.technique for s in recipe.stages]
        assert techniques == expected, p
        seen.update(techniques)
        configs = recipe.configs()  # every option validates
        for (_tech, config), stage in zip(configs, recipe.stages, strict=True):
            assert set(stage.options) <= set(type(config).model_fields), stage
        domains = [registered()[t].domain for t in techniques]
        assert domains == sorted(domains, key=lambda d: d != "torch"), techniques  # torch before ONNX
        for stage in recipe.stages:
            if stage.technique in ("slim", "prune", "distill"):
                assert stage.options["backoff"] == 0
        assert recipe.settings == settings and recipe.description
    assert seen == {"slim", "distill", "prune", "factorize", "int8", "kmeans"}
    assert 0 < empty < 60


def test_lowrank_with_no_layer_chosen_keeps_the_later_stages(prepared):
    """A point that factorizes no layer still runs its weights format (it used to spell no recipe)."""
    space = SearchSpace.for_model(prepared)
    p = {
        "structure": "none",
        "prune": False,
        "lowrank": True,
        "lowrank.ratio": 0.25,
        **{f"lowrank.layer.{n}": False for n in space.layers},
        "weights": "int8",
        "int8.variant": "dynamic",
    }
    recipe = space.recipe(p, "t", Settings())
    assert [(s.technique, s.options) for s in recipe.stages] == [("int8", {"variants": ["dynamic"]})]
    p[f"lowrank.layer.{space.layers[0]}"] = True
    recipe = space.recipe(p, "t", Settings())
    assert [s.technique for s in recipe.stages] == ["factorize", "int8"]
    assert recipe.stages[0].options == {"ratio": 0.25, "layers": [space.layers[0]]}
    assert recipe.stages[0].optional


def _distinct_active_points(space, grid) -> int:
    """How many different active points the grid holds (what a grid search can visit):
    walk the choices in order, branching only on those that matter."""
    points = [{}]
    for choice in space.choices:
        points = [
            q
            for p in points
            for q in ([p | {choice.name: v} for v in grid[choice.name]] if choice.when(p) else [p])
        ]
    assert len({tuple(p.items()) for p in points}) == len(points)
    return len(points)


def test_coarse_grid_holds_hyper_parameters_and_per_layer_choices(prepared):
    space = SearchSpace.for_model(prepared)
    grid, full = space.coarse_grid(), space.grid()
    assert list(grid) == [c.name for c in space.choices]  # every key is a choice name
    for name, values in grid.items():
        assert set(values) <= set(full[name]) and values
        if name.rsplit(".", 1)[-1] in HYPER:
            assert values == [full[name][len(full[name]) // 2]], name  # the middle value
        elif name.startswith("lowrank.layer."):
            assert values == [True], name  # lowrank in the grid factorizes every layer
        else:
            assert values == full[name], name  # main choices: every value
    assert grid["slim.lr"] == [1e-3] and grid["slim.epochs"] == [60] and grid["prune.scope"] == ["layer"]
    # the grid's lowrank points do factorize (a per-layer "False" would make lowrank=True a no-op)
    p = {n: v[0] for n, v in grid.items()} | {
        "structure": "none",
        "prune": False,
        "lowrank": True,
        "weights": "fp32",
    }
    assert [s.technique for s in space.recipe(p, "t", Settings()).stages] == ["factorize"]


@pytest.mark.parametrize("prepared", ["digits"], indirect=True)
def test_coarse_grid_distinct_points_for_digits(prepared):
    space = SearchSpace.for_model(prepared)
    grid = space.coarse_grid()
    # structure: none 1 + slim 8 ratios + distill 6 widths x 2 blocks = 21; prune (5 sparsities)
    # or not, and then lowrank (3 ratios) or not = 5 + 4 = 9; fp32 1 + int8 3 + kmeans 4 = 8
    assert _distinct_active_points(space, grid) == 21 * 9 * 8
    # the grid sampler enqueues exactly those points, not the product of every choice
    points = space.grid_points()
    assert len(points) == 21 * 9 * 8 and len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all(space.active(p) == p for p in points)
    with pytest.raises(PressoError, match="more than 100 points"):
        space.grid_points(limit=100)
    assert math.prod(len(v) for v in grid.values()) == 3 * 8 * 6 * 2 * 2 * 5 * 2 * 3 * 3 * 3 * 4


def test_techniques_subset_and_errors(prepared):
    space = SearchSpace.for_model(prepared, ["kmeans", "int8"])
    assert space.families == ("int8", "kmeans")  # in pipeline order whatever the order given
    assert [c.name for c in space.choices] == ["weights", "int8.variant", "kmeans.bits"]
    assert space.grid()["weights"] == ["fp32", "int8", "kmeans"]
    only_slim = SearchSpace.for_model(prepared, ["slim"])
    assert [c.name for c in only_slim.choices][:2] == ["structure", "slim.ratio"]
    assert only_slim.grid()["structure"] == ["none", "slim"]
    assert not any(c.name.startswith(("prune", "lowrank", "weights", "distill")) for c in only_slim.choices)

    with pytest.raises(
        PressoError,
        match=r"Unknown technique family 'quantum' for --techniques\. "
        r"Allowed: " + ", ".join(families()),
    ):
        SearchSpace.for_model(prepared, ["int8", "quantum"])
    with pytest.raises(PressoError, match=r"Unknown technique families 'a', 'b'"):
        SearchSpace.for_model(prepared, ["a", "b"])
    with pytest.raises(
        PressoError,
        match=r"--techniques int4 cannot apply to this PyTorch model\. For this "
        r"model choose from: slim, distill, prune, lowrank, int8, kmeans\.",
    ):
        SearchSpace.for_model(prepared, ["int8", "int4"])


def test_warm_starts_are_points_of_the_space(prepared):
    space = SearchSpace.for_model(prepared)
    values = {c.name: c.values for c in space.choices}
    points = warm_starts(space)
    recipes = []
    for point in points:
        assert set(point) <= set(values)
        assert all(v in values[k] for k, v in point.items()), point
        assert space.active(point) == point  # nothing the point does not use
        recipe = space.recipe(point, "warm", Settings())
        recipe.configs()
        recipes.append([s.technique for s in recipe.stages])
    # the built-in recipes' points: slim, int8 (static, not transformer), a student then int8,
    # sparse, deep-compression (prune then k-means), k-means
    assert recipes == [["slim"], ["int8"], ["distill", "int8"], ["prune"], ["prune", "kmeans"], ["kmeans"]]
    assert points[0]["slim.ratio"] == 0.65 and points[1]["int8.variant"] == "static-s8s8"
    assert points[2]["distill.width"] == 0.45

    subset = SearchSpace.for_model(prepared, ["int8"])
    assert warm_starts(subset) == [{"weights": "int8", "int8.variant": "static-s8s8"}]
    assert warm_starts(SearchSpace.for_model(prepared, ["kmeans"])) == [
        {"weights": "kmeans", "kmeans.bits": 4}
    ]


def test_transformer_students_keep_a_share_of_the_layers():
    from presso.techniques.contract import SpaceModel
    from presso.techniques.distill.search import DISTILL

    model = SpaceModel(kind="transformer")
    choices = {c.name: c.values for c in DISTILL.choices(model, lambda values: True)}
    assert choices["distill.depth"] == (0.34, 0.5, 0.67, 0.83, 1.0)
    base = {"distill.width": 1.0, "distill.temperature": 4.0, "distill.alpha": 1.0}
    values = {**base, **{c: v[0] for c, v in choices.items() if c not in base and c != "distill.depth"}}
    shallow = DISTILL.options({**values, "distill.depth": 0.67}, model)
    whole = DISTILL.options({**values, "distill.depth": 1.0}, model)
    assert shallow["depth"] == 0.67 and "depth" not in whole
    assert DISTILL.describe(shallow) == "width 1 depth 0.67"
    # the options make a valid distill config, depth as a fraction
    from presso.techniques.distill.config import DistillConfig

    assert DistillConfig(**shallow).depth == 0.67
