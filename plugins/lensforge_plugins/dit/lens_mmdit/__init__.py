"""``lens_mmdit``: the Lens dual-stream MMDiT at any size over packed mixed-resolution batches.

Entry point ``lensforge.dit: lens_mmdit = lensforge_plugins.dit.lens_mmdit.model:LensMMDiT``.
Model in :mod:`.model` (torch), recipe ``Config`` and validation checks in :mod:`.schema` (no torch),
size presets in :mod:`.flavors`. Names load on first use, so validating a recipe imports no torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lensforge_plugins.dit.lens_mmdit.flavors import FLAVORS, LensArch
    from lensforge_plugins.dit.lens_mmdit.model import LensJointAttention, LensMMDiT, LensTransformerBlock, PackedLayout
    from lensforge_plugins.dit.lens_mmdit.schema import LensMMDiTSchema

_LAZY = {
    "FLAVORS": "flavors", "LensArch": "flavors", "LensMMDiTSchema": "schema",
    "LensJointAttention": "model", "LensMMDiT": "model", "LensTransformerBlock": "model", "PackedLayout": "model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    sub = _LAZY.get(name)
    if sub is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{sub}"), name)
