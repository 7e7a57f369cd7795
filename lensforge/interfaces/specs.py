"""What models promise each other, without building them (used by recipe validation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentSpec:
    """What a VAE produces: ``channels`` per token on a grid of ``H/downsample × W/downsample``."""

    channels: int
    downsample: int


@dataclass(frozen=True)
class DiTSpec:
    """What a DiT consumes: latent channels per token and per-layer text feature widths."""

    latent_channels: int
    text_dims: tuple[int, ...]


__all__ = ["DiTSpec", "LatentSpec"]
