"""``tiny_ae``: a CPU-sized image codec for the embedded-default (tiny) recipes.

Real and useful without any weight file:

* **Encoder** (fixed by default): an orthonormal colour transform (luma + two opponent chroma
  axes) followed by a 2-D DCT-II on non-overlapping ``patch × patch`` blocks, keeping the
  ``luma_coeffs`` / ``chroma_coeffs`` lowest frequencies (zig-zag order). That is one strided
  convolution whose weight rows are orthonormal, so it is cheap (a 256² image costs ~1.5 MFLOP per
  latent channel) and deterministic. Latents are normalised per channel with running statistics
  (like FLUX.2's BatchNorm) so the DiT sees roughly unit-variance tokens.
* **Decoder**: the transpose of the same basis (exactly the least-squares reconstruction from the
  kept coefficients) plus a small residual conv net at full resolution whose last layer starts at
  zero. Out of the box ``decode(encode(x))`` is therefore the orthogonal projection of ``x`` onto
  the kept low-pass subspace; fine-tuning trains the refinement net (and, optionally, the basis) to
  sharpen edges.
* It is a :class:`lightning.LightningModule`: ``training_step`` takes image batches (a tensor or a
  :class:`~lensforge.interfaces.DataBatch` of mixed sizes) and minimises the reconstruction MSE;
  ``calibrate()`` re-estimates the latent statistics; ``save_weights()`` writes a safetensors file
  that ``weights:`` loads back. ``tools/fit_tiny_ae.py`` fits it on the synthetic world.

**Two bases** (``basis:``), both one orthonormal strided convolution, so both are exact on flat colour:

* ``dct`` (default): the lowest block-DCT frequencies of each token, as above. Per-channel
  normalisation whitens the spectrum: every frequency gets unit variance, so under diffusion noise
  an outline's detail coefficients (sparse, heavy-tailed: most ~0, a few at ±10σ) are as loud as the
  token's mean colour and have to be generated at the same noise level.
* ``pixels``: an area-downsampled thumbnail (``pixel_block``× smaller than the image, e.g. 16×16
  for a 64² image) in the same luma/chroma axes; each token packs its ``(patch/pixel_block)²``
  sub-pixels. Decoding upsamples the thumbnail bicubically (then the refinement net). Values are
  bounded colours and neighbouring sub-pixels are correlated, so white diffusion noise drowns
  detail before coarse layout, as in pixel space: the DiT places an object first and draws its
  outline later. Codec ceiling on the tiny recipe's world (48 held-out 64² scenes, verifier): shape
  0.96 (``dct``: 1.00), colour and position 1.00 for both; 27.6 dB (``dct`` 28.1 dB).

**Measured reconstruction quality** (``tools/fit_tiny_ae.py``: synthetic world seed 0, 32 held-out
scenes; default config = 48 channels per 16×16 token, 16× fewer numbers than pixels·3):

==========================================  ===========  ==========
                                            128×128      64×96
==========================================  ===========  ==========
analytic init (no weights)                  28.3 dB      26.6 dB
after 300 decoder steps (AdamW 2e-3, b=8)   28.7 dB      26.9 dB
==========================================  ===========  ==========

(PSNR on images in [-1, 1], peak-to-peak 2; 300 steps take ~1.5 min on one CPU core.) Flat regions
are reproduced up to the low-pass limit; the error sits on shape edges, which the refinement net
sharpens slowly. Fewer coefficients (16+2×8 = 32 channels) give 27.0 dB at 128², more (36+2×14 = 64)
28.8 dB.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, LatentSpec, VAE

from lensforge_plugins.vae.schemas import TinyAESchema

log = logging.getLogger("lensforge.vae.tiny_ae")

#: Orthonormal colour basis: luma and two opponent chroma axes (rows).
COLOR_BASIS = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
        [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
    ]
)


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``[n, n]`` (row ``k`` = frequency ``k``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def zigzag(n: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` lowest 2-D frequencies ``(u, v)`` of an ``n × n`` block, ordered by ``u+v`` then ``u``."""
    order = sorted(((u, v) for u in range(n) for v in range(n)), key=lambda t: (t[0] + t[1], t[0]))
    return order[:count]


def analytic_basis(patch: int, luma: int, chroma: int) -> Tensor:
    """Conv weight ``[luma + 2·chroma, 3, patch, patch]`` with orthonormal rows (colour ⊗ DCT)."""
    d = dct_matrix(patch)
    rows = []
    for comp, count in ((0, luma), (1, chroma), (2, chroma)):
        for u, v in zigzag(patch, count):
            spatial = torch.outer(d[u], d[v])  # [p, p]
            rows.append(COLOR_BASIS[comp].double()[:, None, None] * spatial[None])
    return torch.stack(rows).float()


def pixel_basis(patch: int, block: int) -> Tensor:
    """Conv weight ``[3·g², 3, patch, patch]`` (``g = patch / block``) with orthonormal rows.

    Row ``(component, a, b)`` is a colour axis of :data:`COLOR_BASIS` times the indicator of the
    ``block × block`` sub-square ``(a, b)`` of the token, scaled by ``1/block``: the latent is an
    area-downsampled thumbnail (``block``× smaller than the image) in luma/chroma, its ``g × g``
    sub-pixels packed into each token's channels.
    """
    g = patch // block
    rows = []
    for comp in range(3):
        for a in range(g):
            for b in range(g):
                spatial = torch.zeros(patch, patch, dtype=torch.float64)
                spatial[a * block:(a + 1) * block, b * block:(b + 1) * block] = 1.0 / block
                rows.append(COLOR_BASIS[comp].double()[:, None, None] * spatial[None])
    return torch.stack(rows).float()


def _pixel_stats(patch: int, block: int) -> tuple[Tensor, Tensor]:
    """Initial latent (mean, std) per channel of the ``pixels`` basis for images in ``[-1, 1]``.

    A sub-pixel coefficient is ``block ×`` the mean colour of its sub-square; on the synthetic world
    (seed 0, 64²) luma has mean ≈ 0.33 and std ≈ 0.83 per pixel, the chroma axes std ≈ 0.27.
    """
    g2 = (patch // block) ** 2
    means = [0.33 * block] * g2 + [0.0] * (2 * g2)
    stds = [0.83 * block] * g2 + [0.27 * block] * (2 * g2)
    return torch.tensor(means), torch.tensor(stds)


def _default_stats(patch: int, luma: int, chroma: int) -> tuple[Tensor, Tensor]:
    """Initial latent (mean, std) per channel, an analytic fit for images in ``[-1, 1]``.

    Fitted on the synthetic world (seed 0, 128², patch 16): the DC coefficient of a block of mean
    ``a`` is ``a·patch`` (luma ``a·patch·√3``), luma DC has mean ≈ 0.25·patch and std ≈ 0.83·patch,
    chroma DC std ≈ 0.23·patch, and detail coefficients fall off like ``(u+v)^-1.1`` (luma ≈ 0.1·patch,
    chroma ≈ 0.08·patch at ``u+v = 1``). ``calibrate()`` replaces these with measured statistics.
    """
    means, stds = [], []
    for comp, count in ((0, luma), (1, chroma), (2, chroma)):
        for u, v in zigzag(patch, count):
            if (u, v) == (0, 0):
                means.append(0.25 * patch if comp == 0 else 0.0)
                stds.append((0.83 if comp == 0 else 0.23) * patch)
            else:
                means.append(0.0)
                stds.append((0.1 if comp == 0 else 0.08) * patch / (u + v) ** 1.1)
    return torch.tensor(means), torch.tensor(stds)


class _Refine(nn.Module):
    """Residual conv refinement at full resolution; the last conv starts at zero (identity at init)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, 3, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class TinyAE(TinyAESchema, VAE):
    """CPU-sized codec: fixed colour+DCT patch encoder, transpose decoder with trainable refinement."""

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        problems = self.check_config(c)
        if problems:
            raise LensforgeError("tiny_ae: " + "; ".join(f"{k} {why}" for k, why in problems))
        if c.basis == "pixels":
            basis = pixel_basis(c.patch, c.pixel_block)
            mean, std = _pixel_stats(c.patch, c.pixel_block)
        else:
            basis = analytic_basis(c.patch, c.luma_coeffs, c.chroma_coeffs)
            mean, std = _default_stats(c.patch, c.luma_coeffs, c.chroma_coeffs)
        self.latent_channels = basis.shape[0]
        self.downsample_factor = c.patch
        self.enc_weight = nn.Parameter(basis.clone(), requires_grad=c.train_encoder)
        # dct: synthesis by the transposed basis (trainable); pixels: bicubic upsampling, no weight
        self.dec_weight = nn.Parameter(basis.clone()) if c.basis == "dct" else None
        self.dec_bias = nn.Parameter(torch.zeros(3))
        self.refine = _Refine(c.refine_channels) if c.refine_channels > 0 else None
        self.register_buffer("latent_mean", mean)
        self.register_buffer("latent_std", std)
        if c.weights:
            self.load_weights(c.weights)
        layout = (f"{c.luma_coeffs} luma + 2×{c.chroma_coeffs} chroma DCT" if c.basis == "dct"
                  else f"3 × {(c.patch // c.pixel_block) ** 2} sub-pixels of {c.pixel_block}²")
        log.info("tiny_ae: patch %d, %d channels (%s), refine %d, weights %s",
                 c.patch, self.latent_channels, layout, c.refine_channels, c.weights or "analytic")

    # ------------------------------------------------------------------ codec

    def _check_images(self, images: Tensor) -> None:
        f = self.downsample_factor
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2] % f or images.shape[-1] % f:
            raise LensforgeError(
                f"tiny_ae.encode: expected images [B, 3, H, W] with H, W multiples of {f}, got {tuple(images.shape)}"
            )

    def encode_raw(self, images: Tensor) -> Tensor:
        """Un-normalised coefficients ``[B, C, H/p, W/p]``."""
        self._check_images(images)
        return F.conv2d(images.to(self.enc_weight.dtype), self.enc_weight, stride=self.downsample_factor)

    def encode(self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` → normalised latents ``[B, C, H/p, W/p]`` (deterministic codec)."""
        z = self.encode_raw(images)
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents → images ``[B, 3, h·p, w·p]``."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise LensforgeError(
                f"tiny_ae.decode: expected latents [B, {self.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        z = latents.to(self.enc_weight.dtype) * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)
        x = self._synthesise(z)
        return x.clamp(-1, 1) if self.config.clamp_output else x

    def _synthesise(self, z: Tensor) -> Tensor:
        """Un-normalised coefficients → unclamped image (basis synthesis, then the refinement net)."""
        if self.config.basis == "pixels":
            f = self.config.pixel_block
            b, _, h, w = z.shape
            g = self.config.patch // f
            thumb = z.reshape(b, 3, g, g, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, 3, h * g, w * g) / f
            thumb = torch.einsum("cd,bchw->bdhw", COLOR_BASIS.to(z), thumb)  # luma/chroma → RGB
            x = F.interpolate(thumb, scale_factor=f, mode="bicubic", align_corners=False) if f > 1 else thumb
            x = x + self.dec_bias.view(1, 3, 1, 1)
        else:
            x = F.conv_transpose2d(z, self.dec_weight, self.dec_bias, stride=self.downsample_factor)
        return self.refine(x) if self.refine is not None else x

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(images))`` (differentiable)."""
        return self.decode(self.encode(images))

    # ------------------------------------------------------------------ statistics and weights

    @torch.no_grad()
    def calibrate(self, images: list[Tensor] | Tensor) -> None:
        """Set the latent mean/std buffers from images (a batch or a list of ``[3, H, W]``)."""
        items = [images] if isinstance(images, Tensor) and images.dim() == 4 else [i[None] for i in images]
        z = torch.cat([self.encode_raw(x).permute(0, 2, 3, 1).reshape(-1, self.latent_channels) for x in items])
        self.latent_mean.copy_(z.mean(0))
        self.latent_std.copy_(z.std(0).clamp_min(1e-3))
        log.info("tiny_ae: calibrated latent stats on %d tokens", z.shape[0])

    def save_weights(self, path: str) -> None:
        """Write the state dict (safetensors when the name ends in .safetensors, else torch.save)."""
        sd = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(sd, path, metadata={"config": repr(self.config)})
        else:
            torch.save(sd, path)

    def load_weights(self, path: str) -> None:
        """Load a file written by :meth:`save_weights` or a Lightning checkpoint of a system holding it."""
        if not os.path.isfile(path):
            raise LensforgeError(f"tiny_ae: weights file '{path}' does not exist")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: dict[str, Any] = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd)
        own = set(self.state_dict())
        if not own & set(sd):  # a checkpoint of a parent system: strip the prefix up to our keys
            prefix = next((k[: -len(o)] for k in sd for o in own if k.endswith("." + o)), None)
            if prefix is None:
                raise LensforgeError(f"tiny_ae: '{path}' holds no tiny_ae weights")
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        try:
            self.load_state_dict(sd)
        except RuntimeError as e:
            raise LensforgeError(f"tiny_ae: '{path}' does not match this config: {str(e).splitlines()[0]}") from e
        log.info("tiny_ae: loaded weights from %s", path)

    # ------------------------------------------------------------------ fitting on its own

    def _image_batches(self, batch: Any) -> list[Tensor]:
        if isinstance(batch, Tensor):
            return [batch]
        if isinstance(batch, DataBatch):
            groups: dict[tuple[int, int], list[Tensor]] = {}
            for img in batch.images:
                groups.setdefault(tuple(img.shape[-2:]), []).append(img)
            return [torch.stack(g) for g in groups.values()]
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
            return self._image_batches(batch[0])
        raise LensforgeError(f"tiny_ae.training_step: unsupported batch type {type(batch).__name__}")

    def reconstruction_loss(self, images: Tensor) -> Tensor:
        recon = self.decode(self.encode(images)) if not self.config.clamp_output else self._decode_unclamped(images)
        return F.mse_loss(recon, images.to(recon.dtype))

    def _decode_unclamped(self, images: Tensor) -> Tensor:
        z = self.encode(images) * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)
        return self._synthesise(z)

    def training_step(self, batch: Any, batch_idx: int = 0) -> Tensor:
        groups = self._image_batches(batch)
        n = sum(g.shape[0] for g in groups)
        loss = sum(self.reconstruction_loss(g) * g.shape[0] for g in groups) / n
        if self._trainer is not None:  # also usable from a plain loop
            self.log("train/recon_mse", loss, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.config.lr)


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of images in ``[-1, 1]`` (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)
