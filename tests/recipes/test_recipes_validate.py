"""Every shipped recipe (except ``_base/`` fragments) validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from lensforge.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL = sorted(p for p in RECIPES.rglob("*.yaml") if "_base" not in p.relative_to(RECIPES).parts)


def test_there_are_recipes():
    assert any(p.parent.name == "tiny" for p in ALL), "recipes/tiny/ holds the README's main job"


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(RECIPES)) for p in ALL])
def test_recipe_validates(path):
    from lensforge.stages.pipeline import is_pipeline_file, load_pipeline

    if is_pipeline_file(path):  # a pipeline recipe: every stage validates
        pipe = load_pipeline(path)
        assert pipe.stages and all(st.recipe.config.model.dit.name for st in pipe.stages)
        return
    recipe = load_recipe(path)
    assert recipe.config.model.dit.name and recipe.config.stage.name
