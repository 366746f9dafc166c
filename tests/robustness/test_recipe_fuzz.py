"""Generated recipe files: whatever a recipe file holds, presso reads it or refuses it in
one line (exit code 2 from the CLI, nothing written), never a traceback, a hang or code
run from the file.

The cases: random YAML documents built from recipe-like keys and hostile values (huge
integers, NaN and inf, control characters, deep nesting), the built-in recipes with one
part replaced or an unknown key added at any depth, raw bytes and text, and alias bombs
("billion laughs") and recursive anchors. The default run tries a few hundred; the long
profile (``-m slow``) thousands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_cases import refused_by_the_cli, tried
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presso.errors import PressoError
from presso.recipe.schema import Recipe, builtin_names, builtin_path, load_recipe
from presso.techniques.registry import techniques

FAST = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
LONG = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TOP_KEYS = ["presso_recipe", "name", "description", "stages", "settings"]
STAGE_KEYS = ["technique", "options"]
OPTION_KEYS = sorted({k for t in techniques().values() for k in t.config.model_fields})
TECHNIQUES = sorted(techniques())
MAX_MESSAGE = 2000  # a refusal lists the allowed keys; anything longer is a dump

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
keys = st.sampled_from(TOP_KEYS + STAGE_KEYS + OPTION_KEYS + TECHNIQUES) | texts
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(TECHNIQUES + OPTION_KEYS)
    | texts
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=24,
)


def recipe_like() -> st.SearchStrategy[dict]:
    """Mostly well-formed recipes whose stages and options hold anything."""
    stage = st.fixed_dictionaries(
        {"technique": st.sampled_from(TECHNIQUES) | values},
        optional={
            "options": st.dictionaries(st.sampled_from(OPTION_KEYS) | texts, values, max_size=4) | values
        },
    )
    return st.fixed_dictionaries(
        {"name": texts | values, "stages": st.lists(stage, max_size=3) | values},
        optional={"description": values, "settings": values, "presso_recipe": values},
    )


def _builtin(name: str) -> Any:
    path = builtin_path(name)
    assert path is not None
    return yaml.safe_load(path.read_text())


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into ``doc`` (mappings and lists), the document itself first."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_builtins(draw) -> Any:
    """A built-in recipe with one part replaced, removed, or given an unknown key."""
    doc = _builtin(draw(st.sampled_from(builtin_names())))
    path = draw(st.sampled_from(_paths(doc)))
    parent, last = None, None
    node = doc
    for part in path:
        parent, last, node = node, part, node[part]
    action = draw(st.sampled_from(["replace", "remove", "add key"]))
    if action == "add key" and isinstance(node, dict):
        node[draw(texts | st.sampled_from(OPTION_KEYS))] = draw(values)
    elif action == "remove" and parent is not None:
        del parent[last]
    elif parent is not None:
        parent[last] = draw(values)
    else:
        doc = draw(values)
    return doc


def check(path: Path, surface: str) -> Recipe | None:
    """Read ``path`` as presso does: a recipe, or a PressoError of one short line."""
    tried[surface] += 1
    try:
        recipe = load_recipe(path)
    except PressoError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert 0 < len(message) <= MAX_MESSAGE, message[:300]
        return None
    # what presso accepted it also writes back (recipe.yaml in the artifact) and reads again
    again = path.with_name("again.yaml")
    again.write_text(recipe.to_yaml())
    assert load_recipe(again) == recipe
    return recipe


def write_yaml(tmp_path: Path, doc: Any) -> Path | None:
    path = tmp_path / "recipe.yaml"
    try:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    except (yaml.YAMLError, ValueError, UnicodeEncodeError):  # a value YAML cannot write itself
        return None
    return path


@FAST
@given(doc=recipe_like() | values)
def test_generated_recipes_are_read_or_refused_in_one_line(tmp_path, doc):
    path = write_yaml(tmp_path, doc)
    if path is not None:
        check(path, "recipe: generated YAML")


@FAST
@given(doc=mutated_builtins())
def test_built_in_recipes_with_a_part_changed_are_read_or_refused_in_one_line(tmp_path, doc):
    path = write_yaml(tmp_path, doc)
    if path is not None:
        check(path, "recipe: mutated built-ins")


@FAST
@given(raw=st.binary(max_size=300) | texts.map(str.encode))
def test_any_bytes_as_a_recipe_are_refused_in_one_line(tmp_path, raw):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(raw)
    check(path, "recipe: raw bytes and text")


def _alias_bomb(depth: int, width: int, where: str) -> str:
    """Nested aliases: ``width ** depth`` leaves from a few hundred bytes of YAML."""
    levels = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, depth)]
    bomb = "[" + ", ".join(levels) + "]"
    if where == "option":
        return f"name: x\nstages: [{{technique: distill, options: {{hints: {bomb}}}}}]\n"
    if where == "unknown option":
        return f"name: x\nstages: [{{technique: int8, options: {{bomb: {bomb}}}}}]\n"
    return f"name: x\n{where}: {bomb}\nstages: [{{technique: int8}}]\n"


@pytest.mark.parametrize("where", ["name", "description", "settings", "option", "unknown option"])
def test_alias_bombs_and_recursive_anchors_are_refused_without_expanding(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9, 9, where))  # 387 million leaves if ever expanded
    assert check(path, "recipe: alias bombs and recursion") is None
    path.write_text(f"name: x\nstages: &s [{{technique: int8, options: {{x: *s}}}}]\n{where}: &r [*r]\n")
    assert check(path, "recipe: alias bombs and recursion") is None


@pytest.mark.parametrize(
    "text, says",
    [
        (
            f"name: x\nstages: [{{technique: int8, options: {{calibration_rows: {'9' * 5000}}}}}]\n",
            "YAML cannot read",
        ),
        ("name: x\nstages: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("name: !!python/object/apply:os.system ['touch pwned']\nstages: []\n", "not valid YAML"),
        (
            f"name: x\nstages: [{{technique: slim, options: {{ratio: {10**300}}}}}]\n",
            "integer of about 301 digits",
        ),
        (
            "name: x\ndescription: '"
            + "a" * 1_000_000
            + "'\nstages: [{technique: int8, options: {ratio: 1}}]\n",
            "'ratio'",
        ),
    ],
    ids=["5000-digit integer", "5000 brackets deep", "python object tag", "300-digit integer", "1 MB string"],
)
def test_values_past_what_yaml_or_repr_can_take_are_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(PressoError, match=says) as exc:
        load_recipe(path)
    assert "\n" not in str(exc.value) and len(str(exc.value)) <= MAX_MESSAGE
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@FAST
@given(doc=recipe_like() | mutated_builtins())
def test_the_cli_refuses_a_bad_recipe_with_exit_2_one_line_and_nothing_written(tmp_path, capsys, doc):
    path = write_yaml(tmp_path, doc)
    if path is None:
        return
    try:
        load_recipe(path)
        return  # a recipe presso accepts would run: other tests run recipes
    except PressoError:
        pass
    tried["recipe: through the CLI"] += 1
    out = tmp_path / "out"
    refused_by_the_cli(
        ["compress", "--example", "digits", "--recipe", str(path), "--out", str(out)], out, capsys
    )


@pytest.mark.slow
@LONG
@given(doc=recipe_like() | mutated_builtins() | values)
def test_long_profile_generated_recipes(tmp_path, doc):
    path = write_yaml(tmp_path, doc)
    if path is not None:
        check(path, "recipe: long profile")
