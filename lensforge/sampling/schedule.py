"""Lens's flow-matching σ schedules (LENS_SPEC §4) and the training-time resolution shift.

Conventions (shared by training and sampling): ``x_σ = (1 − σ)·x0 + σ·ε``, the DiT predicts the
velocity ``ε − x0`` and receives ``σ ∈ [0, 1]`` (1 = pure noise). A *shift* ``mu`` maps σ to
``σ' = e^mu / (e^mu + (1/σ − 1))`` (diffusers' ``time_shift_type="exponential"``), i.e.
``logit(σ') = logit(σ) + mu``: larger images (more tokens) spend more time at high noise.

* Sampling uses Lens's *empirical mu* (:func:`compute_empirical_mu`), which depends on the token
  count and the number of steps, then :func:`lens_sigmas`.
* Training (:func:`training_shift_mu`) uses the SD3/FLUX linear interpolation of mu between
  ``(base_seq_len, base_shift)`` and ``(max_seq_len, max_shift)`` — the values of Lens's
  scheduler config (256 → 0.5, 4096 → 1.15) — because the empirical formula is tied to a step
  count, which training does not have.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: ``scheduler/scheduler_config.json`` of the released Lens (LENS_SPEC §4), as diffusers writes it.
LENS_SCHEDULER_CONFIG: dict = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.37.1",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "shift_terminal": None,
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


def scheduler_config() -> dict:
    """A copy of the exact diffusers ``FlowMatchEulerDiscreteScheduler`` config Lens ships."""
    return dict(LENS_SCHEDULER_CONFIG)


def compute_empirical_mu(seq_len: int, steps: int) -> float:
    """Lens's shift ``mu`` for ``seq_len`` image tokens and ``steps`` sampler steps (LENS_SPEC §4).

    Above 4300 tokens mu depends on the token count only; below, it interpolates linearly in the
    step count between the 10-step and 200-step lines.
    """
    if seq_len <= 0 or steps <= 0:
        raise ValueError(f"seq_len and steps must be positive, got {seq_len}, {steps}")
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if seq_len > 4300:
        return float(a2 * seq_len + b2)
    m_200 = a2 * seq_len + b2
    m_10 = a1 * seq_len + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * steps + b)


def time_shift(mu: float | Tensor, sigma: Tensor) -> Tensor:
    """``σ' = e^mu / (e^mu + (1/σ − 1))``; σ = 0 maps to 0 and σ = 1 to 1."""
    mu_t = torch.as_tensor(mu, dtype=torch.float64 if sigma.dtype == torch.float64 else torch.float32)
    e = torch.exp(mu_t).to(sigma.device)
    s = sigma.clamp_min(0)
    out = e / (e + (1.0 / s.clamp_min(1e-30) - 1.0))
    return torch.where(s > 0, out, torch.zeros_like(out))


def lens_sigmas(steps: int, seq_len: int, *, as_diffusers: bool = False) -> Tensor:
    """The ``[steps + 1]`` σ' of Lens's sampler: shifted ``linspace(1, 1/N, N)`` then a terminal 0.

    Computed in float64 and returned as float32. ``as_diffusers``: computed exactly as diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` does (the linspace cast to float32, the shift in
    float32 numpy), which differs from the float64 result by at most one float32 ulp on some steps —
    what ``official_rounding`` sampling uses to reproduce the official pipeline bit for bit.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    mu = compute_empirical_mu(seq_len, steps)
    if as_diffusers:
        import numpy as np

        base32 = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
        e = math.exp(mu)
        shifted32 = e / (e + (1 / base32 - 1) ** 1.0)
        out = torch.from_numpy(np.asarray(shifted32)).to(torch.float32)
        return torch.cat([out, out.new_zeros(1)])
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    shifted = time_shift(mu, base)
    return torch.cat([shifted, shifted.new_zeros(1)]).to(torch.float32)


def training_shift_mu(
    seq_len: int | Tensor,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> Tensor:
    """SD3/FLUX resolution shift: mu linear in the token count through the two anchor points.

    Extrapolates linearly outside ``[base_seq_len, max_seq_len]`` (as FLUX's ``calculate_shift``).
    """
    L = torch.as_tensor(seq_len, dtype=torch.float32)
    m = (max_shift - base_shift) / float(max_seq_len - base_seq_len)
    return L * m + (base_shift - m * base_seq_len)


def sample_training_sigmas(
    seq_lens: Tensor,
    *,
    generator: torch.Generator | None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: bool = True,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> Tensor:
    """One σ per sample: logit-normal, then shifted by each sample's own token count.

    ``σ = sigmoid(n)`` with ``n ~ N(logit_mean, logit_std²)``; with ``shift`` on, ``logit(σ)`` is
    moved by :func:`training_shift_mu` of the sample's token count. Drawn on the CPU from
    ``generator`` (reproducible and resumable), returned as float32 ``[B]``.
    """
    n = torch.randn(int(seq_lens.numel()), generator=generator, dtype=torch.float32)
    logits = n * logit_std + logit_mean
    if shift:
        logits = logits + training_shift_mu(
            seq_lens.cpu(), base_seq_len=base_seq_len, max_seq_len=max_seq_len,
            base_shift=base_shift, max_shift=max_shift,
        )
    return torch.sigmoid(logits)


__all__ = [
    "LENS_SCHEDULER_CONFIG", "compute_empirical_mu", "lens_sigmas", "sample_training_sigmas",
    "scheduler_config", "time_shift", "training_shift_mu",
]
