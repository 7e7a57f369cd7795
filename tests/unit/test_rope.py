"""Multi-axis interleaved RoPE against an independent re-implementation of the official tables."""

from __future__ import annotations

import torch

from lensforge.nn.rope import MultiAxisRope, apply_rope, centred_positions


def _official_style_tables(axes, theta, h, w, txt_len):
    """Qwen-Image/Lens construction: complex tables for positions 0..4095 and −4096..−1, sliced."""
    idx = torch.arange(4096)
    neg = torch.arange(4096).flip(0) * -1 - 1

    def params(index, dim):
        f = torch.outer(index, 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float32).div(dim)))
        return torch.polar(torch.ones_like(f), f)

    pos = torch.cat([params(idx, d) for d in axes], dim=1)
    negf = torch.cat([params(neg, d) for d in axes], dim=1)
    sizes = [d // 2 for d in axes]
    fp, hp, wp = pos.split(sizes, dim=1)
    _, hn, wn = negf.split(sizes, dim=1)
    ff = fp[0:1].view(1, 1, 1, -1).expand(1, h, w, -1)
    fh = torch.cat([hn[-(h - h // 2):], hp[: h // 2]], 0).view(1, h, 1, -1).expand(1, h, w, -1)
    fw = torch.cat([wn[-(w - w // 2):], wp[: w // 2]], 0).view(1, 1, w, -1).expand(1, h, w, -1)
    img = torch.cat([ff, fh, fw], dim=-1).reshape(h * w, -1)
    off = max(h // 2, w // 2)
    txt = pos[off : off + txt_len]
    return img, txt


def test_tables_match_official_construction():
    axes, theta = (8, 12, 12), 10000.0
    rope = MultiAxisRope(axes, theta)
    for h, w in [(4, 8), (5, 5), (7, 3)]:
        ref_img, ref_txt = _official_style_tables(axes, theta, h, w, 6)
        cos, sin = rope.image(h, w)
        assert torch.allclose(cos, ref_img.real, atol=1e-6) and torch.allclose(sin, ref_img.imag, atol=1e-6)
        cos, sin = rope.text(h, w, 6)
        assert torch.allclose(cos, ref_txt.real, atol=1e-6) and torch.allclose(sin, ref_txt.imag, atol=1e-6)


def test_apply_rope_is_complex_multiplication_of_interleaved_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 32, generator=g)
    ang = torch.randn(10, 16, generator=g)
    ref = torch.view_as_real(torch.view_as_complex(x.view(10, 3, 16, 2)) * torch.polar(torch.ones_like(ang), ang)[:, None])
    out = apply_rope(x, torch.cos(ang), torch.sin(ang))
    assert torch.allclose(out, ref.reshape(10, 3, 32), atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation


def test_centred_grid_and_text_offset_examples_from_spec():
    assert centred_positions(64).tolist() == list(range(-32, 32))
    assert centred_positions(5).tolist() == [-3, -2, -1, 0, 1]
    assert MultiAxisRope.text_offset(64, 64) == 32
    assert MultiAxisRope.text_offset(1472 // 16, 736 // 16) == 46


def test_image_tables_are_cached_per_shape():
    rope = MultiAxisRope((8, 28, 28))
    a = rope.image(3, 4)
    assert rope.image(3, 4)[0] is a[0]
    assert rope.image(4, 3)[0] is not a[0]
