"""lensforge: train Lens-style text-to-image flow-matching models.

The core package never imports ``lensforge_plugins``; plugins are reached through
:mod:`lensforge.registry` only.
"""

__version__ = "0.1.0"
