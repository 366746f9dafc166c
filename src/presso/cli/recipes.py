"""``presso recipes``: list the built-in recipes, or print one to copy and edit."""

from __future__ import annotations

import argparse
import json

from presso.cli.common import print_json

HELP = "list built-in recipes (or 'presso recipes show NAME' to print one)"
# Not a file: `--recipe auto` searches the model's compression space (presso search).
AUTO = (
    "search this model's compression space for the best trade-off within budget "
    "(presso search; --trials, --timeout, --pick)"
)


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
        if args.name == "auto":
            print(
                f"# auto: {AUTO}.\n# It is not a recipe file: each trial's recipe is written to trials/NNNN.yaml."
            )
            return 0
        recipe = load_recipe(args.name)
        if args.json:
            print_json(json.dumps(recipe.model_dump(mode="json"), indent=2))
        else:
            path = builtin_path(args.name)
            print(path.read_text() if path is not None else recipe.to_yaml(), end="")
        return 0
    recipes = [load_recipe(n) for n in builtin_names()]
    listed = {r.name: r.description for r in recipes} | {"auto": AUTO}
    if args.json:
        print_json(json.dumps(listed, indent=2))
    else:
        width = max(map(len, listed))
        for name, description in listed.items():
            print(f"{name:<{width}}  {description}")
    return 0
