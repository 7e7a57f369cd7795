"""Recipe schema of the ``data:`` section: source plugin, caption, resolution, packing, loader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lensforge.recipe.plugin_config import (
    Fraction, NonNegativeFloat, NonNegativeInt, PluginRef, PositiveInt, plugin_field,
)


@dataclass(kw_only=True)
class CaptionPolicyConfig:
    """Which caption a sample trains on, and caption dropout for classifier-free guidance."""

    field: str = "dense"
    """Primary caption field (``dense``, ``short``, or any field of the source's captions)."""
    mix: dict[str, NonNegativeFloat] = dataclasses.field(default_factory=dict)
    """Optional mixing ratios over caption fields, e.g. ``{dense: 0.9, short: 0.1}`` (overrides ``field``)."""
    dropout: Fraction = 0.1
    """Probability of replacing the caption by the empty prompt (trains the unconditional branch)."""
    fallback: list[str] = dataclasses.field(default_factory=lambda: ["dense", "caption", "txt", "text", "short"])
    """Fields tried in order when a sample lacks the chosen field (none present = sample skipped)."""


@dataclass(kw_only=True)
class ResolutionPolicyConfig:
    """Which sizes and aspect ratios samples are drawn at."""

    base_resolutions: list[PositiveInt] = dataclasses.field(default_factory=lambda: [256])
    """Base (square-equivalent) resolutions in pixels; each sample draws one."""
    aspect_ratios: list[str] = dataclasses.field(default_factory=lambda: ["1:2", "9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "2:1"])
    """Aspect ratios as W:H labels (Lens's nine by default)."""
    multiple_of: PositiveInt = 16
    """Height and width are rounded to a multiple of this (the VAE token size)."""
    resize: Literal["cover", "contain"] = "cover"
    """Real images: ``cover`` = resize to cover the target then centre-crop; ``contain`` = fit and pad."""
    assign: Literal["nearest", "random"] = "nearest"
    """Images with a stored size go to the ``nearest`` aspect ratio (or a ``random`` one); synthetic ones are always random."""
    aspect_weights: list[NonNegativeFloat] = dataclasses.field(default_factory=list)
    """Relative frequency of each aspect ratio for random draws (empty = uniform)."""
    lens_table: bool = True
    """Use Lens's official sizes for bases 1024 and 1440 (when they are multiples of ``multiple_of``)."""


@dataclass(kw_only=True)
class PackingConfig:
    """Token-budget packer: fills each batch with mixed-size samples up to a token budget."""

    token_budget: PositiveInt = 4096
    """Image + text tokens per batch (per device)."""
    text_tokens_estimate: NonNegativeInt = 32
    """Fixed text tokens per sample, used when ``text_tokens_per_word`` is 0 and by planning tools."""
    text_tokens_per_word: NonNegativeFloat = 1.3
    """Text tokens estimated per caption word (0 = use ``text_tokens_estimate``); the exact count is known after encoding."""
    text_tokens_min: NonNegativeInt = 1
    """Smallest text-token estimate (an empty, CFG-dropped prompt still costs this)."""
    max_samples: PositiveInt = 64
    """Upper bound on samples per batch."""
    lookahead: PositiveInt = 32
    """Loaded samples the packer may choose from (first-fit, oldest first; larger = fuller batches)."""
    group_by_size: bool = False
    """One image size per batch (per-size bucketing, as other trainers do) instead of mixed sizes; raise
    ``lookahead`` so each size finds enough companions. The baseline arm of the resolution ablation."""


@dataclass(kw_only=True)
class LoaderConfig:
    """torchdata StatefulDataLoader settings."""

    num_workers: NonNegativeInt = 0
    """Worker processes (0 = load in the training process)."""
    prefetch_factor: PositiveInt = 2
    """Batches prefetched per worker."""
    pin_memory: bool = False
    """Pin host memory (useful with CUDA)."""
    shuffle: bool = True
    """Shuffle sample order each epoch (deterministic per seed and epoch)."""
    repeat: bool = True
    """Iterate epochs forever (step-based training); False = one epoch per ``iter(loader)``."""


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
