"""What a run records about itself in MLflow: the flattened recipe, plugin provenance, the git SHA."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tracking_records(recipe: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """``(params, tags, text artifacts)`` to log for ``recipe``: flattened recipe, provenance, git SHA."""
    from lensforge import __version__, registry
    from lensforge.tracking.mlflow_logger import flatten, git_revision

    params = flatten(recipe.data)
    tags: dict[str, str] = {"lensforge.recipe_path": str(recipe.path)}
    if recipe.overrides:
        tags["lensforge.overrides"] = " ".join(recipe.overrides)
    for path, ref in recipe.plugins().items():
        try:
            prov = registry.get_spec(ref.kind, ref.name).provenance
        except Exception as e:  # escape-hatch names may have no spec
            prov = f"unknown ({e})"
        tags[f"plugin.{path}"] = f"{ref.kind}:{ref.name} [{prov}]"
    rev = git_revision(Path(__file__).resolve().parent)
    tags["git.revision"] = rev or "not a git checkout (or no commits)"
    tags["lensforge.version"] = __version__
    return params, tags, {"recipe.yaml": recipe.to_yaml()}


__all__ = ["tracking_records"]
