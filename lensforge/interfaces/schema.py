"""The light half of every plugin: its ``Config`` and the class-level checks validation calls.

Validation (``lensforge validate``, ``lensforge fit``'s recipe check, ``lensforge plugins KIND NAME``)
needs of a plugin only its ``Config`` dataclass and a few classmethods — ``check_config``,
``check_environment``, ``input_spec`` / ``latent_spec`` / ``feature_spec``, a stage's
``check_recipe`` — never its weights or its torch code. These base classes import nothing heavy.

A plugin can put that half in a module of its own that imports no torch or Lightning, as a class
its plugin class subclasses::

    # my_pkg/schemas.py  (no torch)
    class MyVAESchema(VAESchema):
        @dataclass(kw_only=True)
        class Config:
            channels: int = 64
            \"\"\"Width of the first conv.\"\"\"

        @classmethod
        def latent_spec(cls, config):
            return LatentSpec(channels=config.channels, downsample=8)

    # my_pkg/vae.py  (torch)
    class MyVAE(MyVAESchema, VAE):
        ...

The registry then validates recipes with ``MyVAESchema`` and imports ``my_pkg.vae`` only to build
the model (it finds the schema by reading ``vae.py``'s source, without importing it). Plugins that
keep everything in one class still work; validating them imports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(kw_only=True)
class EmptyConfig:
    """A plugin without parameters."""


class PluginSchema:
    """What validation needs of a plugin (every plugin class is one)."""

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


class DiTSchema(PluginSchema):
    """Light half of a DiT plugin."""

    @classmethod
    def input_spec(cls, config: Any) -> Any:
        """What ``config`` expects from the VAE and text encoder (a :class:`DiTSpec`, None if unknown)."""
        return None


class VAESchema(PluginSchema):
    """Light half of a VAE plugin."""

    @classmethod
    def latent_spec(cls, config: Any) -> Any:
        """Channels/downsample implied by ``config`` without building (a :class:`LatentSpec`, None if unknown)."""
        return None


class TextEncoderSchema(PluginSchema):
    """Light half of a text-encoder plugin."""

    @classmethod
    def feature_spec(cls, config: Any) -> tuple[int, ...] | None:
        """Per-layer feature widths implied by ``config`` without building (None if unknown)."""
        return None


class StageSchema(PluginSchema):
    """Light half of a stage plugin."""

    @classmethod
    def check_recipe(cls, config: Any) -> list[tuple[str, str]]:
        """Cross-section checks of a whole recipe this stage runs (``(dotted key, message)`` pairs)."""
        return []


__all__ = ["DiTSchema", "EmptyConfig", "PluginSchema", "StageSchema", "TextEncoderSchema", "VAESchema"]
