"""The contracts plugins implement and the dataclasses they exchange.

Names load on first use, so the light ones (:mod:`.schema`, :mod:`.specs`, :mod:`.plugin`,
:class:`DataSource`) are importable without torch or Lightning — recipe validation needs no more.
"""

from typing import Any

_LAZY = {
    "DataBatch": "lensforge.interfaces.batch",
    "PackedBatch": "lensforge.interfaces.batch",
    "Sample": "lensforge.interfaces.batch",
    "TextFeatures": "lensforge.interfaces.batch",
    "DataSource": "lensforge.interfaces.data",
    "SampleError": "lensforge.interfaces.data",
    "AttentionBackend": "lensforge.interfaces.models",
    "DiT": "lensforge.interfaces.models",
    "TextEncoder": "lensforge.interfaces.models",
    "VAE": "lensforge.interfaces.models",
    "DiTSpec": "lensforge.interfaces.specs",
    "LatentSpec": "lensforge.interfaces.specs",
    "EmptyConfig": "lensforge.interfaces.schema",
    "PluginSchema": "lensforge.interfaces.schema",
    "DiTSchema": "lensforge.interfaces.schema",
    "VAESchema": "lensforge.interfaces.schema",
    "TextEncoderSchema": "lensforge.interfaces.schema",
    "StageSchema": "lensforge.interfaces.schema",
    "Plugin": "lensforge.interfaces.plugin",
    "Stage": "lensforge.interfaces.stage",
    "Reward": "lensforge.interfaces.reward",
    "RewardOutput": "lensforge.interfaces.reward",
    "Reasoner": "lensforge.interfaces.reasoner",
    "Rewrite": "lensforge.interfaces.reasoner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lensforge.interfaces' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
