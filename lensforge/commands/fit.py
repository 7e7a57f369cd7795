"""``lensforge fit RECIPE [k=v …]``: validate, check the machine, build and train one stage — or, for a pipeline
recipe (a top-level ``pipeline:`` list), every stage in order (:mod:`lensforge.stages.pipeline`)."""

from __future__ import annotations

import argparse

from lensforge.commands import add_recipe_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> int:
    from lensforge.errors import LensforgeError
    from lensforge.recipe import load_recipe
    from lensforge.stages.pipeline import is_pipeline_file

    if is_pipeline_file(args.recipe):  # a top-level `pipeline:` list: every stage in order (lensforge.stages.pipeline)
        from lensforge.stages.pipeline import load_pipeline, run_pipeline

        run_pipeline(load_pipeline(args.recipe, args.overrides))
        return 0
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
