"""Recipes: an ordered list of technique stages, validated with clear errors."""

from __future__ import annotations

import difflib
import functools
import reprlib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails

from presso.errors import PressoError, one_line, reason
from presso.techniques.registry import techniques

BUILTIN_DIR = Path(__file__).parent / "builtin"
FORMAT_VERSION = 1


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    technique: str
    options: dict[str, Any] = Field(default_factory=dict)
    # When no variant of the stage meets the budget, go on with the model as it was before
    # the stage (the report marks it skipped) instead of failing the whole run.
    optional: bool = False
    # "faster" / "smaller": keep the stage's result only if it runs measurably faster at
    # batch 1 (timed interleaved against the stage's input) / has a smaller file; otherwise
    # go on without it. int8 on a tiny model is slower than fp32; a fast recipe must not pay that.
    keep_if: Literal["always", "faster", "smaller"] = "always"


class Settings(BaseModel):
    """Run settings a recipe may pin; command-line flags override them."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    max_drop: float | None = Field(default=None, ge=0)
    # The metric max_drop applies to (None: the task's default); pinned with it because the
    # budget's meaning depends on it (an absolute drop of a score, a relative rise of an error).
    metric: str | None = None
    seed: int | None = None
    calibration_fraction: float | None = Field(default=None, gt=0, lt=1)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    presso_recipe: int = FORMAT_VERSION
    name: str
    description: str = ""
    stages: list[Stage] = Field(min_length=1)
    settings: Settings = Field(default_factory=Settings)

    def configs(self, where: str = "recipe") -> list[tuple[Any, BaseModel]]:
        """(technique, validated config) per stage; errors name the stage, the option and
        what it allows."""
        out = []
        known = techniques()
        for i, stage in enumerate(self.stages, 1):
            tech = known.get(stage.technique)
            if tech is None:
                raise PressoError(
                    f"{where}, stage {i}: unknown technique {brief(stage.technique)}"
                    f"{_did_you_mean(stage.technique, known)}. "
                    f"Allowed: {', '.join(known)}."
                )
            try:
                out.append((tech, tech.config(**stage.options)))
            except ValidationError as exc:
                raise PressoError(
                    f"{where}, stage {i} '{stage.technique}': {_first_error(exc, tech.config, 'option')}"
                ) from None
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _first_error(exc: ValidationError, model: type[BaseModel], what: str) -> str:
    """One line for pydantic's first error: the key, what was wrong, what is allowed. An
    unknown key is reported first: a typo also makes the intended key look missing."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _written(err["loc"])
    key = ".".join(str(p) for p in loc) or what
    if err["type"] == "extra_forbidden":
        known = list(model.model_fields)
        # the unknown key is the location's last part, whatever it is called ("int", "[x]")
        unknown = err["loc"][-1] if err["loc"] else what
        key = ".".join(str(p) for p in [*_written(err["loc"][:-1]), unknown])
        return (
            f"unknown {what} {brief(key)}{_did_you_mean(str(unknown), known)}. "
            f"Allowed {what}s: {', '.join(known)}."
        )
    field = model.model_fields.get(str(loc[0])) if loc else None
    allowed = f" Allowed: {_allowed(field)}." if field is not None and len(loc) == 1 else ""
    if err["type"] == "missing":
        return f"{what} {brief(key)} is required.{allowed}"
    union = len(loc) < len(err["loc"]) and not any(str(p).startswith("function-") for p in err["loc"])
    msg = "not an allowed value" if union else err["msg"].removeprefix("Value error, ")
    return f"{what} {brief(key)}: {msg} (got {brief(err.get('input'))}).{allowed}"


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxdict = 3, 6, 6, 6
_BRIEF.maxstring, _BRIEF.maxother = 80, 80


def brief(value: Any) -> str:
    """``repr(value)`` cut to a readable length: what a user wrote may be a megabyte, nested
    billions deep through YAML aliases (a full repr never ends), or an integer too long
    for ``repr`` at all."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _BRIEF.repr(value)
    except ValueError:  # an integer inside a container, past the digit limit
        return f"a {type(value).__name__}"


def _written(loc) -> list:
    """The parts of a location the user wrote: pydantic adds union members and validator
    wrappers like "literal['auto']", "int" or "function-after[...]"."""
    return [
        p
        for p in loc
        if isinstance(p, int)
        or ("[" not in str(p) and str(p) not in _TYPE_TAGS and not str(p).startswith("function-"))
    ]


_TYPE_TAGS = {
    "int",
    "float",
    "str",
    "bool",
    "list",
    "dict",
    "none",
    "tuple",
    "constrained-float",
    "constrained-int",
    "is-instance",
}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "a mapping",
}


def _allowed(field) -> str:
    """What a config field accepts, in words: its type, Literal values and numeric bounds."""
    from pydantic_core import PydanticUndefined

    words = list(dict.fromkeys(_type_words(field.annotation)))
    nullable = "null" in words
    words = [w for w in words if w != "null"]
    bounds = [
        f"{sign} {getattr(meta, attr)}"
        for meta in field.metadata
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if getattr(meta, attr, None) is not None
    ]
    text = (
        " or ".join(words)
        + (" " + " and ".join(bounds) if bounds else "")
        + (" (or null)" if nullable else "")
    )
    if field.default is not PydanticUndefined and field.default is not None:
        text += f"; default {field.default!r}"
    return text


def _type_words(annotation) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return [", ".join(repr(v) for v in typing.get_args(annotation))]
    if origin in (typing.Union, types.UnionType):
        return [w for arg in typing.get_args(annotation) for w in _type_words(arg)]
    if origin is typing.Annotated:
        return _type_words(typing.get_args(annotation)[0])
    if origin is list and typing.get_args(annotation):
        return ["a list of " + " or ".join(_type_words(typing.get_args(annotation)[0]))]
    return [_TYPE_WORDS.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))]


def _recipe_error(exc: ValidationError) -> str:
    """A recipe-level error named by where it is: a top-level key, a stage's key, a setting."""
    loc = exc.errors()[0]["loc"]
    if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
        stage = f"stage {loc[1] + 1}: "
        if len(loc) == 2:
            return stage + "must be a mapping with 'technique' and 'options'."
        return stage + _first_error(_relocated(exc, 2), Stage, "key")
    if loc and loc[0] == "settings" and len(loc) > 1:
        return "settings: " + _first_error(_relocated(exc, 1), Settings, "setting")
    return _first_error(exc, Recipe, "key")


def _relocated(exc: ValidationError, drop: int) -> ValidationError:
    """``exc`` with the first ``drop`` parts of its first error's location removed."""
    first = exc.errors()[0]
    # What from_exception_data reads (it renders the message again from type and ctx).
    err: InitErrorDetails = {"type": first["type"], "loc": first["loc"][drop:], "input": first["input"]}
    if "ctx" in first:  # kept as is: a validator's exception object is one of its values
        err["ctx"] = first["ctx"]
    return ValidationError.from_exception_data(exc.title, [err])


def recipe_of(stages: list[BaseModel], name: str = "custom") -> Recipe:
    """A recipe from typed stage configs (or :class:`Stage` objects), in order."""
    if not stages:
        raise PressoError("A recipe needs at least one stage; got an empty list.")
    by_config = {t.config: t.name for t in techniques().values()}
    out = []
    for i, stage in enumerate(stages, 1):
        if isinstance(stage, Stage):
            out.append(stage)
        elif type(stage) in by_config:
            options = stage.model_dump(mode="json", exclude_unset=True)
            out.append(Stage(technique=by_config[type(stage)], options=options))
        else:
            raise PressoError(
                f"recipe stage {i}: {type(stage).__name__} is not a technique config. Use one of "
                f"{', '.join(sorted(c.__name__ for c in by_config))}, a Stage, or a recipe name."
            )
    return Recipe(name=name, description=" -> ".join(s.technique for s in out), stages=out)


@functools.cache
def _builtin_files() -> dict[str, Path]:
    """Built-in recipe name (the ``name`` in each file: "2:4" lives in 2-4.yaml, as file
    names have no ':') -> its file; read once, the folder ships with the package."""
    files = {}
    for path in BUILTIN_DIR.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        files[str(raw.get("name", path.stem)) if isinstance(raw, dict) else path.stem] = path
    return files


def builtin_path(name: str) -> Path | None:
    """The file of built-in recipe ``name``, or None."""
    return _builtin_files().get(name)


def builtin_names() -> list[str]:
    """Built-in recipes by the name they are called with."""
    return sorted(_builtin_files())


# A recipe as the Python API takes it: a built-in name, a YAML file, a Recipe, or the
# stages themselves as typed configs (``[SlimConfig(ratio=0.65), Int8Config()]``) or Stages.
RecipeSpec = str | Path | Recipe | Sequence[BaseModel]


def read_yaml(path: Path, where: str) -> Any:
    """The YAML document in ``path``, safely loaded (no Python objects are ever built), or
    one line saying why it cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PressoError(
            f"{where} is not UTF-8 text (byte {exc.start}): give a recipe .yaml file."
        ) from None
    except OSError as exc:
        raise PressoError(f"{where} cannot be read: {exc.strerror or exc}.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PressoError(f"{where} is not valid YAML: {reason(exc)}") from None
    except ValueError as exc:  # an integer past Python's 4300-digit limit, say
        raise PressoError(f"{where} holds a value YAML cannot read: {reason(exc)}") from None
    except RecursionError:  # brackets nested thousands deep
        raise PressoError(f"{where} is nested too deeply to read.") from None


def load_recipe(spec: RecipeSpec) -> Recipe:
    """A built-in recipe by name, a recipe YAML file by path, or a list of stages."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return recipe_of(list(spec))
    if not isinstance(spec, str | Path):
        # compress(model, rows) puts the data where the recipe goes
        raise PressoError(
            f"The recipe must be a name, a .yaml path, a Recipe or a list of stage configs; got a "
            f"{type(spec).__name__}. Data goes third or by name: compress(model, 'int8', data)."
        )
    spec = str(spec)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise PressoError(f"Recipe file '{one_line(spec)}' not found.")
        where = one_line(str(path))
    elif (found := builtin_path(spec)) is not None:
        path, where = found, f"built-in recipe '{spec}'"
    else:
        raise PressoError(
            f"Unknown recipe '{one_line(spec)}'. Built-in recipes: {', '.join(builtin_names())}; "
            "or give the path of a recipe .yaml file."
        )
    raw = read_yaml(path, where)
    if not isinstance(raw, dict):
        raise PressoError(f"{where} must be a mapping with 'name' and 'stages'.")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise PressoError(f"{where}: {_recipe_error(exc)}") from None
    recipe.configs(where)  # validate every stage's options now, before any work
    return recipe
