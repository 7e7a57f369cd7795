"""Recipe schema of the ``data:`` section: source plugin, caption, resolution, packing, loader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lensforge.recipe.plugin_config import PluginRef, plugin_field


@dataclass(kw_only=True)
class CaptionPolicyConfig:
    """Which caption a sample trains on, and caption dropout for classifier-free guidance."""

    field: str = "dense"
    """Primary caption field (``dense``, ``short``, or any field of the source's captions)."""
    mix: dict[str, float] = dataclasses.field(default_factory=dict)
    """Optional mixing ratios over caption fields, e.g. ``{dense: 0.9, short: 0.1}`` (overrides ``field``)."""
    dropout: float = 0.1
    """Probability of replacing the caption by the empty prompt (trains the unconditional branch)."""


@dataclass(kw_only=True)
class ResolutionPolicyConfig:
    """Which sizes and aspect ratios samples are drawn at."""

    base_resolutions: list[int] = dataclasses.field(default_factory=lambda: [256])
    """Base (square-equivalent) resolutions in pixels; each sample draws one."""
    aspect_ratios: list[str] = dataclasses.field(default_factory=lambda: ["1:2", "9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "2:1"])
    """Aspect ratios as W:H labels (Lens's nine by default)."""
    multiple_of: int = 16
    """Height and width are rounded to a multiple of this (the VAE token size)."""
    resize: Literal["cover", "contain"] = "cover"
    """Real images: ``cover`` = resize to cover the target then centre-crop; ``contain`` = pad."""


@dataclass(kw_only=True)
class PackingConfig:
    """Token-budget packer: fills each batch with mixed-size samples up to a token budget."""

    token_budget: int = 4096
    """Image + text tokens per batch (per device)."""
    text_tokens_estimate: int = 32
    """Text tokens assumed per sample when sizing a batch (captions are encoded later)."""
    max_samples: int = 64
    """Upper bound on samples per batch."""


@dataclass(kw_only=True)
class LoaderConfig:
    """torchdata StatefulDataLoader settings."""

    num_workers: int = 0
    """Worker processes (0 = load in the training process)."""
    prefetch_factor: int = 2
    """Batches prefetched per worker."""
    pin_memory: bool = False
    """Pin host memory (useful with CUDA)."""


@dataclass(kw_only=True)
class DataConfig:
    """The ``data:`` section of a recipe."""

    source: PluginRef = plugin_field("data", {"name": "synthetic"}, doc="data source plugin")
    """The data source plugin node (``synthetic``, ``webdataset``, ``folder`` …)."""
    captions: CaptionPolicyConfig = dataclasses.field(default_factory=CaptionPolicyConfig)
    resolution: ResolutionPolicyConfig = dataclasses.field(default_factory=ResolutionPolicyConfig)
    packing: PackingConfig = dataclasses.field(default_factory=PackingConfig)
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    cache_dir: str | None = None
    """Feature cache folder written by ``lensforge cache`` (None = encode on the fly)."""
