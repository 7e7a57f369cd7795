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
