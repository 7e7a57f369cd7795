"""``lens_mmdit``: the Lens dual-stream MMDiT at any size over packed mixed-resolution batches.

Entry point ``lensforge.dit: lens_mmdit = lensforge_plugins.dit.lens_mmdit:LensMMDiT``.
Model in :mod:`.model`, size presets in :mod:`.flavors`.
"""

from lensforge_plugins.dit.lens_mmdit.flavors import FLAVORS, LensArch
from lensforge_plugins.dit.lens_mmdit.model import (
    LensJointAttention,
    LensMMDiT,
    LensTransformerBlock,
    PackedLayout,
)

__all__ = ["FLAVORS", "LensArch", "LensJointAttention", "LensMMDiT", "LensTransformerBlock", "PackedLayout"]
