"""The benchmark cases behind ``tools/bench.py`` (one function per benchmark)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bench import Result, Row, paired_median_times


def bench_attention(repeats: int, quick: bool) -> Result:
    """Attention backends on CPU at several packed shapes vs padding to the longest sample."""
    from lensforge.nn.attention import SdpaLoopAttention, SdpaMaskedAttention

    torch.manual_seed(0)
    heads, dim = 4, 32
    shapes = {
        "3 samples 1:2/1:1/2:1 @128px-ish": [72 + 20, 64 + 30, 72 + 12],
        "8 mixed (64-256 img tok)": [64 + 24, 256 + 30, 128 + 18, 96 + 40, 200 + 10, 64 + 22, 144 + 31, 256 + 9],
        "2 large (1024 img tok)": [1024 + 100, 512 + 60],
    }
    if quick:
        shapes = dict(list(shapes.items())[:1])
    res = Result(
        title="Attention backends (CPU): packed block-diagonal vs padded batch",
        target="sdpa_loop is the CPU default; it must not be slower than padding",
    )
    loop, masked = SdpaLoopAttention(), SdpaMaskedAttention()
    for label, lens in shapes.items():
        n = sum(lens)
        q, k, v = (torch.randn(n, heads, dim) for _ in range(3))
        L = max(lens)

        def padded() -> torch.Tensor:
            # baseline: pad every sample to the longest and mask keys
            qp = q.new_zeros(len(lens), heads, L, dim)
            kp, vp = torch.zeros_like(qp), torch.zeros_like(qp)
            mask = torch.zeros(len(lens), 1, 1, L, dtype=torch.bool)
            o = 0
            for i, s in enumerate(lens):
                qp[i, :, :s] = q[o : o + s].transpose(0, 1)
                kp[i, :, :s] = k[o : o + s].transpose(0, 1)
                vp[i, :, :s] = v[o : o + s].transpose(0, 1)
                mask[i, ..., :s] = True
                o += s
            out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
            return torch.cat([out[i, :, :s].transpose(0, 1) for i, s in enumerate(lens)])

        t = paired_median_times(
            {"loop": lambda: loop(q, k, v, lens), "masked": lambda: masked(q, k, v, lens), "padded": padded},
            repeats,
        )
        res.rows.append(Row(f"{label}: sdpa_loop", t["loop"] * 1e3, "ms", t["padded"] * 1e3))
        res.rows.append(Row(f"{label}: sdpa_masked", t["masked"] * 1e3, "ms", t["padded"] * 1e3))
    res.notes.append(f"heads={heads}, head_dim={dim}, fp32; baseline = padded SDPA with a key mask")
    return res


BENCHMARKS: dict[str, tuple[Callable[..., Result], str, bool]] = {
    "attention": (bench_attention, "attention backends on CPU at several packed shapes", True),
}
