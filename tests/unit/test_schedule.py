"""The sampler's σ schedule equals LENS_SPEC §4's worked values and diffusers' scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensforge.sampling.schedule import (
    compute_empirical_mu,
    lens_sigmas,
    sample_training_sigmas,
    scheduler_config,
    time_shift,
    training_shift_mu,
)


@pytest.mark.parametrize(
    "seq_len,steps,mu",
    [(4096, 4, 2.29118), (4096, 20, 2.198022), (4096, 50, 2.023351), (8100, 4, 1.827754), (8100, 50, 1.827754)],
)
def test_empirical_mu_worked_values(seq_len, steps, mu):
    assert compute_empirical_mu(seq_len, steps) == pytest.approx(mu, abs=2e-6)


def test_sigmas_1024_four_steps():
    s = lens_sigmas(4, 64 * 64)
    assert s.shape == (5,)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.967384, 0.908144, 0.767200, 0.0]), atol=2e-6, rtol=0)


@pytest.mark.parametrize("steps,last", [(20, 0.321603), (50, 0.133719)])
def test_sigmas_1024_last_value(steps, last):
    s = lens_sigmas(steps, 4096)
    assert s.shape == (steps + 1,)
    assert float(s[0]) == 1.0 and float(s[-1]) == 0.0
    assert float(s[-2]) == pytest.approx(last, abs=2e-6)
    assert bool((s[1:] < s[:-1]).all()), "σ must decrease strictly"


def test_sigmas_1440_four_steps():
    s = lens_sigmas(4, 90 * 90)
    torch.testing.assert_close(s[:4], torch.tensor([1.0, 0.949135, 0.861494, 0.674617]), atol=2e-6, rtol=0)


@pytest.mark.parametrize("steps,seq_len", [(4, 4096), (20, 4096), (50, 8100), (20, 64)])
def test_matches_diffusers_scheduler(steps, seq_len):
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = {k: v for k, v in scheduler_config().items() if not k.startswith("_")}
    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    mu = compute_empirical_mu(seq_len, steps)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu)
    torch.testing.assert_close(lens_sigmas(steps, seq_len), sched.sigmas.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(lens_sigmas(steps, seq_len)[:-1] * 1000, sched.timesteps.float(), atol=1e-3, rtol=0)


def test_scheduler_config_values():
    cfg = scheduler_config()
    assert cfg["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert cfg["use_dynamic_shifting"] is True and cfg["time_shift_type"] == "exponential"
    assert (cfg["base_image_seq_len"], cfg["max_image_seq_len"], cfg["base_shift"], cfg["max_shift"]) == (256, 4096, 0.5, 1.15)
    assert cfg["shift"] == 3.0 and cfg["num_train_timesteps"] == 1000
    cfg["shift"] = 0.0
    assert scheduler_config()["shift"] == 3.0, "scheduler_config() must return a copy"


def test_time_shift_is_a_logit_offset():
    s = torch.tensor([0.1, 0.5, 0.9])
    out = time_shift(1.3, s)
    torch.testing.assert_close(torch.logit(out), torch.logit(s) + 1.3, atol=1e-5, rtol=0)
    assert float(time_shift(1.3, torch.tensor([0.0]))) == 0.0


def test_training_sigmas_shift_with_resolution():
    assert float(training_shift_mu(256)) == pytest.approx(0.5)
    assert float(training_shift_mu(4096)) == pytest.approx(1.15)
    g = torch.Generator().manual_seed(0)
    small = sample_training_sigmas(torch.full((4000,), 16), generator=g)
    g = torch.Generator().manual_seed(0)
    large = sample_training_sigmas(torch.full((4000,), 4096), generator=g)
    assert bool(((small > 0) & (small < 1)).all())
    assert bool((large > small).all()), "more tokens → larger σ for the same draw"
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(sample_training_sigmas(torch.tensor([64, 256]), generator=g1),
                               sample_training_sigmas(torch.tensor([64, 256]), generator=g2))
