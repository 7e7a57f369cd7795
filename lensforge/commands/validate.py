"""``lensforge validate RECIPE [k=v …]``: validate and print the resolved recipe (every stage of a pipeline recipe).

Checks the schema, every plugin node, the cross-component checks and, unless ``--portable``, the
machine-dependent ones (each plugin's ``check_environment``: weights folders, dataset paths).
"""

from __future__ import annotations

import argparse

from lensforge.commands import add_recipe_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only 'ok' instead of the recipe")
    p.add_argument(
        "--portable",
        action="store_true",
        help="skip the checks that depend on this machine (weights folders, dataset paths): validate a "
        "recipe written for another machine",
    )


def run(args: argparse.Namespace) -> int:
    from lensforge.recipe import load_recipe

    from lensforge.errors import RecipeError

    from lensforge.stages.pipeline import is_pipeline_file

    if is_pipeline_file(args.recipe):
        return _validate_pipeline(args)
    recipe = load_recipe(args.recipe, args.overrides)
    if not args.portable:
        issues = recipe.environment_issues()
        if issues:
            err = RecipeError(issues)
            err.args = (str(err) + "\n(for a recipe written for another machine: lensforge validate --portable …)",)
            raise err
    if args.quiet:
        print(f"ok: {args.recipe}")
    else:
        print(f"# {args.recipe}: valid (layers: {', '.join(recipe.files)}"
              + (f"; overrides: {' '.join(recipe.overrides)}" if recipe.overrides else "") + ")")
        print(recipe.to_yaml(), end="")
    return 0


def _validate_pipeline(args: argparse.Namespace) -> int:
    """Every stage of a pipeline recipe: all problems of all stages at once, then each resolved stage."""
    from lensforge.errors import RecipeError
    from lensforge.stages.pipeline import load_pipeline

    pipe = load_pipeline(args.recipe, args.overrides)
    if not args.portable:
        issues = list(dict.fromkeys(p for st in pipe.stages for p in st.recipe.environment_issues()))
        if issues:
            err = RecipeError(issues)
            err.args = (str(err) + "\n(for a recipe written for another machine: lensforge validate --portable …)",)
            raise err
    chain = " -> ".join(st.id for st in pipe.stages)
    if args.quiet:
        print(f"ok: {args.recipe} (pipeline: {chain})")
        return 0
    print(f"# {args.recipe}: valid pipeline of {len(pipe.stages)} stage(s): {chain} -> {pipe.out}"
          + (f"; overrides: {' '.join(pipe.overrides)}" if pipe.overrides else ""))
    for n, st in enumerate(pipe.stages, 1):
        print(f"# --- stage {n}/{len(pipe.stages)}: {st.id} (layers: {', '.join(st.recipe.files)})"
              + (" — init_from: the previous stage's output" if st.init_from_previous else ""))
        print(st.recipe.to_yaml(), end="")
    return 0
