"""Recipes: an ordered list of technique stages, validated with clear errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from presso.errors import PressoError
from presso.techniques.registry import get_technique

BUILTIN_DIR = Path(__file__).parent / "builtin"
FORMAT_VERSION = 1


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    technique: str
    options: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseModel):
    """Run settings a recipe may pin; command-line flags override them."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    max_drop: float | None = Field(default=None, ge=0)
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
        """(technique, validated config) per stage; errors name the stage and option."""
        out = []
        for i, stage in enumerate(self.stages, 1):
            tech = get_technique(stage.technique)
            try:
                out.append((tech, tech.config(**stage.options)))
            except ValidationError as exc:
                raise PressoError(f"{where}, stage {i} '{stage.technique}': {_first_error(exc)}") from None
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "options"
    if err["type"] == "extra_forbidden":
        return f"unknown option '{key}'"
    got = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for validator messages
    return f"option '{key}': {msg} (got {got!r})"


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


def load_recipe(spec: str | Path | Recipe) -> Recipe:
    """A built-in recipe by name, or a recipe YAML file by path."""
    if isinstance(spec, Recipe):
        return spec
    spec = str(spec)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise PressoError(f"Recipe file '{spec}' not found.")
        where = str(path)
    elif (found := builtin_path(spec)) is not None:
        path, where = found, f"built-in recipe '{spec}'"
    else:
        raise PressoError(
            f"Unknown recipe '{spec}'. Built-in recipes: {', '.join(builtin_names())}; "
            "or give the path of a recipe .yaml file."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PressoError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PressoError(f"{where} must be a mapping with 'name' and 'stages'.")
    try:
        recipe = Recipe(**raw)
    except ValidationError as exc:
        raise PressoError(f"{where}: {_first_error(exc)}") from None
    recipe.configs(where)  # validate every stage's options now, before any work
    return recipe
