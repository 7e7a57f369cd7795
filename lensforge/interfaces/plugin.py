"""The :class:`Plugin` mixin every registered class carries.

A plugin class has a nested, keyword-only ``Config`` dataclass. Its fields, each followed by a
one-line attribute docstring, are the plugin's recipe schema and its documentation::

    @register("vae", "my_vae")
    class MyVAE(VAE):
        @dataclass(kw_only=True)
        class Config:
            channels: int = 64
            \"\"\"Width of the first conv layer.\"\"\"

        def __init__(self, config: Config):
            super().__init__(config)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(kw_only=True)
class EmptyConfig:
    """A plugin without parameters."""


class Plugin:
    """Mixin for every registered plugin class."""

    Config: ClassVar[type] = EmptyConfig
    #: Set by :func:`lensforge.registry.register` / discovery: the registry key and kind.
    plugin_name: ClassVar[str | None] = None
    plugin_kind: ClassVar[str | None] = None

    @classmethod
    def tiny_config(cls) -> Any:
        """A small, CPU-sized configuration used by the generated contract tests."""
        return cls.Config()

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        """Plugin-specific checks on a validated config (e.g. a path that must exist).

        Returns ``(field, message)`` pairs; empty when all is well. Runs at validate time, so it
        must not build anything heavy.
        """
        return []

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        """Machine-dependent checks (a weights folder that must exist here, …).

        Returns ``(field, message)`` pairs. Run by ``lensforge fit``'s preflight and by
        ``lensforge validate`` (via :meth:`lensforge.recipe.load.Recipe.environment_issues`), but
        not by :func:`~lensforge.recipe.load_recipe` itself nor ``validate --portable``, so a recipe
        naming folders of another machine (``recipes/lens_3b8.yaml``) still loads and validates.
        """
        return []

    @classmethod
    def from_params(cls, **params: Any):
        """Build from keyword parameters (validated against ``Config``)."""
        from lensforge.recipe.plugin_config import build_config

        return cls(build_config(cls, params))
