"""``presso recipes``: list the built-in recipes, or print one to copy and edit."""

from __future__ import annotations

import argparse
import json

from presso.cli.common import print_json

HELP = "list built-in recipes (or 'presso recipes show NAME' to print one)"


def register(sub) -> None:
    p = sub.add_parser("recipes", help=HELP, description=HELP + ".")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="recipe to show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args) -> int:
    from presso.errors import PressoError
    from presso.recipe.schema import builtin_names, builtin_path, load_recipe

    if args.action == "show":
        if not args.name:
            raise PressoError("Name the recipe to show, e.g. presso recipes show int8.")
        recipe = load_recipe(args.name)
        if args.json:
            print_json(json.dumps(recipe.model_dump(mode="json"), indent=2))
        else:
            path = builtin_path(args.name)
            print(path.read_text() if path is not None else recipe.to_yaml(), end="")
        return 0
    recipes = [load_recipe(n) for n in builtin_names()]
    if args.json:
        print_json(json.dumps({r.name: r.description for r in recipes}, indent=2))
    else:
        width = max(len(r.name) for r in recipes)
        for r in recipes:
            print(f"{r.name:<{width}}  {r.description}")
    return 0
