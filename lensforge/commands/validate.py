"""``lensforge validate RECIPE [k=v …]``: validate and print the resolved recipe."""

from __future__ import annotations

import argparse

from lensforge.commands import add_recipe_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only 'ok' instead of the recipe")


def run(args: argparse.Namespace) -> int:
    from lensforge.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.quiet:
        print(f"ok: {args.recipe}")
    else:
        print(f"# {args.recipe}: valid (layers: {', '.join(recipe.files)}"
              + (f"; overrides: {' '.join(recipe.overrides)}" if recipe.overrides else "") + ")")
        print(recipe.to_yaml(), end="")
    return 0
