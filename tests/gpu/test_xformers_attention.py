"""xformers BlockDiagonalMask attention agrees with the SDPA backends (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from lensforge.nn.attention import AutoAttention, SdpaLoopAttention, SdpaMaskedAttention, XformersAttention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 2e-2)])
def test_xformers_matches_sdpa(dtype, tol):
    xf = XformersAttention()
    ok, why = xf.available(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    seqlens = [64 * 32 + 17, 32 * 32 + 90, 32 * 64 + 3]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(sum(seqlens), 24, 64, device="cuda", generator=g, dtype=dtype) for _ in range(3))
    ref = SdpaLoopAttention()(q.float(), k.float(), v.float(), seqlens)
    out = xf(q, k, v, seqlens).float()
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= tol
    small = [40, 7, 13]
    n = sum(small)
    masked = SdpaMaskedAttention()(q[:n].float(), k[:n].float(), v[:n].float(), small)
    assert (xf(q[:n], k[:n], v[:n], small).float() - masked).abs().max().item() <= tol


def test_auto_uses_xformers_on_cuda():
    xf_ok, why = XformersAttention().available(torch.device("cuda"))
    if not xf_ok:
        pytest.skip(why)
    assert isinstance(AutoAttention().backend_for(torch.device("cuda")), XformersAttention)


def test_lens_mmdit_packed_forward_xformers_matches_sdpa_loop():
    if not XformersAttention().available(torch.device("cuda"))[0]:
        pytest.skip("xformers kernels unavailable")
    from lensforge.interfaces import PackedBatch, TextFeatures
    from lensforge_plugins.dit.lens_mmdit import LensMMDiT

    outs = []
    for backend in ("sdpa_loop", "xformers"):
        torch.manual_seed(0)
        model = LensMMDiT(LensMMDiT.Config(flavor="tiny", attention=backend, zero_init=False)).cuda().eval()
        g = torch.Generator().manual_seed(1)
        shapes, txt = [(8, 4), (6, 6), (4, 8)], [7, 0, 12]
        batch = PackedBatch(
            img_tokens=torch.randn(sum(h * w for h, w in shapes), 16, generator=g),
            img_shapes=torch.tensor(shapes),
            sigmas=torch.rand(3, generator=g),
            text=TextFeatures(layers=[torch.randn(sum(txt), 32, generator=g) for _ in range(2)], lengths=torch.tensor(txt)),
        ).to("cuda")
        with torch.no_grad():
            outs.append(model(batch))
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-4
