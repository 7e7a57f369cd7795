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


# ---------------------------------------------------------------------------------------------- RL


def group_advantages(rewards: Tensor, groups: Tensor, *, global_std: bool = True, eps: float = 1e-4,
                     clip: float | None = None) -> Tensor:
    """Group-relative advantages ``A_i = (r_i − mean of its group) / (std + eps)`` (Flow-GRPO, DiffusionNFT).

    ``groups`` ``[N]`` holds each image's group (prompt) index. ``std`` is the std of every valid reward
    in the batch (``global_std``, flow_grpo's default) or of the image's own group. ``NaN`` rewards
    (images a reward could not score) are left out of every statistic and get advantage ``NaN``, so
    callers drop them. ``clip`` clamps to ``±clip``.
    """
    r = rewards.double()
    ok = ~torch.isnan(r)
    adv = torch.full_like(r, float("nan"))
    all_std = r[ok].std(unbiased=False) if int(ok.sum()) > 1 else torch.tensor(0.0, dtype=r.dtype)
    for g in torch.unique(groups):
        m = (groups == g) & ok
        if not bool(m.any()):
            continue
        mean = r[m].mean()
        std = all_std if global_std else (r[m].std(unbiased=False) if int(m.sum()) > 1 else torch.tensor(0.0, dtype=r.dtype))
        adv[m] = (r[m] - mean) / (std + eps)
    if clip is not None:
        adv = torch.where(ok, adv.clamp(-clip, clip), adv)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def nft_reward_weight(advantages: Tensor, adv_clip: float) -> Tensor:
    """DiffusionNFT's optimality probability ``r = clamp((A/adv_clip)/2 + 0.5, 0, 1)`` from clipped advantages."""
    a = advantages.clamp(-adv_clip, adv_clip)
    return ((a / adv_clip) / 2.0 + 0.5).clamp(0.0, 1.0)


def nft_loss(v_theta: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, sigmas: Tensor, lens: Tensor, r: Tensor, *,
             beta: float, adv_clip: float, v_ref: Tensor | None = None, kl_beta: float = 0.0,
             weight_min: float = 1e-5) -> tuple[Tensor, dict[str, Tensor]]:
    """DiffusionNFT's reward-weighted positive/negative flow-matching loss on a packed batch.

    With the trained velocity ``v_θ`` and the old policy's ``v_old`` (no gradient)::

        v⁺ = β·v_θ + (1 − β)·v_old          v⁻ = (1 + β)·v_old − β·v_θ
        x̂0± = x_σ − σ·v±                    w± = mean|x̂0± − x0| per sample (no gradient, ≥ weight_min)
        L = adv_clip · mean_i[ r_i·mean‖x̂0⁺ − x0‖²/w⁺ + (1 − r_i)·mean‖x̂0⁻ − x0‖²/w⁻ ] / β
            + kl_beta · mean_i mean‖v_θ − v_ref‖²

    Every mean over a sample's tokens and channels is its own (mixed sizes count equally). ``r`` is the
    per-sample optimality probability (:func:`nft_reward_weight`). Returns ``(loss, metrics)``.
    """
    old = v_old.detach().float()
    vt = v_theta.float()
    pos = beta * vt + (1.0 - beta) * old
    neg = (1.0 + beta) * old - beta * vt
    x0f = x0.float()
    x0_pos = predict_x0(x_t.float(), pos, sigmas, lens)
    x0_neg = predict_x0(x_t.float(), neg, sigmas, lens)
    with torch.no_grad():
        w_pos = per_sample_mean((x0_pos - x0f).abs(), lens).clamp_min(weight_min)
        w_neg = per_sample_mean((x0_neg - x0f).abs(), lens).clamp_min(weight_min)
    pos_loss = per_sample_mean((x0_pos - x0f) ** 2, lens) / w_pos
    neg_loss = per_sample_mean((x0_neg - x0f) ** 2, lens) / w_neg
    r = r.to(pos_loss.device, pos_loss.dtype)
    policy = ((r * pos_loss + (1.0 - r) * neg_loss) / beta * adv_clip).mean()
    metrics = {"nft/policy_loss": policy.detach(), "nft/old_deviate": per_sample_mean((vt - old) ** 2, lens).mean().detach()}
    loss = policy
    if v_ref is not None:
        kl = per_sample_mean((vt - v_ref.detach().float()) ** 2, lens).mean()
        metrics["kl/velocity_to_reference"] = kl.detach()
        if kl_beta > 0:
            loss = loss + kl_beta * kl
    return loss, metrics


def grpo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *, clip_range: float,
              mean: Tensor | None = None, ref_mean: Tensor | None = None, std: Tensor | None = None,
              lens: Tensor | None = None, kl_beta: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow-GRPO's clipped surrogate at one denoising step (per-sample log-probabilities ``[B]``).

    ``ratio = exp(logp_θ − logp_old)``; ``L = mean(max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε)))``, plus
    ``kl_beta · mean_i mean‖μ_θ − μ_ref‖² / (2σ_t²)`` when the reference step mean is given (σ_t the step's
    noise scale per token, as flow_grpo). Returns ``(loss, metrics)`` (clip fraction, approx. KL).
    """
    adv = advantages.to(log_prob.device, log_prob.dtype)
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    delta = (log_prob - old_log_prob).detach()
    metrics = {
        "grpo/policy_loss": loss.detach(),
        "grpo/clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean().detach(),
        "grpo/approx_kl": (0.5 * delta ** 2).mean(),
        "grpo/ratio_mean": ratio.mean().detach(),
    }
    if mean is not None and ref_mean is not None and std is not None and lens is not None:
        kl = per_sample_mean((mean.float() - ref_mean.detach().float()) ** 2 / (2 * std.float() ** 2), lens).mean()
        metrics["kl/step_mean_to_reference"] = kl.detach()
        if kl_beta > 0:
            loss = loss + kl_beta * kl
    return loss, metrics


__all__ = [
    "add_noise", "flow_matching_loss", "group_advantages", "grpo_loss", "nft_loss", "nft_reward_weight", "latents_of", "packed_call", "per_sample_mean", "per_token", "predict_x0",
    "tokens_of", "velocity_target",
]
