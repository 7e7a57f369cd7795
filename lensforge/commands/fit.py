"""``lensforge fit RECIPE [k=v …]``: validate, check the machine, build and train one stage."""

from __future__ import annotations

import argparse

from lensforge.commands import add_recipe_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> int:
    from lensforge.errors import LensforgeError
    from lensforge.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    stage_cls = recipe.config.stage.cls
    reasons = list(stage_cls.preflight(recipe))
    # plugin-level machine checks (check_environment); skip keys the stage's preflight already reported
    reasons += [r for r in recipe.environment_problems() if not any(s.startswith(r.split(":", 1)[0] + ":") for s in reasons)]
    if reasons:
        raise LensforgeError(
            f"this machine cannot run {args.recipe}:\n" + "\n".join(f"  - {r}" for r in reasons)
        )
    stage_cls.run(recipe)
    return 0
