"""RL maths on toy batches, each checked against the formula written out independently."""

from __future__ import annotations

import math

import pytest
import torch

from lensforge.sampling.sampler import sde_std, sde_step
from lensforge.stages.objectives import group_advantages, grpo_loss, nft_loss, nft_reward_weight
from lensforge.stages.rl import old_policy_decay


def _packed(lens, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    return [torch.randn(n, c, generator=g) for _ in range(4)]


def test_nft_loss_equals_the_formula_written_per_sample():
    lens = [4, 9, 6]
    v_theta, v_old, x_t, x0 = _packed(lens)
    v_ref = _packed(lens, seed=1)[0]
    sig = torch.tensor([0.9, 0.4, 0.7])
    r = torch.tensor([0.2, 0.9, 0.5])
    beta, adv_clip, kl_beta = 0.7, 5.0, 0.01
    loss, metrics = nft_loss(v_theta, v_old, x_t, x0, sig, torch.tensor(lens), r, beta=beta, adv_clip=adv_clip,
                             v_ref=v_ref, kl_beta=kl_beta)
    # the same, one sample at a time, with plain tensor algebra
    terms, kls, o = [], [], 0
    for i, n in enumerate(lens):
        s = slice(o, o + n)
        o += n
        vp = beta * v_theta[s] + (1 - beta) * v_old[s]
        vn = (1 + beta) * v_old[s] - beta * v_theta[s]
        xp = x_t[s] - sig[i] * vp
        xn = x_t[s] - sig[i] * vn
        wp = max((xp - x0[s]).abs().mean().item(), 1e-5)
        wn = max((xn - x0[s]).abs().mean().item(), 1e-5)
        pos = ((xp - x0[s]) ** 2).mean() / wp
        neg = ((xn - x0[s]) ** 2).mean() / wn
        terms.append((r[i] * pos + (1 - r[i]) * neg) / beta)
        kls.append(((v_theta[s] - v_ref[s]) ** 2).mean())
    expected = adv_clip * torch.stack(terms).mean() + kl_beta * torch.stack(kls).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["kl/velocity_to_reference"], torch.stack(kls).mean())


def test_nft_gradient_pulls_towards_positive_and_away_from_negative():
    """r = 1: the loss is the flow-matching loss of v_θ itself (β = 1); r = 0: it pushes v_θ away."""
    lens = [5]
    v_theta, v_old, x_t, x0 = _packed(lens, seed=3)
    sig = torch.tensor([0.6])
    v = v_theta.clone().requires_grad_(True)
    nft_loss(v, v_old, x_t, x0, sig, torch.tensor(lens), torch.tensor([1.0]), beta=1.0, adv_clip=1.0)[0].backward()
    target = (x_t - x0) / sig  # the velocity that reconstructs x0 exactly
    step = v.detach() - 0.01 * v.grad
    assert (step - target).norm() < (v_theta - target).norm()


def test_nft_reward_weight_maps_clipped_advantages_to_unit_interval():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    torch.testing.assert_close(nft_reward_weight(a, 5.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_group_advantages_per_prompt_mean_and_batch_or_group_std():
    r = torch.tensor([1.0, 0.0, 0.5, float("nan"), 0.2, 0.4])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(r, g, eps=0.0)
    valid = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.4])
    std = valid.std(unbiased=False)
    torch.testing.assert_close(adv[:3], (torch.tensor([1.0, 0.0, 0.5]) - 0.5) / std)
    assert math.isnan(float(adv[3])), "an unscored image gets no advantage (dropped, not 0)"
    torch.testing.assert_close(adv[4:], (torch.tensor([0.2, 0.4]) - 0.3) / std)
    own = group_advantages(r, g, global_std=False, eps=0.0)
    torch.testing.assert_close(own[4:], torch.tensor([-1.0, 1.0]))
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), clip=1.5)
    assert float(clipped.max()) == 1.5
    same = group_advantages(torch.tensor([0.3, 0.3]), torch.zeros(2, dtype=torch.long))
    assert torch.equal(same, torch.zeros(2)), "a group with equal rewards carries no signal"


def test_sde_step_log_prob_is_the_gaussian_density():
    lens = torch.tensor([6, 4])
    g = torch.Generator().manual_seed(0)
    x, v, xi = (torch.randn(10, 3, generator=g) for _ in range(3))
    s, sn, smax = torch.tensor([0.9, 1.0]), torch.tensor([0.8, 0.95]), torch.tensor([0.97, 0.97])
    a = 0.7
    x_next, mean, scale, lp = sde_step(x, v, s, sn, lens, sigma_max=smax, noise_level=a, noise=xi)
    # Flow-GRPO's mean and std written out per sample, and torch's Normal density
    expected = []
    o = 0
    for i, n in enumerate(lens.tolist()):
        sl = slice(o, o + n)
        o += n
        sig, dt = s[i], sn[i] - s[i]
        std_t = a * torch.sqrt(sig / (1 - (smax[i] if sig >= 1 else sig)))
        mu = x[sl] * (1 + std_t ** 2 / (2 * sig) * dt) + v[sl] * (1 + std_t ** 2 * (1 - sig) / (2 * sig)) * dt
        sd = std_t * torch.sqrt(-dt)
        torch.testing.assert_close(mean[sl], mu)
        torch.testing.assert_close(x_next[sl], mu + sd * xi[sl])
        expected.append(torch.distributions.Normal(mu, sd).log_prob(x_next[sl]).mean())
    torch.testing.assert_close(lp, torch.stack(expected), rtol=1e-5, atol=1e-5)
    # scoring a recorded step gives the same density
    _, _, _, lp2 = sde_step(x, v, s, sn, lens, sigma_max=smax, noise_level=a, prev=x_next)
    torch.testing.assert_close(lp2, lp)
    # at σ = 1 the denominator uses the schedule's second value (flow_grpo's guard against 1/0)
    assert torch.allclose(sde_std(torch.tensor([1.0]), torch.tensor([0.97]), a), a * torch.sqrt(torch.tensor(1 / 0.03)))


def test_grpo_loss_clips_the_ratio_and_adds_the_kl_term():
    logp = torch.tensor([0.0, 0.3, -0.3])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    eps = 0.1
    loss, m = grpo_loss(logp, old, adv, clip_range=eps)
    ratio = logp.exp()
    expected = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()
    torch.testing.assert_close(loss, expected)
    assert float(m["grpo/clipfrac"]) == pytest.approx(2 / 3)
    lens = torch.tensor([2, 1])
    mean, ref, std = torch.ones(3, 2), torch.zeros(3, 2), torch.full((3, 2), 0.5)
    loss_kl, m = grpo_loss(logp[:2], old[:2], adv[:2], clip_range=eps, mean=mean, ref_mean=ref, std=std, lens=lens,
                           kl_beta=0.04)
    torch.testing.assert_close(m["kl/step_mean_to_reference"], torch.tensor(1 / (2 * 0.25)))
    torch.testing.assert_close(loss_kl - grpo_loss(logp[:2], old[:2], adv[:2], clip_range=eps)[0], torch.tensor(0.04 * 2.0))


def test_old_policy_decay_schedule():
    assert old_policy_decay(0, flat=0, rate=0.001, cap=0.5) == 0.0
    assert old_policy_decay(100, flat=0, rate=0.001, cap=0.5) == pytest.approx(0.1)
    assert old_policy_decay(10_000, flat=0, rate=0.001, cap=0.5) == 0.5
    assert old_policy_decay(50, flat=75, rate=0.0075, cap=0.999) == 0.0
    assert old_policy_decay(175, flat=75, rate=0.0075, cap=0.999) == pytest.approx(0.75)
