"""The benchmark cases behind ``tools/bench.py`` (one function per benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench import REPO, Result, Row, paired_median_times


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


SMOKE_RECIPE = "recipes/tiny/pretrain.yaml"


def bench_framework(repeats: int, quick: bool) -> Result:
    """``lensforge fit`` steps vs a hand-written loop with the same model, batches and optimizer."""
    import statistics
    import tempfile
    import time

    import lightning as L

    from lensforge.recipe import load_recipe
    from lensforge.stages import pretrain as pretrain_mod
    from lensforge.stages.ema import ema_decay_at, ema_update_
    from lensforge.data import build_datamodule

    steps = 30 if quick else 80
    skip = 10  # warm-up steps excluded from both medians (memo fills, allocator warm-up)
    out = tempfile.mkdtemp(prefix="lf_bench_fw_")
    overrides = [f"output_dir={out}/fit", f"trainer.max_steps={steps}", "trainer.progress_bar=false",
                 "sampling.every_n_steps=0", "sampling.num_prompts=0", f"checkpoint.every_n_steps={10 * steps}",
                 "resume=never"]
    recipe = load_recipe(SMOKE_RECIPE, overrides)

    def minimal_loop() -> list[float]:
        """The hand-written loop: same recipe, model init, data order, encoders, loss, AdamW, clipping, EMA."""
        cfg = recipe.config
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        stage = cfg.stage.cls.build(recipe)
        dit, vae = stage.dit, stage.vae
        params = [p for p in dit.parameters() if p.requires_grad]
        oc = cfg.optim
        opt = torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay,
                                foreach=True)  # as the stage does on the CPU
        dm = build_datamodule(cfg.data, downsample=int(vae.downsample_factor), seed=cfg.seed)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        loop_dt = []
        t_prev = None
        for i in range(steps):
            t = time.perf_counter()
            if t_prev is not None and i > skip:
                loop_dt.append(t - t_prev)
            t_prev = t
            batch = next(loader)
            latents, text = stage.encode_batch(batch)
            loss, _ = stage.flow_matching_loss(latents, text)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.trainer.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
            opt.step()
            if getattr(stage, "ema_dit", None) is not None:
                ema_update_(stage.ema_dit, dit, ema_decay_at(i, stage.config.ema_decay, stage.config.ema_warmup))
        return loop_dt

    # bracket the lensforge run between two runs of the minimal loop (machine drift hits both sides)
    loop_before = minimal_loop()
    # 1) lensforge fit, in-process, timing each training_step call (includes data, Lightning, logging, EMA)
    stamps: list[float] = []
    orig = pretrain_mod.PretrainStage.training_step

    def timed_step(self, batch, batch_idx):
        stamps.append(time.perf_counter())
        return orig(self, batch, batch_idx)

    pretrain_mod.PretrainStage.training_step = timed_step
    try:
        recipe.config.stage.cls.run(recipe)
    finally:
        pretrain_mod.PretrainStage.training_step = orig
    fit_dt = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:])]

    loop_after = minimal_loop()
    loop_dt = loop_before + loop_after
    fit_med, loop_med = statistics.median(fit_dt), statistics.median(loop_dt)
    res = Result(
        title="Framework overhead: `lensforge fit` step vs a hand-written PyTorch loop (same model, batches, optimizer)",
        target="lensforge ≤ 1.10× the minimal loop's step time",
    )
    res.rows.append(Row("median step time", fit_med * 1e3, "ms", loop_med * 1e3,
                        note=f"overhead ×{fit_med / loop_med:.3f} (ratio column = loop/lensforge); loop medians "
                             f"before/after the fit run: {statistics.median(loop_before) * 1e3:.1f}/"
                             f"{statistics.median(loop_after) * 1e3:.1f} ms"))
    res.notes.append(
        f"{SMOKE_RECIPE}, {steps} steps, first {skip} excluded; both include data loading, frozen-encoder "
        "memo, flow-matching loss, backward, clipping, AdamW and EMA; lensforge adds Lightning, MLflow "
        "logging and its callbacks"
    )
    return res


def bench_sampler(repeats: int, quick: bool) -> Result:
    """lensforge's sampler vs a minimal Euler loop on the same model; 4 vs 20 vs 50 steps."""
    from lensforge import registry
    from lensforge.interfaces import PackedBatch, TextFeatures
    from lensforge.sampling.sampler import cfg_rescale, sample_latents
    from lensforge.sampling.schedule import lens_sigmas

    torch.manual_seed(0)
    cls = registry.get("dit", "lens_mmdit")
    dit = cls(cls.Config(flavor="tiny", num_layers=4, in_channels=48, out_channels=48, text_dims=(384, 384),
                         attention="sdpa_loop", zero_init=False)).eval()
    n_img, h, w, C = 4, 8, 8, 48
    text = TextFeatures(layers=[torch.randn(4 * 30, 384) for _ in range(2)], lengths=[30] * n_img)
    noise = [torch.randn(h * w, C) for _ in range(n_img)]
    g = 4.0

    @torch.no_grad()
    def minimal(steps: int):
        sig = lens_sigmas(steps, h * w).float()
        x = torch.cat(noise)
        empty = TextFeatures(layers=[t[:0] for t in text.layers], lengths=[0] * n_img)
        both = TextFeatures.cat([text, empty])
        shapes = [(h, w)] * (2 * n_img)
        for i in range(steps):
            pb = PackedBatch(img_tokens=torch.cat([x, x]), img_shapes=shapes,
                             sigmas=sig[i].expand(2 * n_img), text=both)
            v = dit(pb)
            cond, uncond = v.chunk(2)
            v = cfg_rescale(cond, uncond, g)
            x = x + (sig[i + 1] - sig[i]) * v
        return x

    res = Result(title="Sampling: lensforge sampler vs a minimal Euler loop (same model, 4 images 128², CFG 4)",
                 target="lensforge ≤ 1.05× the minimal loop")
    for steps in ((4, 20) if quick else (4, 20, 50)):
        t = paired_median_times({
            "lensforge": lambda: sample_latents(dit, text, [(h, w)] * n_img, steps=steps, guidance_scale=g,
                                                noise=noise),
            "minimal": lambda: minimal(steps),
        }, max(1, repeats // 2) if steps == 50 else repeats)
        res.rows.append(Row(f"{steps} steps: seconds per image", t["lensforge"] / n_img, "s", t["minimal"] / n_img))
    res.notes.append("lens_mmdit tiny flavor (4 blocks, width 64), fp32 CPU; both do one packed cond+uncond forward per step")
    return res


def bench_turbo(repeats: int, quick: bool) -> Result:
    """Seconds per image: a 4-step CFG-free student (Lens-Turbo) vs the 20-step CFG teacher, same architecture."""
    from lensforge.recipe import load_recipe
    from lensforge.sampling.sampler import generate, sample_latents

    recipe = load_recipe(REPO / "recipes" / "tiny" / "distill.yaml")
    cfg = recipe.config
    torch.manual_seed(0)
    teacher = cfg.model.dit.build().eval()
    for p in teacher.parameters():  # trained-looking weights (adaLN-Zero starts as identity blocks)
        p.data.normal_(0, 0.02)
    student = cfg.model.dit.build().eval()
    student.load_state_dict(teacher.state_dict())
    vae, te = cfg.model.vae.build().eval(), cfg.model.text_encoder.build().eval()
    n = 4 if quick else 16
    prompts = [f"A huge {c} {s} in the centre on a plain cream background." for c, s in
               zip(["red", "green", "blue", "yellow"] * 4, ["circle", "square", "triangle", "circle"] * 4)][:n]
    sizes = [(64, 64), (48, 80), (80, 48), (64, 64)] * (n // 4)
    f = int(vae.downsample_factor)
    shapes = [(h // f, w // f) for h, w in sizes]
    text = te.encode(prompts)
    C = int(vae.latent_channels)
    noise = [torch.randn(h * w, C, generator=torch.Generator().manual_seed(i)) for i, (h, w) in enumerate(shapes)]
    g = cfg.stage.config.teacher_guidance
    res = Result(title=f"Turbo: 4-step CFG-free student vs 20-step CFG {g:g} teacher (tiny recipe DiT, {n} images "
                       "of 3 sizes packed)", target="≥ 8× (4 DiT evaluations per image against 20 × 2)")
    t = paired_median_times({
        "student": lambda: sample_latents(student, text, shapes, steps=4, guidance_scale=1.0, noise=noise),
        "teacher": lambda: sample_latents(teacher, text, shapes, steps=20, guidance_scale=g, noise=noise),
    }, repeats)
    res.rows.append(Row("DiT sampling, 64² class (15–16 tokens/image): seconds per image", t["student"] / n, "s",
                        t["teacher"] / n))
    big = [(16, 16), (12, 20), (20, 12), (16, 16)]  # 256² class: compute, not per-call overhead, dominates
    big_noise = [torch.randn(h * w, C, generator=torch.Generator().manual_seed(i)) for i, (h, w) in enumerate(big)]
    big_text = te.encode(prompts[:4])
    t = paired_median_times({
        "student": lambda: sample_latents(student, big_text, big, steps=4, guidance_scale=1.0, noise=big_noise),
        "teacher": lambda: sample_latents(teacher, big_text, big, steps=20, guidance_scale=g, noise=big_noise),
    }, max(1, repeats // 2))
    res.rows.append(Row("DiT sampling, 256² class (240–256 tokens/image): seconds per image", t["student"] / 4, "s",
                        t["teacher"] / 4))
    seeds = list(range(n))
    t = paired_median_times({
        "student": lambda: generate(student, vae, te, prompts, sizes, steps=4, guidance_scale=1.0, seeds=seeds),
        "teacher": lambda: generate(teacher, vae, te, prompts, sizes, steps=20, guidance_scale=g, seeds=seeds),
    }, repeats)
    res.rows.append(Row("prompt → image (text encoder + DiT + decode): seconds per image", t["student"] / n, "s",
                        t["teacher"] / n))
    res.notes.append("both with lensforge's sampler: the teacher packs its conditional and unconditional (zero text "
                     "tokens) branches into one DiT call per step, the student makes one conditional call per step")
    res.notes.append("end to end includes the frozen MiniLM text encoder (22.7M parameters, once per prompt) and the "
                     "tiny_ae decode, the same for both")
    return res


def training_consumption(recipe_path: str = SMOKE_RECIPE) -> float:
    """Samples/s the tiny recipe's training step consumes: 8 real steps (encoders' memo warm) on this machine."""
    import time

    import lightning as L

    from lensforge.data import build_datamodule
    from lensforge.recipe import load_recipe

    recipe = load_recipe(recipe_path, ["resume=never"])
    cfg = recipe.config
    L.seed_everything(0, verbose=False)
    stage = cfg.stage.cls.build(recipe)
    dit = stage.dit
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    dm = build_datamodule(cfg.data, downsample=16, seed=0)
    dm.setup("fit")
    batches = [b for b, _ in zip(dm.train_dataloader(), range(12))]
    for b in batches[:4]:  # fill the memo like a long run (steady state)
        stage.encode_batch(b)

    def step(b):
        latents, text = stage.encode_batch(b)
        loss, _ = stage.flow_matching_loss(latents, text)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in batches[:4]:
        step(b)
    t0 = time.perf_counter()
    n = 0
    for b in batches[4:]:
        step(b)
        n += len(b)
    return n / (time.perf_counter() - t0)


def bench_data(repeats: int, quick: bool) -> Result:
    """Loader samples/s (synthetic world, WebDataset shards) at 0/1/2 workers vs the training step's consumption."""
    import tempfile
    import time

    from lensforge.data import build_datamodule
    from lensforge.data.shards import ShardWriter, open_source, raw_record
    from lensforge.recipe import load_recipe

    recipe = load_recipe(SMOKE_RECIPE, ["resume=never"])
    cfg = recipe.config
    n_batches = 20 if quick else 60

    def rate(data_cfg, workers: int) -> float:
        import dataclasses

        dc = dataclasses.replace(data_cfg, loader=dataclasses.replace(data_cfg.loader, num_workers=workers))
        dm = build_datamodule(dc, downsample=16, seed=0)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        for _ in range(3):  # workers start, first batches
            next(it)
        t0, n = time.perf_counter(), 0
        for _ in range(n_batches):
            n += len(next(it))
        return n / (time.perf_counter() - t0)

    # shards built from the same synthetic world
    tmp = tempfile.mkdtemp(prefix="lf_bench_data_")
    src = open_source("synthetic:512")
    w = ShardWriter(tmp, samples_per_shard=128)
    for i in range(len(src)):
        w.write(raw_record(src, i))
    w.close()
    import dataclasses

    from lensforge.recipe.plugin_config import PluginRef

    wds_cls = __import__("lensforge.registry", fromlist=["get"]).get("data", "webdataset")
    wds_cfg = dataclasses.replace(cfg.data, source=PluginRef("data", "webdataset", wds_cls, wds_cls.Config(path=tmp)))

    consumption = training_consumption()
    res = Result(title="Data: loader throughput vs the training step's consumption (samples/s)",
                 target="≥ 5× the training step's consumption at 2 workers")
    for label, dcfg in (("synthetic world", cfg.data), ("WebDataset shards", wds_cfg)):
        for workers in (0, 1, 2):
            r = rate(dcfg, workers)
            res.rows.append(Row(f"{label}, {workers} workers", r, "samples/s", consumption, True,
                                note="baseline = training step's consumption"))
    res.notes.append(f"{SMOKE_RECIPE} data settings (base 64 px, 3 aspect ratios, packed); training consumption "
                     f"{consumption:.0f} samples/s measured on the same recipe's model (memo warm)")
    return res


def bench_h100(repeats: int, quick: bool) -> Result:
    """1024² latency at 20/4 steps, training MFU and xformers vs SDPA on an H100 (prints what it cannot run)."""
    import bench_h100

    # --quick on a machine without CUDA runs the same code path at toy sizes (a script check)
    return bench_h100.run(repeats=repeats, quick=quick, dry_run_cpu=quick and not torch.cuda.is_available())


def bench_cli(repeats: int, quick: bool) -> Result:
    """Wall time of quick CLI verbs (``--help``, ``plugins``, ``validate``) vs a baseline revision, same run.

    The baseline is a git worktree of ``LENSFORGE_BENCH_CLI_BASELINE`` (default ``512edd5``, the
    revision before validation stopped importing torch/Lightning), run with the same interpreter
    and the same installed dependencies; its code shadows the checkout's through ``PYTHONPATH``.
    """
    import shutil
    import tempfile

    rev = os.environ.get("LENSFORGE_BENCH_CLI_BASELINE", "512edd5")
    tmp = Path(tempfile.mkdtemp(prefix="lf_bench_cli_"))
    base = tmp / "baseline"
    r = subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench cli: cannot check out baseline {rev}: {r.stderr.strip()}")
    try:
        cases = [("--help", ["--help"]), ("plugins", ["plugins"]), ("plugins dit lens_mmdit", ["plugins", "dit", "lens_mmdit"]),
                 ("validate tiny/pretrain.yaml", ["validate", "recipes/tiny/pretrain.yaml", "-q"]),
                 ("validate lens_3b8.yaml --portable", ["validate", "recipes/lens_3b8.yaml", "--portable", "-q"])]
        if quick:
            cases = cases[1:4:2]

        def runner(root: Path, args: list[str]) -> Callable[[], object]:
            env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'plugins'}", LENS_ROOT="/nonexistent",
                       LENS_SHARDS="/nonexistent")

            def go() -> None:
                out = subprocess.run([sys.executable, "-m", "lensforge.cli", *args], cwd=root, env=env,
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"bench cli: {' '.join(args)} failed in {root}: {out.stderr[-500:]}")
            return go

        res = Result(title="CLI: wall time of quick verbs (this checkout vs a baseline revision)",
                     target="`plugins` and `validate` ≤ 2 s on this machine")
        for label, args in cases:
            t = paired_median_times({"new": runner(REPO, args), "old": runner(base, args)}, repeats=repeats)
            res.rows.append(Row(f"lensforge {label}", t["new"], "s", t["old"], note=f"baseline = {rev}"))
        res.notes.append("one process per call (interpreter start-up included); medians of alternating runs")
        return res
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def bench_data_scale(repeats: int, quick: bool) -> Result:
    """WebDataset at 1M samples: index build, resident bytes/sample, 2-worker start-up, throughput local and
    from S3 / HTTP servers on 127.0.0.1 — vs today's reader (a baseline revision) in the same run."""
    from bench_data_scale import run

    return run(repeats=repeats, quick=quick)


BENCHMARKS: dict[str, tuple[Callable[..., Result], str, bool]] = {
    "framework": (bench_framework, "`lensforge fit` steps vs a minimal PyTorch loop", True),
    "cli": (bench_cli, "`lensforge plugins` / `validate` wall time vs a baseline revision", True),
    "sampler": (bench_sampler, "lensforge sampler vs a minimal Euler loop; 4/20/50 steps", True),
    "turbo": (bench_turbo, "seconds per image: 4-step CFG-free student vs 20-step CFG teacher", True),
    "data": (bench_data, "loader samples/s (synthetic, shards) at 0/1/2 workers vs training consumption", True),
    "data_scale": (bench_data_scale, "1M-sample shards: index, memory, start-up, local + S3/HTTP throughput vs today's reader", True),
    "packing": (bench_packing, "training step: packed vs padded vs one bucket per batch", True),
    "attention": (bench_attention, "attention backends on CPU at several packed shapes", True),
    "h100": (bench_h100, "H100: 1024² latency (20/4 steps), training MFU, xformers vs SDPA", False),
}
