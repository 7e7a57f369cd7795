"""Recipes: YAML layers (``extends``, dotlist overrides) validated against a typed schema.

Names are imported lazily so that schema modules elsewhere (``lensforge.data.config``) can use
:mod:`lensforge.recipe.plugin_config` without an import cycle.
"""

from typing import Any

__all__ = ["Recipe", "load_recipe", "plugin_paths"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lensforge.recipe import load

        return getattr(load, name)
    raise AttributeError(f"module 'lensforge.recipe' has no attribute {name!r}")
