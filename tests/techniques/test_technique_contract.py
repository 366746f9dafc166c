"""The technique contract: a technique registered in its own module is usable from a recipe,
from the Python API's typed configs and from the search, with no edit anywhere else."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

import presso
from presso.errors import PressoError
from presso.measure import BenchSettings
from presso.recipe.schema import Recipe, Settings, Stage, load_recipe
from presso.search.space import SearchSpace, describe_stages, families
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import Choice, SearchEntry, technique, unregister
from presso.techniques.quantization.config import Int8Config
from presso.techniques.registry import get_technique, techniques

QUICK = BenchSettings(rounds=1, throughput_batch=8)


class IdentityConfig(BaseModel):
    """A toy technique: copies the model unchanged (``copies`` times, the last one kept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    copies: int = Field(default=1, ge=1)


SEEN: list[dict] = []  # what each call of the stage saw


def identity(model: Path | None, cfg: IdentityConfig, ctx: StageContext) -> StageResult:
    assert model is not None
    SEEN.append({"copies": cfg.copies, "transformer": ctx.transformer})
    dst = ctx.workdir / "identity.onnx"
    for _ in range(cfg.copies):
        shutil.copyfile(model, dst)
    cand = Candidate(f"identity x{cfg.copies}", dst, score=ctx.score(dst))
    return StageResult(ranked=[cand], tried=[cand], notes=[f"identity: {cfg.copies} copies"])


IDENTITY_SEARCH = SearchEntry(
    family="identity",
    slot="optional",
    kinds=frozenset({"torch", "onnx"}),
    order=45,  # after low-rank factors, before the weights format
    choices=lambda model, on: [Choice("identity.copies", (1, 2), on, "copies made")],
    options=lambda values, model: {"copies": values["identity.copies"]},
    describe=lambda o: f"x{o['copies']}",
    summary="copy the model (a test technique)",
)


@pytest.fixture
def prepared_mlp(mlp_project):
    from presso.recipe.run import prepare

    done = prepare(mlp_project["model"], (mlp_project["x"], mlp_project["y"]), bench=QUICK)
    yield done
    done.close()


@pytest.fixture
def identity_registered():
    techniques()  # the built-in ones first, as a plugin would come after them
    technique(
        "identity", config=IdentityConfig, domain="onnx", summary="copies the model", search=IDENTITY_SEARCH
    )(identity)
    SEEN.clear()
    yield
    unregister("identity")


def test_a_registered_technique_runs_from_a_recipe_and_its_typed_config(identity_registered, mlp_project):
    assert get_technique("identity").run is identity
    recipe = Recipe(name="toy", stages=[Stage(technique="identity", options={"copies": 2})])
    result = presso.compress(
        mlp_project["model"], recipe, data=(mlp_project["x"], mlp_project["y"]), bench=QUICK
    )
    assert result.report.stages[0].technique == "identity"
    assert result.report.stages[0].chosen == "identity x2"
    assert result.report.budget.drop == 0.0  # an unchanged model loses nothing
    assert "identity: 2 copies" in result.report.notes
    assert result.recipe.stages[0].options == {"copies": 2}  # pinned in recipe.yaml as run
    # The same stage from the typed config, as the Python API takes it.
    typed = load_recipe([IdentityConfig(copies=3), Int8Config(variants=["dynamic"])])
    assert [s.technique for s in typed.stages] == ["identity", "int8"]
    assert typed.stages[0].options == {"copies": 3}
    assert typed.stages[1].options == {"variants": ["dynamic"]}
    assert SEEN == [{"copies": 2, "transformer": None}]


def test_a_registered_technique_joins_the_search_space(identity_registered, prepared_mlp):
    assert families() == ("slim", "distill", "prune", "lowrank", "identity", "int8", "kmeans", "int4")
    space = SearchSpace.for_model(prepared_mlp)
    names = [c.name for c in space.choices]
    assert names.index("lowrank.ratio") < names.index("identity") < names.index("weights")
    assert names[names.index("identity") + 1] == "identity.copies"
    point = {"identity": True, "identity.copies": 2, "weights": "int8", "int8.variant": "dynamic"}
    recipe = space.recipe(point, "trial-0", Settings())
    assert recipe is not None
    assert [(s.technique, s.options) for s in recipe.stages] == [
        ("identity", {"copies": 2}),
        ("int8", {"variants": ["dynamic"]}),
    ]
    assert describe_stages(recipe.stages) == "identity x2 -> int8 dynamic"
    off = space.recipe({"identity": False, "weights": "fp32"}, "trial-1", Settings())
    assert off is None  # nothing chosen: no recipe
    only = SearchSpace.for_model(prepared_mlp, ["identity"])
    assert [c.name for c in only.choices] == ["identity", "identity.copies"]


def test_unregistered_configs_and_names_are_refused_with_the_choices():
    class Stray(BaseModel):
        x: int = 1

    with pytest.raises(
        PressoError, match=r"recipe stage 1: Stray is not a technique config\. Use one of .*Int8Config"
    ):
        load_recipe([Stray()])
    with pytest.raises(PressoError, match=r"A recipe needs at least one stage"):
        load_recipe([])
    with pytest.raises(PressoError, match=r"Unknown technique 'nope'\. Available: int8, "):
        get_technique("nope")


def test_a_technique_registered_twice_by_different_code_is_refused(identity_registered):
    def other(model, cfg, ctx):  # pragma: no cover - never runs
        raise AssertionError

    with pytest.raises(PressoError, match="registered twice"):
        technique("identity", config=IdentityConfig, domain="onnx", summary="x")(other)
    assert get_technique("identity").run is identity


def test_stages_see_the_shape_earlier_stages_returned_and_the_model_keeps_its_own(mlp_project, tmp_path):
    """A stage that changes a transformer's shape returns it on its candidate; the next stage's
    context gets that shape (a copy), and the loaded model's own description is untouched."""
    from presso.recipe.run import prepare
    from presso.recipe.runner import run_stages

    def reshape(model, cfg, ctx):
        SEEN.append({"copies": cfg.copies, "transformer": ctx.transformer})
        ctx.transformer["num_heads"] = -1  # a stage scribbling on its context changes nothing
        dst = ctx.workdir / "same.onnx"
        shutil.copyfile(model, dst)
        cand = Candidate(
            "reshaped", dst, score=ctx.score(dst), transformer={"num_heads": 6, "hidden_size": 192}
        )
        return StageResult(ranked=[cand], tried=[cand])

    technique("reshape", config=IdentityConfig, domain="onnx", summary="test")(reshape)
    SEEN.clear()
    prepared = prepare(mlp_project["model"], (mlp_project["x"], mlp_project["y"]), bench=QUICK)
    try:
        described = {"model_type": "bert", "num_heads": 12, "hidden_size": 384}
        prepared.run.model.transformer = dict(described)
        recipe = Recipe(
            name="two", stages=[Stage(technique="reshape"), Stage(technique="reshape", options={"copies": 2})]
        )
        done = run_stages(prepared.run, recipe, prepared.baseline, seed=0)
        assert SEEN[0]["transformer"] == {"model_type": "bert", "num_heads": -1, "hidden_size": 384}
        assert SEEN[1]["transformer"] == {"num_heads": -1, "hidden_size": 192}
        assert [o.transformer for o in done.outcomes] == [{"num_heads": 6, "hidden_size": 192}] * 2
        assert prepared.run.model.transformer == described
        assert np.isfinite(done.metrics[prepared.run.primary])
    finally:
        unregister("reshape")
        prepared.close()


def test_run_settings_are_one_object_for_compress_and_distill(monkeypatch):
    settings = presso.RunSettings(max_drop=0.02, seed=3)
    assert presso.RunSettings.of(settings, {"seed": 5}, "compress") == presso.RunSettings(
        max_drop=0.02, seed=5
    )
    with pytest.raises(
        ValueError, match=r"compress\(\) got an unknown option 'max_dorp' \(did you mean 'max_drop'\?\)"
    ):
        presso.compress(None, "int8", max_dorp=0.1)
    # distill's keywords are run settings or options of the distill technique, told apart by name
    calls = []
    monkeypatch.setattr("presso.recipe.runner.compress", lambda *a, **k: calls.append((a, k)))
    presso.distill("teacher.onnx", "rows.npz", settings=settings, seq_len=64, width=0.5, int8=True)
    ((args, kwargs),) = calls
    assert kwargs["settings"] == presso.RunSettings(max_drop=0.02, seed=3, seq_len=64)
    recipe = args[1]
    assert [(s.technique, s.options) for s in recipe.stages] == [
        ("distill", {"student": "auto", "width": 0.5}),
        ("int8", {}),
    ]
