"""``flux2``: the FLUX.2 VAE (diffusers ``AutoencoderKLFlux2``) with Lens's latent path (LENS_SPEC §2).

The diffusers model is wrapped, not re-implemented. This plugin adds what Lens puts around it:

encode
    ``vae.encode(x).latent_dist`` → mode (default) or a sample → 2×2 patchify
    ``[B, 32, H/8, W/8] → [B, 128, H/16, W/16]`` with channel ``c·4 + p1·2 + p2`` →
    BatchNorm running-stat normalisation ``(x − mean) / sqrt(var + eps)`` with
    ``eps = vae.config.batch_norm_eps``. Row-major flattening of the ``(H/16, W/16)`` grid gives
    the 128-channel tokens the DiT sees (``b (h w) (c p1 p2)``).
decode
    the exact inverse: ``x·sqrt(var + eps) + mean`` → unpatchify → ``vae.decode``.

Memory: ``decode_batch_size`` bounds how many images the conv decoder sees at once and
``tiling`` switches on diffusers' tiled encode/decode for large images.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import LatentSpec, VAE

from lensforge_plugins.vae.schemas import Flux2Schema, vae_folder

log = logging.getLogger("lensforge.vae.flux2")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def patchify(z_BCHW: Tensor, p: tuple[int, int] = (2, 2)) -> Tensor:
    """``[B, C, H, W] → [B, C·p1·p2, H/p1, W/p2]`` with channel index ``c·p1·p2 + i·p2 + j``."""
    B, C, H, W = z_BCHW.shape
    p1, p2 = p
    z = z_BCHW.reshape(B, C, H // p1, p1, W // p2, p2)
    return z.permute(0, 1, 3, 5, 2, 4).reshape(B, C * p1 * p2, H // p1, W // p2)


def unpatchify(x_BCHW: Tensor, p: tuple[int, int] = (2, 2)) -> Tensor:
    """Inverse of :func:`patchify`."""
    B, C, h, w = x_BCHW.shape
    p1, p2 = p
    x = x_BCHW.reshape(B, C // (p1 * p2), p1, p2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(B, C // (p1 * p2), h * p1, w * p2)


class Flux2VAE(Flux2Schema, VAE):
    """FLUX.2 VAE (diffusers AutoencoderKLFlux2) with Lens's patchify + BatchNorm normalisation."""

    def __init__(self, config: Config):
        super().__init__(config)
        from diffusers import AutoencoderKLFlux2

        if config.dtype not in _DTYPES:
            raise LensforgeError(f"flux2: dtype '{config.dtype}' is not one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[config.dtype]
        if config.path is not None:
            vae_dir = vae_folder(config.path)
            if not os.path.isdir(vae_dir):
                raise LensforgeError(f"flux2: VAE folder '{config.path}' does not exist")
            # load in fp32 so the BatchNorm statistics are never rounded, then cast the rest
            self.vae = AutoencoderKLFlux2.from_pretrained(vae_dir, torch_dtype=torch.float32)
            log.info("flux2: loaded AutoencoderKLFlux2 from %s (%s)", vae_dir, config.dtype)
        else:
            self.vae = AutoencoderKLFlux2(**config.config)
            log.info("flux2: built AutoencoderKLFlux2 with random weights from config %s", config.config)
        self._cast(dtype)
        if config.tiling:
            self.vae.enable_tiling()
            log.info("flux2: diffusers tiling on")
        vc = self.vae.config
        self.patch = tuple(int(p) for p in vc.patch_size)
        self.latent_channels = int(vc.latent_channels) * self.patch[0] * self.patch[1]
        self.downsample_factor = 2 ** (len(vc.block_out_channels) - 1) * self.patch[0]
        self.bn_eps = float(vc.batch_norm_eps)
        self.freeze()

    # ------------------------------------------------------------------ config-level helpers

    # ------------------------------------------------------------------ normalisation

    def _bn_stats(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        mean = self.vae.bn.running_mean.to(dtype).view(1, -1, 1, 1)
        std = torch.sqrt(self.vae.bn.running_var.to(dtype).view(1, -1, 1, 1) + self.bn_eps)
        return mean, std

    def _compute_dtype(self) -> torch.dtype:
        return torch.float32 if self.config.upcast_fp32 else self._weight_dtype()

    def _weight_dtype(self) -> torch.dtype:
        return self.vae.decoder.conv_in.weight.dtype

    def _cast(self, dtype: torch.dtype) -> None:
        """Cast the conv weights to ``dtype``; the BatchNorm statistics always stay float32."""
        for child in self.vae.children():
            child.to(torch.float32 if child is self.vae.bn else dtype)

    def _run_dtype(self, dtype: torch.dtype):
        """Temporarily cast the wrapped VAE to ``dtype`` (upcast) and restore it afterwards."""
        plugin = self
        orig = self._weight_dtype()

        class _Ctx:
            def __enter__(self_inner):
                if orig != dtype:
                    plugin._cast(dtype)

            def __exit__(self_inner, *exc):
                if orig != dtype:
                    plugin._cast(orig)

        return _Ctx()

    @staticmethod
    def _chunks(x: Tensor, n: int) -> list[Tensor]:
        return list(x.split(n)) if n and x.shape[0] > n else [x]

    # ------------------------------------------------------------------ interface

    @torch.no_grad()
    def encode(self, images: Tensor, *, sample: bool | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` → normalised latents ``[B, 128, H/16, W/16]``."""
        f = self.downsample_factor
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2] % f or images.shape[-1] % f:
            raise LensforgeError(
                f"flux2.encode: expected images [B, 3, H, W] with H, W multiples of {f}, got {tuple(images.shape)}"
            )
        do_sample = self.config.sample_posterior if sample is None else sample
        dtype = self._compute_dtype()
        outs = []
        with self._run_dtype(dtype):
            for x in self._chunks(images, self.config.encode_batch_size):
                dist = self.vae.encode(x.to(dtype)).latent_dist
                z = dist.sample(generator) if do_sample else dist.mode()
                outs.append(z)
        z_BCHW = torch.cat(outs)
        x = patchify(z_BCHW, self.patch)
        mean, std = self._bn_stats(x.dtype)
        return (x - mean) / std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised ``[B, 128, h, w]`` → images ``[B, 3, 16h, 16w]`` (not clamped)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise LensforgeError(
                f"flux2.decode: expected latents [B, {self.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        dtype = self._compute_dtype()
        x = latents.to(dtype)
        mean, std = self._bn_stats(dtype)
        z = unpatchify(x * std + mean, self.patch)
        outs = []
        with self._run_dtype(dtype):
            for zc in self._chunks(z, self.config.decode_batch_size):
                outs.append(self.vae.decode(zc).sample)
        return torch.cat(outs)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(images))``."""
        return self.decode(self.encode(images))

