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


def _mixed_samples(n: int, bases: list[int], seed: int = 0, text_len: tuple[int, int] = (20, 60)):
    """``n`` (h, w, text_len) token shapes drawn by the real resolution policy (Lens's nine ratios)."""
    import numpy as np

    from lensforge.data.config import ResolutionPolicyConfig
    from lensforge.data.resolution import ResolutionPolicy

    pol = ResolutionPolicy(ResolutionPolicyConfig(base_resolutions=bases), downsample=16)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = pol.choose(rng)
        out.append((b.height // 16, b.width // 16, int(rng.integers(*text_len)), b.aspect))
    return out


def _train_step_fn(model, opt, make_inputs):
    """A closure doing one forward + per-sample MSE + backward + AdamW step on pre-built inputs."""

    def step():
        opt.zero_grad(set_to_none=True)
        loss = make_inputs()
        loss.backward()
        opt.step()

    return step


def bench_packing(repeats: int, quick: bool) -> Result:
    """Training step on the same mixed-resolution samples: packed vs padded vs one bucket per batch."""
    from lensforge import registry
    from lensforge.interfaces import PackedBatch, TextFeatures

    torch.manual_seed(0)
    cls = registry.get("dit", "lens_mmdit")
    cfg = cls.Config(flavor="small", in_channels=32, out_channels=32, text_dims=(64, 64), attention="sdpa_loop")
    model = cls(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = 12 if quick else 24
    samples = _mixed_samples(n, [256])
    C, D = 32, 64
    data = [(torch.randn(h * w, C), [torch.randn(t, D), torch.randn(t, D)], h, w, t) for h, w, t, _ in samples]
    real_tokens = sum(h * w for _, _, h, w, _ in data)
    sig = torch.rand(n)

    def packed():
        text = TextFeatures(layers=[torch.cat([d[1][i] for d in data]) for i in range(2)], lengths=[d[4] for d in data])
        batch = PackedBatch(img_tokens=torch.cat([d[0] for d in data]), img_shapes=[(d[2], d[3]) for d in data],
                            sigmas=sig, text=text)
        out = model(batch)
        per = [o.pow(2).mean() for o in batch.split_img(out)]
        return torch.stack(per).mean()

    H = max(d[2] for d in data)
    W = max(d[3] for d in data)
    T = max(d[4] for d in data)

    def pad_group(group, gh, gw):
        x = torch.zeros(len(group), gh * gw, C)
        mask_img = torch.zeros(len(group), gh * gw, dtype=torch.bool)
        txt = [torch.zeros(len(group), T, D) for _ in range(2)]
        tmask = torch.zeros(len(group), T, dtype=torch.bool)
        for i, (tok, layers, h, w, t) in enumerate(group):
            grid = torch.zeros(gh, gw, C)
            grid[:h, :w] = tok.reshape(h, w, C)
            x[i] = grid.reshape(-1, C)
            m = torch.zeros(gh, gw, dtype=torch.bool)
            m[:h, :w] = True
            mask_img[i] = m.reshape(-1)
            for l in range(2):
                txt[l][i, :t] = layers[l]
            tmask[i, :t] = True
        return x, mask_img, txt, tmask

    def padded_loss(groups):
        losses = []
        for group, gh, gw, idx in groups:
            x, mimg, txt, tmask = pad_group(group, gh, gw)
            out = model.forward_padded(x, txt, sig[idx], (gh, gw), tmask)
            for i in range(len(group)):
                losses.append(out[i][mimg[i]].pow(2).mean())
        return torch.stack(losses).mean()

    all_padded = [(data, H, W, list(range(n)))]
    buckets: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        buckets.setdefault(s[3], []).append(i)
    bucketed = [([data[i] for i in idx], data[idx[0]][2], data[idx[0]][3], idx) for idx in buckets.values()]

    steps = {
        "packed": _train_step_fn(model, opt, packed),
        "padded": _train_step_fn(model, opt, lambda: padded_loss(all_padded)),
        "bucketed": _train_step_fn(model, opt, lambda: padded_loss(bucketed)),
    }
    t = paired_median_times(steps, repeats)
    tps = {k: real_tokens / v for k, v in t.items()}
    res = Result(
        title="Packing: training step on the same mixed-resolution samples (real image tokens/s)",
        target="packed ≥ 1.5× padded real-token throughput on the default mixed-resolution mix",
    )
    res.rows.append(Row("packed (lensforge) vs padded to the largest sample", tps["packed"], "tok/s", tps["padded"], True))
    res.rows.append(Row("packed (lensforge) vs one bucket per batch", tps["packed"], "tok/s", tps["bucketed"], True))
    pad_tokens = n * H * W
    res.notes.append(
        f"{n} samples at base 256 px, Lens's nine aspect ratios ({len(buckets)} distinct buckets drawn), "
        f"{real_tokens} real image tokens; padding to the largest grid {H}x{W} computes {pad_tokens} image tokens "
        f"({real_tokens / pad_tokens:.0%} useful); lens_mmdit 'small' flavor, fp32, sdpa_loop attention in all three; "
        "bucketed = one forward per aspect-ratio bucket (batch = that bucket's samples) in the same optimizer step"
    )
    return res


def bench_h100(repeats: int, quick: bool) -> Result:
    """1024² latency at 20/4 steps, training MFU and xformers vs SDPA on an H100 (prints what it cannot run)."""
    import bench_h100

    # --quick on a machine without CUDA runs the same code path at toy sizes (a script check)
    return bench_h100.run(repeats=repeats, quick=quick, dry_run_cpu=quick and not torch.cuda.is_available())


BENCHMARKS: dict[str, tuple[Callable[..., Result], str, bool]] = {
    "packing": (bench_packing, "training step: packed vs padded vs one bucket per batch", True),
    "attention": (bench_attention, "attention backends on CPU at several packed shapes", True),
    "h100": (bench_h100, "H100: 1024² latency (20/4 steps), training MFU, xformers vs SDPA", False),
}
