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

The class-level methods validation calls (``tiny_config``, ``check_config``,
``check_environment``, ``from_params``) live on :class:`lensforge.interfaces.schema.PluginSchema`,
which a plugin may also implement in a light module of its own (see that module).
"""

from __future__ import annotations

from lensforge.interfaces.schema import EmptyConfig, PluginSchema


class Plugin(PluginSchema):
    """Mixin for every registered plugin class."""


__all__ = ["EmptyConfig", "Plugin"]
