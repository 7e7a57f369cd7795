"""``lensforge sample SOURCE [PROMPT …]``: images from a checkpoint, a run folder or an exported folder.

Prompts come from the arguments and/or ``--prompts-file`` (one per line, ``#`` comments and blank
lines skipped). Every prompt is sampled once per seed: ``--seeds 1,2,3`` gives each prompt those
seeds; otherwise ``--seed S`` (default 0) with ``--num-images-per-prompt N`` gives image ``k`` the
seed ``S + k``. Each image's noise depends only on its own seed, so ``--batch-size`` changes speed
and memory, never the pictures.

Sizes: any ``--height``/``--width`` that are multiples of the VAE's token size with an aspect
ratio between 1:2 and 2:1. Lens's scheduler (empirical dynamic shift of the token count and step
count) and its per-token norm-rescaled CFG are used (:func:`lensforge.sampling.sampler.generate`).
Writes ``<out>/<index>_<prompt-slug>_s<seed>.png``, ``grid.png`` and ``samples.json``.

A reasoner (``--reasoner NAME [--reasoner-arg k=v …]``, or the recipe's ``sampling.reasoner`` unless
``--no-reasoner``) rewrites each prompt before the DiT sees it; ``samples.json`` records each image's
``model_prompt`` and every rewrite (raw answer, failures, unparsed words).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.sample")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="checkpoint (.ckpt), run folder, or exported / official Lens folder")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to sample")
    p.add_argument("--prompts-file", help="text file with one prompt per line")
    p.add_argument("--height", type=int, help="image height in pixels (default: the recipe's sampling.height, else 1024)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the recipe's sampling.width, else 1024)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the recipe's, else 20)")
    p.add_argument("--guidance-scale", type=float, help="CFG scale, norm-rescaled per token as Lens (default: the recipe's, else 4.0)")
    p.add_argument("--negative-prompt", default="", help="negative prompt (empty = Lens's zero-feature unconditional branch)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: the recipe's sampling.seed, else 0)")
    p.add_argument("--seeds", help="comma-separated seeds; every prompt is sampled with each")
    p.add_argument("--num-images-per-prompt", type=int, default=1, help="images per prompt with --seed (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="images generated together (default 4)")
    p.add_argument("--out", default="runs/samples", help="output folder (default runs/samples)")
    p.add_argument("--no-ema", action="store_true", help="checkpoints: use the trained weights instead of the EMA")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="DiT dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--official-rounding", action="store_true",
                   help="reproduce the official Lens pipeline's low-precision rounding bit for bit (bf16 timesteps as "
                        "bf16(σ·1000)/1000, latents and CFG in the model dtype); default: float32 latents and CFG")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from lensforge.reasoners.use import add_cli_arguments

    add_cli_arguments(p, recipe_default=True)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the arguments, then the file."""
    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise LensforgeError(f"--prompts-file '{path}' does not exist")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                prompts.append(line)
    if not prompts:
        raise LensforgeError("no prompts: give them as arguments or with --prompts-file")
    return prompts


def check_size(height: int, width: int, multiple: int) -> None:
    """Multiples of the VAE token size, aspect ratio within 1:2 … 2:1."""
    if height <= 0 or width <= 0:
        raise LensforgeError(f"size {height}x{width} must be positive")
    if height % multiple or width % multiple:
        raise LensforgeError(f"size {height}x{width}: height and width must be multiples of {multiple} (the VAE's token size)")
    if max(height, width) > 2 * min(height, width):
        raise LensforgeError(f"size {height}x{width}: aspect ratio must be between 1:2 and 2:1")


def plan_jobs(prompts: list[str], args: argparse.Namespace, default_seed: int) -> list[tuple[str, int]]:
    """``(prompt, seed)`` for every image, prompt-major."""
    if args.seeds:
        try:
            seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
        except ValueError as e:
            raise LensforgeError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from e
        if not seeds:
            raise LensforgeError("--seeds is empty")
        return [(p, s) for p in prompts for s in seeds]
    if args.num_images_per_prompt < 1:
        raise LensforgeError("--num-images-per-prompt must be >= 1")
    base = default_seed if args.seed is None else args.seed
    jobs = []
    for p in prompts:
        for _ in range(args.num_images_per_prompt):
            jobs.append((p, base + len(jobs)))
    return jobs


def slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-") or "prompt"


def run(args: argparse.Namespace) -> int:
    import torch

    from lensforge.commands._models import load_models
    from lensforge.sampling.sampler import generate, make_grid, save_images

    prompts = read_prompts(args)
    if args.batch_size < 1:
        raise LensforgeError("--batch-size must be >= 1")
    dit, vae, te, recipe_cfg, src = load_models(args.source, ema=not args.no_ema)
    sampling = getattr(recipe_cfg, "sampling", None)
    height = args.height or getattr(sampling, "height", None) or 1024
    width = args.width or getattr(sampling, "width", None) or 1024
    steps = args.steps or getattr(sampling, "steps", None) or 20
    guidance = args.guidance_scale if args.guidance_scale is not None else getattr(sampling, "guidance_scale", 4.0)
    if steps < 1:
        raise LensforgeError("--steps must be >= 1")
    check_size(height, width, int(vae.downsample_factor))
    jobs = plan_jobs(prompts, args, int(getattr(sampling, "seed", 0) or 0))
    from lensforge.reasoners.use import attach, reasoner_for, rewrite_all

    reasoner = reasoner_for(args, recipe_cfg)
    rewrites: dict = {}
    if reasoner is not None:
        attach(reasoner, text_encoder=te, recipe_config=recipe_cfg)
        rewrites, line = rewrite_all(reasoner, prompts)
        print(line)
        reasoner.close()
    model_prompt = {p: (rewrites[p].text if p in rewrites else p) for p in prompts}

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    dit.to(device=device, dtype=dtype).eval()
    vae.to(device)
    te.to(device)
    log.info("sampling %d image(s) from %s at %dx%d, %d steps, guidance %.2f, %s %s",
             len(jobs), src, height, width, steps, guidance, device, dtype)

    images = []
    progress = not args.no_progress
    bar = None
    if progress and len(jobs) > args.batch_size:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="images", unit="img")
    for i in range(0, len(jobs), args.batch_size):
        chunk = jobs[i : i + args.batch_size]
        images += generate(
            dit, vae, te, [model_prompt[p] for p, _ in chunk], [(height, width)] * len(chunk), steps=steps,
            guidance_scale=guidance, negative_prompt=args.negative_prompt, seeds=[s for _, s in chunk],
            progress=progress and bar is None, official_rounding=args.official_rounding,
        )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()

    out = Path(args.out)
    names = [f"{k:04d}_{slug(p)}_s{s}" for k, (p, s) in enumerate(jobs)]
    paths = save_images(images, out, names)
    if not args.no_grid:
        make_grid(images).save(out / "grid.png")
    meta = {
        "source": str(src), "height": height, "width": width, "steps": steps, "guidance_scale": guidance,
        "negative_prompt": args.negative_prompt, "ema": not args.no_ema, "official_rounding": args.official_rounding,
        "images": [{"file": p.name, "prompt": pr, "seed": s,
                    **({"model_prompt": model_prompt[pr]} if model_prompt[pr] != pr else {})} for p, (pr, s) in zip(paths, jobs)],
    }
    if reasoner is not None:
        meta["reasoner"] = {"plugin": reasoner.plugin_name, "describe": reasoner.describe(),
                            "rewrites": [rewrites[p].to_dict() for p in dict.fromkeys(prompts)]}
    (out / "samples.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(paths)} image(s){'' if args.no_grid else ' and grid.png'} to {out}")
    return 0
