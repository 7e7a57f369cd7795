"""One module per CLI verb: ``add_arguments(parser)`` and ``run(args) -> int``."""

import argparse


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The ``RECIPE [key=value …]`` arguments shared by recipe verbs."""
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. trainer.max_steps=10")
