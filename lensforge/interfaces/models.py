"""Contracts for the model plugins: DiT, VAE, text encoder, attention backend.

The DiT, VAE and text encoder are :class:`lightning.LightningModule` subclasses so each can be
fitted on its own (e.g. a VAE fine-tune) and used as a child of a stage system.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lensforge.interfaces.batch import PackedBatch, TextFeatures
from lensforge.interfaces.plugin import Plugin
from lensforge.interfaces.schema import DiTSchema, TextEncoderSchema, VAESchema
from lensforge.interfaces.specs import DiTSpec, LatentSpec


class _ModelPlugin(Plugin, L.LightningModule):
    def __init__(self, config: Any):
        super().__init__()
        self.config = config


class VAE(VAESchema, _ModelPlugin):
    """Images ``[B, 3, H, W]`` in ``[-1, 1]`` ↔ model-space latents ``[B, C, H/f, W/f]``.

    The plugin owns every scaling/shift/normalisation and patchification, so the latents it
    returns are what the DiT sees (``C`` channels per token, row-major tokens). ``H`` and ``W``
    must be multiples of ``downsample_factor``.
    """

    latent_channels: int
    downsample_factor: int

    @abc.abstractmethod
    def encode(self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` → normalised latents ``[B, C, H/f, W/f]``."""

    @abc.abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``[B, C, h, w]`` → images ``[B, 3, h*f, w*f]`` in ``[-1, 1]``."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()


class TextEncoder(TextEncoderSchema, _ModelPlugin):
    """Prompts → :class:`TextFeatures` (one packed tensor per selected layer, no padding)."""

    #: Width of each returned layer's features.
    feature_dims: tuple[int, ...]

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> TextFeatures:
        """Encode prompts; an empty prompt may give a length-0 sample."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()


class DiT(DiTSchema, _ModelPlugin):
    """Packed mixed-resolution denoiser: ``PackedBatch`` → velocity for every image token."""

    @abc.abstractmethod
    def forward(self, batch: PackedBatch) -> Tensor:
        """Return ``[N_img_total, C]`` velocities (``noise − x0`` convention)."""


class AttentionBackend(Plugin):
    """Variable-length, block-diagonal attention over packed sequences.

    ``q``, ``k``, ``v`` are ``[N_total, heads, head_dim]``; ``seqlens`` lists the length of each
    independent segment (they sum to ``N_total``). Tokens attend only within their segment.
    """

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @abc.abstractmethod
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
        """Return ``[N_total, heads, head_dim]``."""

    def available(self, device: torch.device) -> tuple[bool, str]:
        """Whether this backend can run on ``device`` (and why not)."""
        return True, ""


__all__ = ["AttentionBackend", "DiT", "DiTSpec", "LatentSpec", "TextEncoder", "VAE"]
