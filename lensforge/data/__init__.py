"""Data: sources, caption and resolution policies, token-budget packer, resumable loading.

Import cost stays low (the recipe schema imports :mod:`lensforge.data.config`); heavier names are
loaded on first use: ``build_datamodule``, ``build_loader``, ``PackedLoader``, ``PackedStream``,
``LensDataModule``, ``CaptionPolicy``, ``ResolutionPolicy``, ``TokenBudgetPacker``. See README.md.
"""

from typing import Any

_LAZY = {
    "build_datamodule": "lensforge.data.loader",
    "build_loader": "lensforge.data.loader",
    "build_source": "lensforge.data.loader",
    "LensDataModule": "lensforge.data.loader",
    "PackedLoader": "lensforge.data.loader",
    "PackedStream": "lensforge.data.loader",
    "CaptionPolicy": "lensforge.data.captions",
    "ResolutionPolicy": "lensforge.data.resolution",
    "TokenBudgetPacker": "lensforge.data.packing",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lensforge.data' has no attribute {name!r}")
