"""Recipe files: every mistake is one line naming the file, the stage, the key and what is allowed;
the built-in recipes load; the CLI lists and prints them and refuses a bad recipe up front."""

from __future__ import annotations

import types

import pytest
import torch

import presso
from presso.cli.main import main
from presso.errors import PressoError
from presso.model.sources import load_model
from presso.recipe.order import check_stage_order
from presso.recipe.schema import BUILTIN_DIR, Recipe, Stage, builtin_names, builtin_path, load_recipe
from presso.techniques.registry import techniques


def _error(tmp_path, text: str, name: str = "bad.yaml") -> str:
    """The one-line message load_recipe raises for a recipe file holding ``text``."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PressoError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))  # names the file first
    return msg


def _stages(*lines: str) -> str:
    return "name: r\nstages:\n" + "".join(f"{line}\n" for line in lines)


# (recipe text, parts the message must contain, in this order)
CASES = {
    "technique typo": (
        _stages("  - technique: int8", "  - technique: prnue"),
        [
            ", stage 2: unknown technique 'prnue' (did you mean 'prune'?). ",
            "Allowed: " + ", ".join(techniques()) + ".",
        ],
    ),
    "option typo": (
        _stages("  - technique: prune", "    options: {sparsty: 0.5}"),
        [
            ", stage 1 'prune': unknown option 'sparsty' (did you mean 'sparsity'?). Allowed options: ",
            " pattern, sparsity, n, m, criterion, ",
        ],
    ),
    "wrong type": (
        _stages("  - technique: prune", "    options: {epochs: many}"),
        [
            ", stage 1 'prune': option 'epochs': ",
            "(got 'many'). ",
            "Allowed: an integer >= 0 and <= 1000 (or null).",
        ],
    ),
    "above the upper bound": (
        _stages("  - technique: prune", "    options: {epochs: 1001}"),
        [
            ", stage 1 'prune': option 'epochs': Input should be less than or equal to 1000 (got 1001). ",
            "Allowed: an integer >= 0 and <= 1000 (or null).",
        ],
    ),
    "fraction for an integer": (
        _stages("  - technique: prune", "    options: {epochs: 2.5}"),
        ["option 'epochs': Input should be a valid integer, got a number with a fractional part (got 2.5)."],
    ),
    "out of range": (
        _stages("  - technique: prune", "    options: {sparsity: 1.5}"),
        [
            ", stage 1 'prune': option 'sparsity': Input should be less than 1 (got 1.5). ",
            "Allowed: a number >= 0 and < 1; default 0.9.",
        ],
    ),
    "literal": (
        _stages("  - technique: prune", "    options: {criterion: biggest}"),
        [
            ", stage 1 'prune': option 'criterion': ",
            "(got 'biggest'). ",
            "Allowed: 'magnitude', 'taylor', 'random'; default 'magnitude'.",
        ],
    ),
    "optional literal": (
        _stages("  - technique: prune", "    options: {schedule: fast}"),
        ["option 'schedule': ", "(got 'fast'). Allowed: 'one-shot', 'iterative', 'gradual' (or null)."],
    ),
    "union": (
        _stages("  - technique: int8", "    options: {variants: fastest}"),
        [
            ", stage 1 'int8': option 'variants': not an allowed value (got 'fastest'). ",
            (
                "Allowed: 'auto' or a list of 'dynamic', 'dynamic-smooth', 'dynamic-reduce-range', "
                "'static-s8s8', 'static-u8s8'; default 'auto'."
            ),
        ],
    ),
    "union list member": (
        _stages("  - technique: int8", "    options: {variants: [dynamic, fastest]}"),
        [
            "option 'variants': not an allowed value (got ['dynamic', 'fastest']). ",
            "Allowed: 'auto' or a list of ",
        ],
    ),
    "validator": (
        _stages("  - technique: int4", "    options: {group_size: 1}"),
        [
            ", stage 1 'int4': option 'group_size': group_size must be 'auto' or an int in [2, 4096] (got 1). ",
            "Allowed: 'auto' or an integer; default 'auto'.",
        ],
    ),
    "keep_zeros not a bool": (
        _stages("  - technique: kmeans", "    options: {keep_zeros: maybe}"),
        [", stage 1 'kmeans': option 'keep_zeros': ", "(got 'maybe'). Allowed: true or false; default True."],
    ),
    "keep_if": (
        _stages("  - technique: int8", "    keep_if: quicker"),
        [
            ": stage 1: key 'keep_if': ",
            "(got 'quicker'). Allowed: 'always', 'faster', 'smaller'; default 'always'.",
        ],
    ),
    "optional": (
        _stages("  - technique: int8", "    optional: maybe"),
        [": stage 1: key 'optional': ", "(got 'maybe'). Allowed: true or false; default False."],
    ),
    "stage key typo": (
        _stages("  - technique: int8", "  - technique: int4", "    optoins: {}"),
        [
            ": stage 2: unknown key 'optoins' (did you mean 'options'?). ",
            "Allowed keys: technique, options, optional, keep_if.",
        ],
    ),
    "options not a mapping": (
        _stages("  - technique: int8", "    options: [1, 2]"),
        [": stage 1: key 'options': Input should be a valid dictionary (got [1, 2]). Allowed: a mapping."],
    ),
    "technique missing": (
        _stages("  - options: {}"),
        [": stage 1: key 'technique' is required. Allowed: a string."],
    ),
    "stage not a mapping": (
        _stages("  - int8"),
        [": stage 1: must be a mapping with 'technique' and 'options'."],
    ),
    "top-level typo": (
        "name: r\nstagse:\n  - technique: int8\n",
        [
            ": unknown key 'stagse' (did you mean 'stages'?). ",
            "Allowed keys: presso_recipe, name, description, stages, settings.",
        ],
    ),
    "name missing": ("stages:\n  - technique: int8\n", [": key 'name' is required. Allowed: a string."]),
    "empty stages": (
        "name: r\nstages: []\n",
        [": key 'stages': List should have at least 1 item after validation, not 0 (got [])."],
    ),
    "negative max_drop": (
        _stages("  - technique: int8") + "settings: {max_drop: -1}\n",
        [
            ": settings: setting 'max_drop': Input should be greater than or equal to 0 (got -1). ",
            "Allowed: a number >= 0 (or null).",
        ],
    ),
    "settings typo": (
        _stages("  - technique: int8") + "settings: {max_dorp: 0.1}\n",
        [
            ": settings: unknown setting 'max_dorp' (did you mean 'max_drop'?). ",
            "Allowed settings: task, max_drop, metric, seed, calibration_fraction.",
        ],
    ),
    "calibration_fraction of 1": (
        _stages("  - technique: int8") + "settings: {calibration_fraction: 1}\n",
        [
            ": settings: setting 'calibration_fraction': Input should be less than 1 (got 1). ",
            "Allowed: a number > 0 and < 1 (or null).",
        ],
    ),
    "invalid YAML": ("name: r\nstages: [\n", [" is not valid YAML: while parsing a flow node"]),
    "a list, not a mapping": ("- technique: int8\n", [" must be a mapping with 'name' and 'stages'."]),
    "empty file": ("", [" must be a mapping with 'name' and 'stages'."]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_names_file_stage_key_and_allowed_values(tmp_path, case):
    text, parts = CASES[case]
    msg = _error(tmp_path, text)
    at = 0
    for part in parts:
        found = msg.find(part, at)
        assert found >= 0, f"{part!r} not in {msg!r} after position {at}"
        at = found + len(part)


def test_first_stage_error_wins_and_unknown_key_before_missing_key(tmp_path):
    # A typo makes 'name' look missing too: the typo is what the user must fix.
    msg = _error(tmp_path, "nmae: r\nstages:\n  - technique: int8\n")
    assert msg.endswith(
        ": unknown key 'nmae' (did you mean 'name'?). "
        "Allowed keys: presso_recipe, name, description, stages, settings."
    )
    msg = _error(
        tmp_path,
        _stages(
            "  - technique: int8",
            "    options: {variants: x}",
            "  - technique: prune",
            "    options: {sparsity: 2}",
        ),
    )
    assert ", stage 1 'int8': option 'variants'" in msg and "stage 2" not in msg


def test_model_level_validator_error_names_the_stage(tmp_path):
    msg = _error(tmp_path, _stages("  - technique: prune", "    options: {pattern: 'n:m', n: 4, m: 4}"))
    assert ", stage 1 'prune': " in msg
    assert "n:m pruning keeps n of every m weights, so n must be < m; got n=4, m=4 (e.g. n: 2, m: 4)" in msg


def test_option_typo_far_from_any_name_has_no_suggestion(tmp_path):
    msg = _error(tmp_path, _stages("  - technique: kmeans", "    options: {zzz: 1}"))
    assert msg.endswith(
        ", stage 1 'kmeans': unknown option 'zzz'. "
        "Allowed options: bits, per_channel, keep_zeros, seed, keep_float, precision."
    )
    assert "did you mean" not in msg


def test_missing_file_and_unknown_builtin(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PressoError, match=r"^Recipe file '.*nope\.yaml' not found\.$"):
        load_recipe(missing)
    with pytest.raises(PressoError) as info:
        load_recipe("nope")
    msg = str(info.value)
    assert msg.startswith("Unknown recipe 'nope'. Built-in recipes: 2:4, deep-compression, fast, ")
    assert msg.endswith("; or give the path of a recipe .yaml file.")


def test_data_given_where_the_recipe_goes_is_named():
    import numpy as np

    with pytest.raises(PressoError, match=r"got a ndarray\. Data goes third or by name"):
        load_recipe(np.zeros((400, 16)))  # compress(model, rows): once an OSError, 'File name too long'


def test_configs_errors_start_with_where_the_recipe_came_from():
    # load_recipe passes the file path or "built-in recipe 'NAME'" as ``where``.
    recipe = Recipe(name="r", stages=[Stage(technique="prune", options={"sparsity": 1.5})])
    with pytest.raises(PressoError, match=r"^built-in recipe 'x', stage 1 'prune': option 'sparsity'"):
        recipe.configs("built-in recipe 'x'")


def test_valid_file_round_trips(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text(
        _stages(
            "  - technique: prune",
            "    options: {sparsity: 0.5, epochs: 0}",
            "  - technique: kmeans",
            "    optional: true",
            "    keep_if: smaller",
            "    options: {bits: 3, keep_zeros: false}",
        )
        + "settings: {max_drop: 0.02, seed: 3}\n"
    )
    recipe = load_recipe(path)
    assert [(s.technique, s.optional, s.keep_if) for s in recipe.stages] == [
        ("prune", False, "always"),
        ("kmeans", True, "smaller"),
    ]
    (_, prune), (_, kmeans) = recipe.configs()
    assert (prune.sparsity, prune.epochs, kmeans.bits, kmeans.keep_zeros) == (0.5, 0, 3, False)
    assert (recipe.settings.max_drop, recipe.settings.seed) == (0.02, 3)
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert load_recipe(again) == recipe
    assert load_recipe(recipe) is recipe


# --- built-in recipes -----------------------------------------------------------------------


def test_every_builtin_recipe_loads_under_its_name():
    names = builtin_names()
    assert {"deep-compression", "fast", "int8", "kmeans", "sparse"} <= set(names)
    assert names == sorted(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert len(recipe.configs()) == len(recipe.stages) >= 1
        assert builtin_path(name).parent == BUILTIN_DIR
    assert builtin_path("2:4").name == "2-4.yaml"  # ':' cannot be in a file name


def test_deep_compression_is_prune_kmeans_pack():
    recipe = load_recipe("deep-compression")
    assert [s.technique for s in recipe.stages] == ["prune", "kmeans", "pack"]
    (_, prune), (_, kmeans), (_, pack) = recipe.configs()
    assert (prune.pattern, prune.sparsity, prune.criterion, prune.scope, prune.ramp_schedule) == (
        "unstructured",
        0.9,
        "magnitude",
        "global",
        "gradual",
    )
    assert (kmeans.bits, kmeans.keep_zeros, kmeans.per_channel) == (5, True, False)
    assert pack.model_dump() == {}
    assert all(not s.optional and s.keep_if == "always" for s in recipe.stages)


def test_fast_is_optional_encoder_student_slim_factorize_int8_kept_only_if_faster():
    recipe = load_recipe("fast")
    assert [(s.technique, s.optional, s.keep_if) for s in recipe.stages] == [
        ("distill", True, "faster"),
        ("slim", True, "always"),
        ("factorize", True, "faster"),
        ("int8", True, "faster"),
    ]
    (_, student), (_, slim), (_, factorize), (_, int8) = recipe.configs()
    assert (student.applies_to, student.depth, student.width, student.backoff) == ("encoders", 0.67, 1.0, 0)
    assert (slim.ratios, slim.heads, slim.ffn) == ([0.8, 0.7, 0.65, 0.5], 0.25, 0.5)
    assert (factorize.rank, factorize.pays) == ("speed", "speed")
    assert int8.variants == "auto"


@pytest.mark.parametrize("ratios", ["[0.5, 0.7]", "[0.8, 0.8]", "[1.2, 0.5]", "[0.5, 0]"])
def test_slim_ratios_must_be_fractions_boldest_first(tmp_path, ratios):
    msg = _error(tmp_path, _stages("  - technique: slim", f"    options: {{ratios: {ratios}}}"))
    assert ", stage 1 'slim': " in msg and "ratios must be fractions in (0, 1), boldest first" in msg


def test_slim_tries_the_ratios_in_order(monkeypatch):
    """The fractions slim hands to its backoff: the ratios as given (channels), or scaled from the
    configured heads / ffn (transformers)."""
    from presso.techniques.pruning import slim_stage
    from presso.techniques.pruning.config import SlimConfig

    seen = {}
    monkeypatch.setattr(
        slim_stage, "with_backoff", lambda fractions, *a, **k: seen.setdefault("f", fractions)
    )
    monkeypatch.setattr(slim_stage, "recovery_for", lambda ctx, cfg, name: types.SimpleNamespace(cfg=cfg))
    for transformer, expected in ((None, [0.8, 0.7, 0.5]), ({"heads": 12}, [0.5, 0.4375, 0.3125])):
        seen.clear()
        ctx = types.SimpleNamespace(module=None, transformer=transformer)
        slim_stage.slim(None, SlimConfig(ratios=[0.8, 0.7, 0.5]), ctx)
        assert seen["f"] == pytest.approx(expected)


# --- stage order (checked once the model is loaded) -----------------------------------------


@pytest.fixture(scope="module")
def tiny_torch_model():
    return load_model(torch.nn.Sequential(torch.nn.Linear(4, 2)))


@pytest.mark.parametrize(
    "techniques, stage",
    [
        (["pack"], 1),
        (["pack", "kmeans"], 1),
        (["kmeans", "pack", "int8"], 2),
        (["kmeans", "pack", "pack"], 2),
    ],
)
def test_pack_must_be_last_once_after_a_compressing_stage(tiny_torch_model, techniques, stage):
    recipe = Recipe(name="r", stages=[Stage(technique=t) for t in techniques])
    with pytest.raises(PressoError) as info:
        check_stage_order(recipe, recipe.configs(), tiny_torch_model)
    assert str(info.value) == (
        f"Recipe 'r' stage {stage} 'pack' stores the final model, so it must be the last stage, once, "
        "after a stage that compresses the model (or pass --packed to any recipe)."
    )


@pytest.mark.parametrize("techniques", [["kmeans", "pack"], ["prune", "kmeans", "pack"], ["prune", "int8"]])
def test_valid_orders_pass(tiny_torch_model, techniques):
    recipe = Recipe(name="r", stages=[Stage(technique=t) for t in techniques])
    assert check_stage_order(recipe, recipe.configs(), tiny_torch_model) is None


def test_torch_stage_after_onnx_stage_is_refused(tiny_torch_model):
    recipe = Recipe(name="r", stages=[Stage(technique="int8"), Stage(technique="prune")])
    with pytest.raises(
        PressoError,
        match=r"^Recipe 'r' stage 2 'prune' trains the PyTorch model, so it must "
        r"come before stage 1 'int8', which works on the exported ONNX "
        r"graph\. Reorder the stages\.$",
    ):
        check_stage_order(recipe, recipe.configs(), tiny_torch_model)


# --- CLI ------------------------------------------------------------------------------------


def test_cli_lists_the_builtin_recipes(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*builtin_names(), "auto"]  # auto: a search
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["deep-compression"].split(None, 1)[1].startswith("Deep Compression (Han et al. 2016)")
    assert by_name["fast"].split(None, 1)[1].startswith("the fastest model within budget")


@pytest.mark.parametrize("name", ["deep-compression", "fast"])
def test_cli_show_prints_the_recipe_file_verbatim(capsys, name):
    assert main(["recipes", "show", name]) == 0
    out = capsys.readouterr().out
    assert out == (BUILTIN_DIR / f"{name}.yaml").read_text()


def test_cli_show_auto_says_it_is_a_search(capsys):
    assert main(["recipes", "show", "auto"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# auto: search this model's compression space") and "trials/NNNN.yaml" in out


def test_cli_show_unknown_recipe_is_one_line_exit_2(capsys):
    assert main(["recipes", "show", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("presso: error: Unknown recipe 'nope'. Built-in recipes: ")


@pytest.fixture
def fake_example(monkeypatch):
    """presso.load_example replaced by a stub that records its calls (no training, no data)."""
    calls = []

    def load_example(name, progress=None):
        calls.append(name)
        return types.SimpleNamespace(model=torch.nn.Linear(4, 2), data=None, task="classification")

    monkeypatch.setattr(presso, "load_example", load_example)
    return calls


def test_cli_compress_with_a_bad_recipe_exits_2_and_writes_nothing(tmp_path, capsys, fake_example):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_stages("  - technique: prnue"))
    out = tmp_path / "out"
    assert main(["compress", "--recipe", str(bad), "--example", "digits", "--out", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"presso: error: {bad}, stage 1: unknown technique 'prnue' (did you mean 'prune'?)."
    )
    assert not out.exists() and not (tmp_path / "out.checkpoint").exists()


def test_cli_compress_validates_the_recipe_before_loading_the_example(tmp_path, capsys, fake_example):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_stages("  - technique: prnue"))
    assert (
        main(
            ["compress", "--recipe", str(bad), "--example", "digits", "--out", str(tmp_path / "o"), "--quiet"]
        )
        == 2
    )
    assert fake_example == []
