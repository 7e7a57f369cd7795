"""Contract for stages (registry kind ``stage``): a LightningModule system plus its runner."""

from __future__ import annotations

import abc
from typing import Any

import lightning as L

from lensforge.interfaces.plugin import Plugin
from lensforge.interfaces.schema import StageSchema


class Stage(StageSchema, Plugin, L.LightningModule):
    """A training stage (pretrain, rl, distill): composes model plugins and runs ``fit``."""

    @classmethod
    @abc.abstractmethod
    def run(cls, recipe: Any) -> Any:
        """Build everything the (validated) recipe names and train; return the run's summary."""

    @classmethod
    def preflight(cls, recipe: Any) -> list[str]:
        """Reasons this machine cannot run ``recipe`` (no CUDA, missing weights …), cheap checks only."""
        return []
