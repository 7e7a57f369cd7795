"""Timestep embedding and adaptive (modulated) normalisation blocks.

Conventions follow diffusers (and therefore the official Lens code, LENS_SPEC §1.4, §1.5, §1.10):

* :func:`timestep_sinusoid` is diffusers' ``get_timestep_embedding`` with
  ``flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000``: ``[cos | sin]`` of
  ``t · 1000 · exp(−ln(10000)·k/half)``.
* :class:`Modulation` is ``Sequential(SiLU, Linear(dim, n·dim))``, so its linear is named ``1``.
* :func:`modulate` is ``x·(1 + scale) + shift``.
* :class:`AdaLayerNormContinuous` chunks its projection as **(scale, shift)**.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensforge.nn.norms import layer_norm_no_affine


def timestep_sinusoid(
    t_B: Tensor,
    dim: int = 256,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1000.0,
    max_period: float = 10000.0,
) -> Tensor:
    """``[B]`` timesteps → ``[B, dim]`` fp32 sinusoidal features (diffusers ``Timesteps``)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device)
    exponent = exponent / (half - downscale_freq_shift)
    emb = t_B[:, None].float() * torch.exp(exponent)[None, :]
    emb = scale * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_1 → SiLU → linear_2`` (diffusers ``TimestepEmbedding`` parameter names)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class Modulation(nn.Sequential):
    """``SiLU → Linear(dim, num_chunks·dim)``: per-sample shift/scale/gate vectors from ``temb``.

    Output ``[B, num_chunks·dim]``; parameter names ``1.weight``/``1.bias``.
    """

    def __init__(self, dim: int, num_chunks: int):
        super().__init__(nn.SiLU(), nn.Linear(dim, num_chunks * dim))
        self.num_chunks = num_chunks


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive affine: ``x·(1 + scale) + shift`` (shift/scale broadcast or gathered per token)."""
    return x * (1 + scale) + shift


class AdaLayerNormContinuous(nn.Module):
    """Final adaptive LayerNorm: ``LN(x)·(1 + scale) + shift`` with ``(scale, shift) = linear(SiLU(c))``.

    The LayerNorm has no learned affine (diffusers ``AdaLayerNormContinuous(elementwise_affine=False)``).
    ``forward`` takes the conditioning already expanded to one row per token of ``x``.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.silu = nn.SiLU()
        self.linear = nn.Linear(cond_dim, 2 * dim)

    def emb(self, cond: Tensor) -> Tensor:
        """``[B, cond_dim]`` → ``[B, 2·dim]`` (scale first, then shift)."""
        return self.linear(self.silu(cond).to(self.linear.weight.dtype))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = emb.chunk(2, dim=-1)
        return layer_norm_no_affine(x, self.eps) * (1 + scale) + shift
