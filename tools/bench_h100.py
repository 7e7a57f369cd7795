"""H100 benchmarks (issue: performance harness, item 6): 1024² latency, training MFU, xformers vs SDPA.

Runs where a CUDA GPU is present; elsewhere it says what it cannot run. ``python tools/bench.py h100
--quick`` on a machine without CUDA runs the same code path at toy sizes on the CPU (to check the
script, not to measure anything).

Measured (all with random weights, bf16, the real ``lens_mmdit`` 3b8 architecture):

* generation latency at 1024² (4096 image tokens): 20 steps with CFG 5 (cond + uncond packed in
  one forward per step) and 4 steps at CFG 1 (Turbo), DiT only and end to end (text encoding with a
  GPT-OSS-20B-shaped encoder truncated after layer 23 + FLUX.2 VAE decode included);
* training-step MFU: forward + backward of the 3b8 DiT on a packed mixed-resolution batch, FLOPs
  counted by ``torch.utils.flop_counter.FlopCounterMode``, divided by time and the GPU's dense bf16
  peak;
* attention: xformers ``memory_efficient_attention`` (block-diagonal) vs SDPA per sample.

Lens's published targets: 20-step 1024² ≤ 3.15 s and 4-step ≤ 0.84 s (text encoding included),
training MFU ≥ 40 % bf16.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench import Result, Row

#: dense bf16 tensor-core peaks (FLOP/s) by device-name fragment
PEAK_BF16 = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12}


def _peak(name: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _build_dit(flavor: str, attention: str, device, dtype, **over: Any):
    from lensforge import registry

    cls = registry.get("dit", "lens_mmdit")
    with torch.device("meta"):
        model = cls(cls.Config(flavor=flavor, attention=attention, zero_init=False, **over))
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype).eval()


def _text_encoder(device, dtype, cpu: bool):
    """A GPT-OSS-20B-shaped model (random weights) run like the gpt_oss plugin: layers 0..23, no final norm."""
    from transformers import GptOssConfig, GptOssModel

    if cpu:
        cfg = GptOssConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                           vocab_size=1000, layer_types=["sliding_attention", "full_attention"] * 2)
    else:
        cfg = GptOssConfig(hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
                           num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
                           vocab_size=201088, sliding_window=128, rope_theta=150000.0,
                           layer_types=["sliding_attention", "full_attention"] * 12)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = GptOssModel(cfg)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(dtype).eval()
    layers = [5, 11, 17, 23] if not cpu else [1, 3]

    @torch.no_grad()
    def encode(ids):
        out = model(input_ids=ids, output_hidden_states=True)
        # hidden_states[i+1] is the residual output of layer i (the last one is post-norm in
        # transformers, which is why the plugin captures layer 23 with a hook instead)
        return [out.hidden_states[i + 1] for i in layers]

    return encode, cfg.hidden_size, len(layers)


def run(repeats: int = 5, quick: bool = False, dry_run_cpu: bool = False) -> Result:
    res = Result(
        title="H100: 1024² generation latency, training MFU, xformers vs SDPA (lens_mmdit 3b8, bf16, random weights)",
        target="20-step 1024² ≤ 3.15 s and 4-step ≤ 0.84 s with text encoding; training MFU ≥ 40 % bf16",
    )
    if not torch.cuda.is_available() and not dry_run_cpu:
        res.notes.append(
            "CUDA is not available on this machine: nothing measured. Run `python tools/bench.py h100 --record` on an "
            "H100 to measure 1024² latency at 20 and 4 steps (DiT only and with GPT-OSS text encoding + FLUX.2 "
            "decode), training-step MFU (FlopCounterMode) and xformers vs SDPA."
        )
        return res
    from lensforge.interfaces import PackedBatch, TextFeatures
    from lensforge.sampling.sampler import sample_latents

    cpu = dry_run_cpu and not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    dtype = torch.float32 if cpu else torch.bfloat16
    flavor = "tiny" if cpu else "3b8"
    side = 64 if cpu else 1024
    h = w = side // 16
    text_len = 16 if cpu else 128
    encode, enc_dim, n_layers = _text_encoder(device, dtype, cpu)
    dit_over = {} if not cpu else {"text_dims": (enc_dim,) * n_layers}
    backends = ["sdpa_loop"] + ([] if cpu else ["xformers"])
    ids = torch.randint(0, 1000, (1, 97 + text_len), device=device)

    vae_decode = None
    if not cpu:
        from diffusers import AutoencoderKLFlux2

        vae = AutoencoderKLFlux2().to(device, torch.bfloat16).eval()  # the FLUX.2 architecture (default config)

        @torch.no_grad()
        def vae_decode(lat):  # [1, 128, h, w] -> image (unpatchify 2x2 then decode)
            x = lat.reshape(1, 32, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(1, 32, h * 2, w * 2)
            return vae.decode(x).sample

    for backend in backends:
        dit = _build_dit(flavor, backend, device, dtype, **dit_over)
        feats = [f[0, 97:] for f in encode(ids)]
        text = TextFeatures(layers=[f.to(dtype) for f in feats], lengths=torch.tensor([feats[0].shape[0]]))
        for steps, cfg in ((20, 5.0), (4, 1.0)):
            def dit_only():
                with torch.no_grad():
                    return sample_latents(dit, text, [(h, w)], steps=steps, guidance_scale=cfg)

            def end_to_end():
                with torch.no_grad():
                    f = [x[0, 97:] for x in encode(ids)]
                    t = TextFeatures(layers=f, lengths=torch.tensor([f[0].shape[0]]))
                    lat = sample_latents(dit, t, [(h, w)], steps=steps, guidance_scale=cfg)[0]
                    if vae_decode is not None:
                        vae_decode(lat[None].to(torch.bfloat16))

            t_dit = _timed(dit_only, device, repeats)
            t_e2e = _timed(end_to_end, device, repeats)
            target = 3.15 if steps == 20 else 0.84
            res.rows.append(Row(f"{backend}: {side}² {steps} steps CFG {cfg}, DiT only", t_dit, "s", target if not cpu else None,
                                note="baseline column = Lens's published figure"))
            res.rows.append(Row(f"{backend}: {side}² {steps} steps CFG {cfg}, + text encoding + VAE decode", t_e2e, "s",
                                target if not cpu else None, note="baseline column = Lens's published figure"))

        # training MFU: forward + backward of a packed mixed-resolution batch
        from torch.utils.flop_counter import FlopCounterMode

        dit.train()
        for p in dit.parameters():
            p.requires_grad_(True)
        dit.freeze_dead_text_tail()
        grids = [(64, 64), (92, 46), (46, 92), (72, 54)] if not cpu else [(4, 4), (6, 3), (3, 6)]
        n_img = sum(a * b for a, b in grids)
        tl = [text_len] * len(grids)
        batch = PackedBatch(
            img_tokens=torch.randn(n_img, dit.arch.in_channels, device=device, dtype=dtype),
            img_shapes=grids, sigmas=torch.rand(len(grids), device=device, dtype=dtype),
            text=TextFeatures(layers=[torch.randn(sum(tl), d, device=device, dtype=dtype) for d in dit.arch.text_dims], lengths=tl),
        )

        def train_step():
            out = dit(batch)
            out.float().pow(2).mean().backward()
            dit.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as fc:
            train_step()
        flops = fc.get_total_flops()
        t_train = _timed(train_step, device, repeats)
        achieved = flops / t_train
        name = torch.cuda.get_device_name(0) if not cpu else "cpu"
        peak = _peak(name)
        mfu = achieved / peak if peak == peak else float("nan")
        res.rows.append(Row(f"{backend}: training step fwd+bwd ({n_img} img tok, {len(grids)} samples)",
                            achieved / 1e12, "TFLOP/s", None, True,
                            note=f"MFU {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s ({name})" if mfu == mfu else "no peak known"))
        del dit
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if cpu:
        res.notes.append("--dry-run-cpu: toy sizes on the CPU, only checks the script runs; the figures mean nothing")
    return res
