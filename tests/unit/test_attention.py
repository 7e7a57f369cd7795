"""Attention backends: block-diagonal semantics, agreement, registry wiring, auto's choice."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from lensforge import registry
from lensforge.errors import LensforgeError
from lensforge.nn.attention import (
    AutoAttention,
    SdpaLoopAttention,
    SdpaMaskedAttention,
    XformersAttention,
    block_diagonal_mask,
)

SEQLENS = [5, 1, 12, 7]


def _qkv(seed: int = 0, heads: int = 3, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    n = sum(SEQLENS)
    return [torch.randn(n, heads, dim, generator=g) for _ in range(3)]


def test_sdpa_loop_matches_sdpa_masked():
    q, k, v = _qkv()
    a = SdpaLoopAttention()(q, k, v, SEQLENS)
    b = SdpaMaskedAttention()(q, k, v, SEQLENS)
    assert a.shape == q.shape
    assert (a - b).abs().max().item() <= 1e-5


def test_segments_are_independent():
    """Each segment's output equals plain softmax attention over that segment alone."""
    q, k, v = _qkv(1)
    out = SdpaLoopAttention()(q, k, v, SEQLENS)
    start = 0
    for n in SEQLENS:
        qs, ks, vs = (t[start : start + n] for t in (q, k, v))
        w = torch.softmax(torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5, dim=-1)
        ref = torch.einsum("hqk,khd->qhd", w, vs)
        assert torch.allclose(out[start : start + n], ref, atol=1e-5)
        start += n


def test_block_diagonal_mask_layout():
    m = block_diagonal_mask([2, 3])
    assert m.shape == (5, 5)
    assert m[:2, :2].all() and m[2:, 2:].all()
    assert not m[:2, 2:].any() and not m[2:, :2].any()


def test_bad_seqlens_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="do not sum"):
        SdpaLoopAttention()(q, k, v, [3, 4])


def test_registry_names_resolve_to_backends():
    for name, cls in [("auto", AutoAttention), ("sdpa_loop", SdpaLoopAttention),
                      ("sdpa_masked", SdpaMaskedAttention), ("xformers", XformersAttention)]:
        assert registry.get("attention", name) is cls


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_picks_sdpa_loop_on_cpu_and_logs_once(caplog):
    auto = AutoAttention()
    q, k, v = _qkv(2)
    with caplog.at_level(logging.INFO, logger="lensforge.nn.attention"):
        out1 = auto(q, k, v, SEQLENS)
        out2 = auto(q, k, v, SEQLENS)
    assert isinstance(auto.backend_for(torch.device("cpu")), SdpaLoopAttention)
    msgs = [r.getMessage() for r in caplog.records if "attention auto" in r.getMessage()]
    assert len(msgs) == 1 and "sdpa_loop" in msgs[0]
    assert torch.equal(out1, out2)
    assert torch.equal(out1, SdpaLoopAttention()(q, k, v, SEQLENS))


def test_xformers_reports_unavailable_on_cpu():
    xf = XformersAttention()
    ok, why = xf.available(torch.device("cpu"))
    assert not ok and "cpu" in why
    q, k, v = _qkv()
    with pytest.raises(LensforgeError, match="xformers"):
        xf(q, k, v, SEQLENS)


def test_single_segment_equals_plain_sdpa():
    q, k, v = _qkv(3)
    n = q.shape[0]
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
    assert torch.allclose(SdpaLoopAttention()(q, k, v, [n]), ref, atol=1e-6)

