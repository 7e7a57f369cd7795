"""Contract for data sources (registry kind ``data``)."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from lensforge.interfaces.plugin import Plugin

if TYPE_CHECKING:  # no torch at import: data sources stay light for recipe validation
    from lensforge.interfaces.batch import Sample


class SampleError(Exception):
    """A sample could not be read or decoded (corrupt image, missing caption, …).

    Loaders skip such samples, count and log them; they are never fatal.
    """


class DataSource(Plugin):
    """A map-style source of training samples: ``len()`` and ``get(index, size)``.

    Map-style access lets the packer and loader shard by index across ranks and workers and
    resume exactly. ``size`` is the ``(H, W)`` chosen by the resolution policy; sources that
    hold real images resize/crop to it, synthetic sources render at it.
    """

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def get(self, index: int, size: tuple[int, int] | None = None) -> Sample:
        """Return sample ``index`` at ``size`` (``(H, W)``); raise :class:`SampleError` if unreadable."""

    def native_size(self, index: int) -> tuple[int, int] | None:
        """The stored ``(H, W)`` of sample ``index`` (None for sources that render at any size)."""
        return None
