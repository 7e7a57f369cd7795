"""Normalisation and MLP building blocks shared by DiT plugins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, computed in fp32, with a learned scale ``weight``.

    ``y = x / sqrt(mean(x²) + eps) · weight`` (diffusers' ``RMSNorm`` semantics: the statistics are
    taken in fp32, the result is cast back to the input dtype before the scale).
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        x_f = x.float()
        y = (x_f * torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class SwiGLU(nn.Module):
    """Gated MLP ``w2(silu(w1 x) * w3 x)`` without biases (parameter names ``w1``, ``w2``, ``w3``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def layer_norm_no_affine(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last axis without learned scale/shift."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)
