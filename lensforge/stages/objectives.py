"""Flow-matching objectives as plain functions on packed mixed-resolution batches.

Conventions (LENS_SPEC §1.4, §1.10, §4): ``x_σ = (1 − σ)·x0 + σ·ε``, the DiT predicts the velocity
``v = ε − x0`` and receives ``σ ∈ [0, 1]``; ``x̂0 = x_σ − σ·v``. Tensors are packed: the tokens of
all samples concatenated (``[N_tok, C]``), with per-sample token counts ``lens`` ``[B]``; one σ
per sample is broadcast to its tokens. Losses are **per-sample means** (over each sample's tokens
and channels) then a mean over samples, so a big image does not outweigh a small one packed in
the same batch. Every stage (pretrain, RL, distillation) builds its loss from these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lensforge.interfaces import PackedBatch, TextFeatures


def tokens_of(latents: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], Tensor]:
    """Per-sample latents ``[C, h, w]`` → packed tokens ``[Σ h·w, C]`` (row-major), shapes, token counts."""
    tokens = [l.flatten(1).T for l in latents]
    shapes = [(int(l.shape[1]), int(l.shape[2])) for l in latents]
    lens = torch.tensor([h * w for h, w in shapes], dtype=torch.long)
    return torch.cat(tokens, 0), shapes, lens


def latents_of(tokens: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Inverse of :func:`tokens_of`: packed ``[Σ h·w, C]`` → per-sample ``[C, h, w]``."""
    lens = [int(h) * int(w) for h, w in shapes]
    C = tokens.shape[-1]
    return [t.T.reshape(C, int(h), int(w)).contiguous() for (h, w), t in zip(shapes, torch.split(tokens, lens, 0))]


def per_token(values: Tensor, lens: Tensor) -> Tensor:
    """One value per sample ``[B]`` → one per token ``[N_tok, 1]``."""
    return torch.repeat_interleave(values, lens.to(values.device))[:, None]


def add_noise(x0: Tensor, noise: Tensor, sigmas: Tensor, lens: Tensor) -> Tensor:
    """``x_σ = (1 − σ)·x0 + σ·ε`` with each sample's own σ."""
    s = per_token(sigmas.to(x0.device, x0.dtype), lens)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching target ``ε − x0``."""
    return noise - x0


def predict_x0(x_t: Tensor, v: Tensor, sigmas: Tensor, lens: Tensor) -> Tensor:
    """``x̂0 = x_σ − σ·v`` per sample."""
    return x_t - per_token(sigmas.to(x_t.device, x_t.dtype), lens) * v


def per_sample_mean(err_tok: Tensor, lens: Tensor) -> Tensor:
    """Per-token values ``[N_tok]`` (or ``[N_tok, C]``, averaged over C first) → per-sample means ``[B]``."""
    if err_tok.dim() == 2:
        err_tok = err_tok.mean(-1)
    lens = lens.to(err_tok.device)
    idx = torch.repeat_interleave(torch.arange(len(lens), device=err_tok.device), lens)
    return torch.zeros(len(lens), device=err_tok.device, dtype=err_tok.dtype).index_add_(0, idx, err_tok) / lens.to(err_tok.dtype)


def packed_call(dit: Any, x_t: Tensor, shapes: list[tuple[int, int]], sigmas: Tensor, text: TextFeatures) -> Tensor:
    """One DiT forward over a packed batch, inputs cast to the DiT's dtype; returns float32 velocities."""
    dtype = next(dit.parameters()).dtype
    pb = PackedBatch(img_tokens=x_t.to(dtype), img_shapes=torch.as_tensor(shapes), sigmas=sigmas.to(x_t.device, dtype),
                     text=text.to(device=x_t.device, dtype=dtype))
    return dit(pb).float()


def flow_matching_loss(dit: Any, latents: list[Tensor], text: TextFeatures, sigmas: Tensor, noise: Tensor
                       ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample-mean flow-matching loss of one packed batch.

    ``sigmas`` ``[B]`` (one per sample) and ``noise`` (packed like the latents' tokens) are drawn by
    the caller, which owns the random stream. Returns ``(loss, {"per_sample", "lens", "sigmas"})``.
    """
    x0, shapes, lens = tokens_of(latents)
    x0 = x0.float()
    noise = noise.to(x0.device)
    sig = sigmas.to(x0.device)
    x_t = add_noise(x0, noise, sig, lens)
    pred = packed_call(dit, x_t, shapes, sig, text)
    per_sample = per_sample_mean((pred - velocity_target(x0, noise)).pow(2), lens)
    return per_sample.mean(), {"sigmas": sigmas, "per_sample": per_sample.detach(), "lens": lens}


__all__ = [
    "add_noise", "flow_matching_loss", "latents_of", "packed_call", "per_sample_mean", "per_token", "predict_x0",
    "tokens_of", "velocity_target",
]
