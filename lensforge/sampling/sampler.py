"""Lens's sampler: flow-matching Euler with per-sample shift and norm-rescaled CFG (LENS_SPEC §4).

Every step packs *all* samples — mixed sizes allowed — and their conditional and unconditional
branches into ONE :class:`~lensforge.interfaces.PackedBatch` (cond samples first, then uncond),
so one DiT forward serves the whole batch. Each sample follows its own σ schedule computed from
its own token count (:func:`~lensforge.sampling.schedule.lens_sigmas`), so packing never changes
a sample's result. The Euler update runs in float32.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_path
from lensforge.interfaces import PackedBatch, TextFeatures
from lensforge.sampling.schedule import lens_sigmas

log = logging.getLogger("lensforge.sampling")


def empty_text_like(text: TextFeatures, num_samples: int) -> TextFeatures:
    """Lens's empty-negative rule: zero-length features (same layer widths) for ``num_samples``."""
    ref = text.layers
    return TextFeatures(
        layers=[t.new_zeros(0, t.shape[-1]) for t in ref],
        lengths=torch.zeros(num_samples, dtype=torch.long, device=text.lengths.device),
    )


def cfg_rescale(cond: Tensor, uncond: Tensor, guidance_scale: float, *, dtype: torch.dtype | None = torch.float32) -> Tensor:
    """Norm-rescaled CFG per token: ``comb = u + g(c − u)``, ``v = comb · ‖c‖ / ‖comb‖``.

    Norms are L2 over the channel (last) axis; where ``‖comb‖ = 0`` the scale is 1. Computed in
    ``dtype`` (float32 by default; ``None`` = the inputs' dtype, as the official pipeline does).
    """
    c = cond if dtype is None else cond.to(dtype)
    u = uncond if dtype is None else uncond.to(dtype)
    comb = u + guidance_scale * (c - u)
    n_comb = comb.norm(dim=-1, keepdim=True)
    n_cond = c.norm(dim=-1, keepdim=True)
    scale = torch.where(n_comb > 0, n_cond / n_comb.clamp_min(1e-12), torch.ones_like(n_comb))
    return comb * scale


def _model_dtype_device(dit: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in dit.parameters():
        return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def _progress(it: Any, enabled: bool, total: int) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc="sampling", leave=False)


def model_timesteps(sigmas: Tensor, dtype: torch.dtype, *, official_rounding: bool = False) -> Tensor:
    """The σ values the DiT receives, in its dtype.

    Default: ``σ`` cast to ``dtype``. With ``official_rounding`` the official pipeline's rounding:
    it casts ``t = σ·1000`` (the scheduler's timesteps, float32) to the model dtype and then divides
    by 1000 in that dtype — in bf16 this differs from rounding σ directly on some steps.
    """
    if official_rounding:
        return (sigmas.float() * 1000.0).to(dtype) / 1000
    return sigmas.to(dtype)


def guided_velocity(
    dit: torch.nn.Module,
    x_tok: Tensor,
    shapes: list[tuple[int, int]],
    sigmas: Tensor,
    text: TextFeatures,
    *,
    guidance_scale: float = 1.0,
    negative: TextFeatures | None = None,
    official_rounding: bool = False,
) -> Tensor:
    """The (norm-rescaled CFG) velocity of a packed batch at per-sample noise levels ``sigmas`` ``[B]``.

    One DiT forward: with CFG the conditional and unconditional branches of every sample are packed
    into the same call (conditional first). ``negative=None`` is Lens's empty negative (zero text
    tokens). Returns float32 ``[N_tok, C]`` (in the model dtype with ``official_rounding``, as the
    official pipeline keeps it).

    ``guidance_scale == 1`` skips the unconditional branch (``comb = cond``), except with
    ``official_rounding``, which runs it as the official pipeline does (in bf16 ``u + 1·(c − u)`` is
    not exactly ``c``).
    """
    B = len(shapes)
    dtype, device = _model_dtype_device(dit)
    t = model_timesteps(sigmas.to(device), dtype, official_rounding=official_rounding)
    text = text.to(device=device, dtype=dtype)
    x_in = x_tok.to(device=device, dtype=dtype)
    if guidance_scale == 1.0 and not official_rounding:
        pb = PackedBatch(img_tokens=x_in, img_shapes=torch.as_tensor(list(shapes), dtype=torch.long), sigmas=t, text=text)
        return dit(pb).float()
    neg = empty_text_like(text, B) if negative is None else negative.to(device=device, dtype=dtype)
    if neg.num_samples != B:
        raise LensforgeError(f"guided_velocity: {neg.num_samples} negative samples for {B} shapes")
    pb = PackedBatch(
        img_tokens=torch.cat([x_in, x_in], 0),
        img_shapes=torch.as_tensor(list(shapes) + list(shapes), dtype=torch.long),
        sigmas=torch.cat([t, t]),
        text=TextFeatures.cat([text, neg]),
    )
    out = dit(pb)
    n_tok = x_in.shape[0]
    return cfg_rescale(out[:n_tok], out[n_tok:], guidance_scale, dtype=None if official_rounding else torch.float32)


def euler_step(x_tok: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, lens: Tensor, *,
               official_rounding: bool = False) -> Tensor:
    """One Euler step of the flow ODE, ``x ← x + (σ' − σ)·v``, each sample with its own ``σ → σ'``.

    Computed in float32. With ``official_rounding`` as diffusers' ``FlowMatchEulerDiscreteScheduler.step``
    computes it for a bf16 model: ``dt`` (a 0-dim float32 tensor there) is rounded to ``v``'s dtype and
    multiplied in that dtype, the product is added to the float32 latents, and the sum is cast back to
    ``v``'s dtype (latents stay in the model dtype between steps). Otherwise everything stays float32.
    """
    dt = torch.repeat_interleave((sigma_next - sigma).float(), lens.to(sigma.device))[:, None].to(x_tok.device)
    if official_rounding:
        return (x_tok.float() + dt.to(v.dtype) * v).to(v.dtype)
    return x_tok.float() + dt * v.float()


def _per_token(values: Tensor, lens: Tensor, like: Tensor) -> Tensor:
    return torch.repeat_interleave(values.float(), lens.to(values.device))[:, None].to(like.device)


def sde_std(sigma: Tensor, sigma_max: Tensor, noise_level: float) -> Tensor:
    """Flow-GRPO's noise scale ``σ_t = a·sqrt(σ / (1 − σ))`` per sample (σ = 1 replaced by ``sigma_max``,
    the schedule's second value, to avoid dividing by zero)."""
    s = sigma.float()
    denom = 1.0 - torch.where(s >= 1.0, sigma_max.float(), s)
    return noise_level * torch.sqrt(s / denom)


def sde_step(x_tok: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, lens: Tensor, *, sigma_max: Tensor,
             noise_level: float, noise: Tensor | None = None, prev: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One stochastic step of the Lens sampler's flow as an SDE (Flow-GRPO's ``sde`` form), per sample.

    With ``dt = σ' − σ < 0`` and ``σ_t`` = :func:`sde_std`::

        μ  = x·(1 + σ_t²/(2σ)·dt) + v·(1 + σ_t²(1 − σ)/(2σ))·dt
        x' = μ + σ_t·sqrt(−dt)·ξ,   ξ ~ N(0, I)

    ``noise`` gives ξ (packed like ``x_tok``) or ``prev`` gives x' (to score a recorded step). Returns
    ``(x', μ, std per token, log p(x') per sample)`` — the Gaussian log-density averaged over each
    sample's tokens and channels, in float32 (bf16 overflows here).
    """
    x, v = x_tok.float(), v.float()
    s = _per_token(sigma, lens, x)
    dt = _per_token(sigma_next - sigma, lens, x)
    std_t = _per_token(sde_std(sigma, sigma_max, noise_level), lens, x)
    mean = x * (1 + std_t ** 2 / (2 * s) * dt) + v * (1 + std_t ** 2 * (1 - s) / (2 * s)) * dt
    scale = std_t * torch.sqrt(-dt)
    if prev is None:
        if noise is None:
            raise LensforgeError("sde_step: give noise (to draw x') or prev (to score it)")
        prev = mean + scale * noise.float()
    prev = prev.float()
    log_prob = -((prev - mean) ** 2) / (2 * scale ** 2) - torch.log(scale) - math.log(math.sqrt(2 * math.pi))
    idx = torch.repeat_interleave(torch.arange(len(lens), device=x.device), lens.to(x.device))
    per_sample = torch.zeros(len(lens), device=x.device).index_add_(0, idx, log_prob.mean(-1)) / lens.to(x.device).float()
    return prev, mean, scale, per_sample


@torch.no_grad()
def sample_latents(
    dit: torch.nn.Module,
    text: TextFeatures,
    shapes: list[tuple[int, int]],
    *,
    steps: int = 20,
    guidance_scale: float = 4.0,
    negative: TextFeatures | None = None,
    generator: torch.Generator | None = None,
    noise: list[Tensor] | None = None,
    progress: bool = False,
    official_rounding: bool = False,
) -> list[Tensor]:
    """Integrate the flow ODE from noise to latents for a packed batch of samples.

    Args:
        dit: the denoiser (``PackedBatch`` → ``[N_img, C]`` velocities ``ε − x0``).
        text: positive text features, one sample per entry of ``shapes``.
        shapes: token grid ``(h, w)`` of each sample (sizes may differ).
        steps: Euler steps.
        guidance_scale: CFG scale; 1.0 skips the unconditional branch.
        negative: negative text features (one per sample); ``None`` = Lens's empty negative
            (zero-length features).
        generator: draws the initial noise (CPU) when ``noise`` is not given.
        noise: per-sample initial noise, each ``[h*w, C]`` (packed token layout) or ``[C, h, w]``.
        progress: show a progress bar.
        official_rounding: reproduce the official Lens pipeline's low-precision rounding exactly
            (timesteps rounded as ``t = σ·1000`` in the model dtype then ``/1000``; latents kept in the
            model dtype between steps; CFG in the model dtype, also at scale 1). Default off: σ rounded
            directly, float32 latents and CFG — more accurate in bf16. Identical in float32.

    Returns:
        Per-sample latents ``[C, h, w]`` (float32).
    """
    B = len(shapes)
    if B == 0:
        return []
    if text.num_samples != B:
        raise LensforgeError(f"sample_latents: {text.num_samples} text samples for {B} shapes")
    if steps <= 0:
        raise LensforgeError(f"sample_latents: steps must be positive, got {steps}")
    dtype, device = _model_dtype_device(dit)
    channels = _latent_channels(dit, noise)
    lens = [int(h) * int(w) for h, w in shapes]
    if noise is None:
        noise = [torch.randn(L, channels, generator=generator, dtype=dtype if official_rounding else torch.float32)
                 for L in lens]
    x = []
    for i, n in enumerate(noise):
        n = n.to(dtype) if official_rounding else n.float()
        if n.dim() == 3:  # [C, h, w] -> [h*w, C]
            n = n.flatten(1).T
        if n.shape != (lens[i], channels):
            raise LensforgeError(f"sample_latents: noise {i} has shape {tuple(n.shape)}, expected [{lens[i]}, {channels}]")
        x.append(n)
    x_tok = torch.cat(x, 0).to(device)
    schedules = torch.stack([lens_sigmas(steps, L, as_diffusers=official_rounding) for L in lens], 1).to(device)  # [steps+1, B]
    if negative is not None and negative.num_samples != B:
        raise LensforgeError(f"sample_latents: {negative.num_samples} negative samples for {B} shapes")
    lengths = torch.as_tensor(lens, device=device)
    was_training = dit.training
    dit.eval()
    try:
        for i in _progress(range(steps), progress, steps):
            s, s_next = schedules[i], schedules[i + 1]
            v = guided_velocity(dit, x_tok, shapes, s, text, guidance_scale=guidance_scale, negative=negative,
                                official_rounding=official_rounding)
            x_tok = euler_step(x_tok, v, s, s_next, lengths, official_rounding=official_rounding)
    finally:
        dit.train(was_training)
    x_tok = x_tok.float()
    out_lat = []
    for (h, w), t in zip(shapes, torch.split(x_tok, lens, 0)):
        out_lat.append(t.T.reshape(channels, int(h), int(w)).contiguous())
    return out_lat


def _latent_channels(dit: torch.nn.Module, noise: list[Tensor] | None) -> int:
    if noise:
        n = noise[0]
        return int(n.shape[0] if n.dim() == 3 else n.shape[-1])
    arch = getattr(dit, "arch", None)
    for obj, attr in ((arch, "in_channels"), (dit, "in_channels"), (getattr(dit, "config", None), "in_channels")):
        v = getattr(obj, attr, None) if obj is not None else None
        if isinstance(v, int):
            return v
    spec = type(dit).input_spec(dit.config) if hasattr(type(dit), "input_spec") and hasattr(dit, "config") else None
    if spec is not None:
        return int(spec.latent_channels)
    raise LensforgeError("sample_latents: cannot tell the DiT's latent channels; pass noise=")


@torch.no_grad()
def generate(
    dit: torch.nn.Module,
    vae: Any,
    text_encoder: Any,
    prompts: list[str],
    sizes: list[tuple[int, int]],
    *,
    steps: int = 20,
    guidance_scale: float = 4.0,
    negative_prompt: str = "",
    seeds: list[int] | None = None,
    progress: bool = False,
    official_rounding: bool = False,
) -> list[Tensor]:
    """Prompts → images ``[3, H, W]`` in ``[-1, 1]`` (float32, CPU).

    ``sizes`` are pixel ``(H, W)``, multiples of the VAE's ``downsample_factor``. Each sample's
    initial noise is drawn in packed token shape ``[(H/f)(W/f), C]`` from a CPU generator seeded
    by its own seed (default ``0..B−1``), so results do not depend on batching. An empty or
    whitespace ``negative_prompt`` uses zero-length features (Lens's rule); otherwise it is encoded.
    """
    B = len(prompts)
    if len(sizes) != B:
        raise LensforgeError(f"generate: {len(sizes)} sizes for {B} prompts")
    seeds = list(range(B)) if seeds is None else list(seeds)
    if len(seeds) != B:
        raise LensforgeError(f"generate: {len(seeds)} seeds for {B} prompts")
    f = int(vae.downsample_factor)
    shapes = []
    for H, W in sizes:
        if H % f or W % f or H <= 0 or W <= 0:
            raise LensforgeError(f"generate: size {H}x{W} is not a positive multiple of the VAE's {f}-pixel token")
        shapes.append((H // f, W // f))
    C = int(vae.latent_channels)
    # the official pipeline draws the initial noise directly in the model dtype
    noise_dtype = _model_dtype_device(dit)[0] if official_rounding else torch.float32
    noise = [torch.randn(h * w, C, generator=torch.Generator().manual_seed(int(sd)), dtype=noise_dtype)
             for (h, w), sd in zip(shapes, seeds)]
    text = text_encoder.encode(list(prompts))
    negative = None
    if negative_prompt.strip():
        negative = text_encoder.encode([negative_prompt] * B)
    log.info("sampling %d image(s), steps=%d, guidance=%.2f, sizes=%s", B, steps, guidance_scale, sorted(set(sizes)))
    latents = sample_latents(dit, text, shapes, steps=steps, guidance_scale=guidance_scale,
                             negative=negative, noise=noise, progress=progress, official_rounding=official_rounding)
    vae_dtype, vae_device = _model_dtype_device(vae)
    images = []
    for lat in latents:
        img = vae.decode(lat[None].to(device=vae_device, dtype=vae_dtype))[0]
        images.append(img.float().clamp(-1, 1).cpu())
    return images


def to_pil(image: Tensor):
    """``[3, H, W]`` in ``[-1, 1]`` → PIL image (rounded to uint8)."""
    from PIL import Image

    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def make_grid(images: Sequence[Tensor], *, cols: int | None = None, pad: int = 2):
    """Tile images of possibly different sizes into one PIL image (each cell = the largest size)."""
    from PIL import Image

    if not images:
        raise LensforgeError("make_grid: no images")
    n = len(images)
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    cell_h = max(int(im.shape[1]) for im in images)
    cell_w = max(int(im.shape[2]) for im in images)
    grid = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        pil = to_pil(im)
        x = pad + c * (cell_w + pad) + (cell_w - pil.width) // 2
        y = pad + r * (cell_h + pad) + (cell_h - pil.height) // 2
        grid.paste(pil, (x, y))
    return grid


def labelled_grid(rows: Sequence[tuple[str, Sequence[Any]]], *, cell: int | None = None, label_w: int = 120,
                  pad: int = 2, common_scale: bool = False):
    """Rows of PIL images, each labelled at its left: the side-by-side figures of the docs (one row per model,
    setting or ablation arm, the same prompts and seeds in each column).

    ``cell=None``: every cell is the largest image and images are pasted unscaled; else each image is scaled
    (nearest) to fit ``cell`` — all by the largest image of the grid with ``common_scale``, so different sizes
    stay comparable. Images are centred in their cells. Returns a PIL image.
    """
    from PIL import Image, ImageDraw

    ims = [im for _, row in rows for im in row]
    if not ims:
        raise LensforgeError("labelled_grid: no images")
    biggest = max(max(im.size) for im in ims)
    cell = cell or biggest
    cols = max(len(row) for _, row in rows)
    grid = Image.new("RGB", (label_w + cols * (cell + pad), len(rows) * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, row) in enumerate(rows):
        y = r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, im in enumerate(row):
            if cell != biggest or max(im.size) > cell:
                k = cell / (biggest if common_scale else max(im.size))
                im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.NEAREST)
            grid.paste(im, (label_w + c * (cell + pad) + (cell - im.width) // 2, y + (cell - im.height) // 2))
    return grid


def save_images(images: Sequence[Tensor], out_dir: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Write each image as ``<out_dir>/<name>.png`` (atomically); return the paths."""
    if len(images) != len(names):
        raise LensforgeError(f"save_images: {len(images)} images for {len(names)} names")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for im, name in zip(images, names):
        fname = name if name.endswith(".png") else f"{name}.png"
        p = out / fname
        with atomic_path(p) as tmp:
            to_pil(im).save(tmp, format="PNG")
        paths.append(p)
    return paths


__all__ = [
    "cfg_rescale", "empty_text_like", "euler_step", "generate", "guided_velocity", "labelled_grid", "make_grid", "model_timesteps",
    "sample_latents", "save_images", "sde_std", "sde_step", "to_pil",
]
