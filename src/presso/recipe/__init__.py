"""Recipes: schema, YAML IO and built-in recipes."""

from presso.recipe.schema import Recipe, Stage, builtin_names, load_recipe

__all__ = ["Recipe", "Stage", "builtin_names", "load_recipe"]
