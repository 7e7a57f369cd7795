"""Sampler: norm-rescaled CFG, empty negative, packed mixed-size sampling == per-sample sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lensforge.interfaces import PackedBatch, TextFeatures
from lensforge.sampling.sampler import cfg_rescale, empty_text_like, make_grid, sample_latents, save_images
from lensforge.sampling.schedule import lens_sigmas


class MixingDiT(nn.Module):
    """A toy velocity model that mixes tokens *within* each sample (like attention) and uses σ and text."""

    def __init__(self, c: int = 4, d: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(c, c, generator=g) * 0.3)
        self.t = nn.Parameter(torch.randn(d, c, generator=g) * 0.3)
        self.in_channels = c
        self.calls: list[PackedBatch] = []

    def forward(self, pb: PackedBatch) -> torch.Tensor:
        self.calls.append(pb)
        outs = []
        txt = pb.text
        for i, x in enumerate(pb.split_img(pb.img_tokens)):
            feats = txt.sample(i)[0]
            tvec = feats.mean(0) @ self.t if feats.shape[0] else torch.zeros(x.shape[1])
            outs.append(x @ self.w + x.mean(0, keepdim=True) * pb.sigmas[i] + tvec)
        return torch.cat(outs, 0)


def _text(lengths: list[int], d: int = 6, seed: int = 1) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    return TextFeatures(layers=[torch.randn(sum(lengths), d, generator=g)], lengths=torch.tensor(lengths))


def test_cfg_rescale_matches_formula():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    out = cfg_rescale(c, u, 4.0)
    comb = u + 4.0 * (c - u)
    expect = comb * (c.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out, expect)
    # per-token norms equal the conditional prediction's norms
    torch.testing.assert_close(out.norm(dim=-1), c.norm(dim=-1))
    # g = 1: comb == cond, the rescale is the identity
    torch.testing.assert_close(cfg_rescale(c, u, 1.0), c)
    # a zero combination keeps scale 1 (no NaN)
    z = torch.zeros(2, 8)
    assert torch.equal(cfg_rescale(z, z, 3.0), z)


def test_empty_negative_is_zero_length():
    t = _text([3, 2])
    neg = empty_text_like(t, 2)
    assert neg.lengths.tolist() == [0, 0] and neg.dims == t.dims


def test_one_packed_batch_per_step_with_cond_and_uncond():
    dit = MixingDiT()
    text = _text([3, 5])
    shapes = [(2, 3), (4, 2)]
    sample_latents(dit, text, shapes, steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert len(dit.calls) == 3
    pb = dit.calls[0]
    assert pb.img_shapes.tolist() == [list(s) for s in shapes + shapes]
    assert pb.text.lengths.tolist() == [3, 5, 0, 0]  # empty negatives
    s0 = lens_sigmas(3, 6)[0]
    assert float(pb.sigmas[0]) == pytest.approx(float(s0))
    dit.calls.clear()
    sample_latents(dit, text, shapes, steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert [c.num_samples for c in dit.calls] == [2, 2], "guidance 1.0 skips the unconditional pass"


def test_each_sample_follows_its_own_schedule():
    dit = MixingDiT()
    shapes = [(2, 2), (8, 8)]
    sample_latents(dit, _text([1, 1]), shapes, steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    sig = torch.stack([c.sigmas for c in dit.calls])  # [steps, B]
    torch.testing.assert_close(sig[:, 0], lens_sigmas(4, 4)[:4])
    torch.testing.assert_close(sig[:, 1], lens_sigmas(4, 64)[:4])


def test_packed_mixed_sizes_equal_per_sample():
    dit = MixingDiT()
    shapes = [(2, 3), (4, 4), (3, 1)]
    text = _text([2, 4, 3])
    neg = _text([1, 2, 2], seed=5)
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(h * w, 4, generator=g) for h, w in shapes]
    packed = sample_latents(dit, text, shapes, steps=5, guidance_scale=4.0, negative=neg, noise=noise)
    for i, shp in enumerate(shapes):
        alone = sample_latents(dit, text.select([i]), [shp], steps=5, guidance_scale=4.0,
                               negative=neg.select([i]), noise=[noise[i]])[0]
        assert alone.shape == (4, *shp)
        torch.testing.assert_close(packed[i], alone, atol=1e-5, rtol=1e-5)


def test_packed_equals_per_sample_with_lens_mmdit():
    from lensforge import registry

    cls = registry.get("dit", "lens_mmdit")
    cfg = cls.Config(flavor="tiny", attention="sdpa_loop", zero_init=False)
    torch.manual_seed(0)
    dit = cls(cfg).eval()
    C = dit.arch.in_channels
    dims = list(dit.arch.text_dims)
    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5]
    text = TextFeatures(layers=[torch.randn(sum(lengths), d, generator=g) for d in dims], lengths=torch.tensor(lengths))
    shapes = [(2, 4), (3, 3), (4, 2)]
    noise = [torch.randn(h * w, C, generator=g) for h, w in shapes]
    packed = sample_latents(dit, text, shapes, steps=3, guidance_scale=4.0, noise=noise)
    for i, shp in enumerate(shapes):
        alone = sample_latents(dit, text.select([i]), [shp], steps=3, guidance_scale=4.0, noise=[noise[i]])[0]
        torch.testing.assert_close(packed[i], alone, atol=1e-4, rtol=1e-4)


def test_generator_noise_and_bad_input():
    from lensforge.errors import LensforgeError

    dit = MixingDiT()
    a = sample_latents(dit, _text([2]), [(2, 2)], steps=2, generator=torch.Generator().manual_seed(3))
    b = sample_latents(dit, _text([2]), [(2, 2)], steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])
    with pytest.raises(LensforgeError):
        sample_latents(dit, _text([2, 2]), [(2, 2)], steps=2)


def test_grid_and_save(tmp_path):
    imgs = [torch.rand(3, 16, 32) * 2 - 1, torch.rand(3, 32, 16) * 2 - 1, torch.zeros(3, 16, 16)]
    grid = make_grid(imgs, pad=2)
    assert grid.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
    paths = save_images(imgs, tmp_path / "out", ["a", "b", "c.png"])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"] and all(p.stat().st_size > 0 for p in paths)
    assert not list((tmp_path / "out").glob(".*tmp"))


def _official_pipeline_loop(dit, noise_bf16, shape, text, steps, guidance_scale):
    """Lens's denoising loop written from the official pipeline's steps (LENS_SPEC §4), in the model dtype.

    diffusers' ``FlowMatchEulerDiscreteScheduler`` with Lens's config and ``mu``; per step the timestep
    ``t`` (σ·1000, float32) is cast to the latents' dtype and divided by 1000; one forward over
    ``[x; x]`` with ``[positive; empty negative]`` text; norm-rescaled CFG in the model dtype; the
    scheduler's own ``step`` (float32 update, latents cast back to the model dtype).
    """
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lensforge.sampling.schedule import compute_empirical_mu, scheduler_config

    h, w = shape
    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config())
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(h * w, steps))
    latents = noise_bf16[None]  # [1, S, C] in bf16
    neg = empty_text_like(text, 1)
    both = TextFeatures.cat([text, neg])
    for t in sched.timesteps:
        timestep = t.expand(2).to(latents.dtype)
        pb = PackedBatch(img_tokens=torch.cat([latents[0], latents[0]]), img_shapes=torch.tensor([shape, shape]),
                         sigmas=timestep / 1000, text=both)
        cond, uncond = dit(pb).chunk(2)
        comb = uncond + guidance_scale * (cond - uncond)
        cond_norm = torch.norm(cond, dim=-1, keepdim=True)
        comb_norm = torch.norm(comb, dim=-1, keepdim=True)
        noise_pred = comb * torch.where(comb_norm > 0, cond_norm / comb_norm.clamp_min(1e-12), torch.ones_like(comb_norm))
        latents = sched.step(noise_pred[None], t, latents, return_dict=False)[0]
    return latents[0]


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_official_rounding_reproduces_the_official_pipeline_in_bf16(guidance_scale):
    """``official_rounding=True`` equals the official-pipeline loop bit for bit in bf16; the default differs."""
    from lensforge import registry

    cls = registry.get("dit", "lens_mmdit")
    torch.manual_seed(0)
    dit = cls(cls.Config(flavor="tiny", attention="sdpa_loop", zero_init=False)).eval().to(torch.bfloat16)
    C, dims = dit.arch.in_channels, list(dit.arch.text_dims)
    g = torch.Generator().manual_seed(1)
    text = TextFeatures(layers=[torch.randn(4, d, generator=g).bfloat16() for d in dims], lengths=torch.tensor([4]))
    shape, steps = (4, 6), 6
    noise = torch.randn(shape[0] * shape[1], C, generator=torch.Generator().manual_seed(2), dtype=torch.bfloat16)
    with torch.no_grad():
        ref = _official_pipeline_loop(dit, noise, shape, text, steps, guidance_scale)
    ours = sample_latents(dit, text, [shape], steps=steps, guidance_scale=guidance_scale, noise=[noise],
                          official_rounding=True)[0]
    assert torch.equal(ours, ref.float().T.reshape(C, *shape)), "official rounding must match bit for bit"
    default = sample_latents(dit, text, [shape], steps=steps, guidance_scale=guidance_scale, noise=[noise])[0]
    assert not torch.equal(default, ours), "the default keeps float32 latents/CFG (more accurate in bf16)"


def test_official_timestep_rounding_differs_on_known_steps_at_1024():
    """At 1024² the pipeline's bf16(σ·1000)/1000 differs from bf16(σ) on 1 of 4 and 5 of 20 steps."""
    from lensforge.sampling.sampler import model_timesteps

    for steps, expected in ((4, 1), (20, 5)):
        sig = lens_sigmas(steps, 4096, as_diffusers=True)[:-1]
        official = model_timesteps(sig, torch.bfloat16, official_rounding=True)
        direct = model_timesteps(sig, torch.bfloat16)
        assert int((official != direct).sum()) == expected


def test_diffusers_exact_schedule_matches_the_scheduler():
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lensforge.sampling.schedule import compute_empirical_mu, scheduler_config

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config())
    for steps, L in ((4, 4096), (20, 4096), (50, 24)):
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(L, steps))
        assert torch.equal(lens_sigmas(steps, L, as_diffusers=True), sched.sigmas)
        torch.testing.assert_close(lens_sigmas(steps, L), sched.sigmas, atol=1e-7, rtol=0)


def test_labelled_grid_rows_unscaled_or_fitted_to_a_cell():
    from PIL import Image

    from lensforge.errors import LensforgeError
    from lensforge.sampling.sampler import labelled_grid

    a, b = Image.new("RGB", (32, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    g = labelled_grid([("first", [a, b]), ("second", [b])], label_w=50, pad=2)
    assert g.size == (50 + 2 * 34, 2 * 34)  # cells of the largest image, unscaled
    assert g.getpixel((50 + 16, 16)) == (255, 0, 0) and g.getpixel((50 + 34 + 16, 34 + 0)) == (255, 255, 255)
    assert g.getpixel((50 + 16, 34 + 16)) == (0, 0, 255)
    fitted = labelled_grid([("r", [a, b])], cell=64, label_w=10, pad=0, common_scale=True)
    assert fitted.size == (10 + 128, 64)
    # one scale for both: the 32-wide image fills the cell's width, the 16-wide one half of it
    assert fitted.getpixel((10 + 1, 32)) == (255, 0, 0) and fitted.getpixel((10 + 64 + 16, 32)) == (0, 0, 255)
    assert fitted.getpixel((10 + 64 + 4, 32)) == (255, 255, 255)
    with pytest.raises(LensforgeError):
        labelled_grid([("empty", [])])
