"""Score a trained run on held-out prompts of its synthetic world with the verifier.

    python tools/eval_run.py runs/tiny_pretrain [--prompts 48] [--steps 20] [--cfg 4] [--size 64x64]

Loads the run's newest checkpoint (EMA weights; a .ckpt works too — an exported folder does not,
it carries no training recipe to say which world to draw from), draws ``--prompts`` held-out
prompts from the recipe's data source (``eval_prompts``, a namespace the training scenes never use,
the same prompts validation sampling draws first), samples one image per prompt (seed = prompt index) and prints the
verifier's per-attribute means plus, for shape, a confusion table of prompted shape → detected shape
of the matched object. ``--out DIR`` also writes the images, a grid and ``results.json``.
The validation sampling during training does the same on ``sampling.num_prompts`` prompts; this
tool exists to score more prompts, other sampler settings and other sizes after the fact.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x96 (height x width), got '{text}'") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run folder or a .ckpt")
    ap.add_argument("--prompts", type=int, default=48, help="held-out prompts to score (default 48)")
    ap.add_argument("--seed", type=int, default=0, help="eval-prompt seed (default 0, as validation sampling)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's sampling.steps)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the recipe's)")
    ap.add_argument("--size", type=_size, default=None, help="HxW in pixels (default: the recipe's sampling size)")
    ap.add_argument("--raw", action="store_true", help="score the raw weights instead of the EMA")
    ap.add_argument("--out", default=None, help="also write images, a grid and results.json here")
    args = ap.parse_args(argv)

    from lensforge.commands._models import load_models
    from lensforge.data.verifier import verify
    from lensforge.errors import LensforgeError
    from lensforge.sampling.sampler import generate, make_grid, save_images
    from lensforge.stages.callbacks import eval_items, mean_scores

    try:
        dit, vae, te, cfg, src = load_models(args.source, ema=not args.raw)
        if getattr(cfg, "data", None) is None:
            raise LensforgeError(f"{args.source} carries no training recipe (an exported folder?): "
                                 "pass a run folder or a .ckpt, so the world of its prompts is known")
        items = [it for it in eval_items(cfg, args.prompts, args.seed) if it["scene"] is not None]
        if not items:
            raise LensforgeError(f"the recipe's data source '{cfg.data.source.name}' gives no held-out prompts "
                                 "with scenes to verify (needs a synthetic world and no sampling.prompts)")
    except LensforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = cfg.sampling.steps if args.steps is None else args.steps
    gs = cfg.sampling.guidance_scale if args.cfg is None else args.cfg
    size = args.size or (cfg.sampling.height, cfg.sampling.width)
    images = []
    batch = 16
    for i in range(0, len(items), batch):
        part = items[i:i + batch]
        images += generate(dit, vae, te, [p["prompt"] for p in part], [size] * len(part), steps=steps,
                           guidance_scale=gs, seeds=list(range(i, i + len(part))), progress=True)
    confusion: Counter[tuple[str, str]] = Counter()
    per_sample = []
    for img, it in zip(images, items):
        res = verify(img, it["scene"], return_detections=True)
        dets = res.pop("detections")
        want = it["scene"]["objects"][0]
        near = [d for d in dets if d.color == want["color"]] or dets
        got = max(near, key=lambda d: d.area).shape if near else "(none)"
        confusion[(want["shape"], got)] += 1
        per_sample.append({"prompt": it["prompt"], "scores": res, "detected_shape": got})
    means = mean_scores([p["scores"] for p in per_sample])
    print(f"{src}: {len(items)} held-out prompts, {size[0]}x{size[1]}, {steps} steps, CFG {gs:g}, "
          f"{'raw' if args.raw else 'EMA'} weights")
    print("  " + "  ".join(f"{k} {v:.2f}" for k, v in means.items()))
    shapes = sorted({w for w, _ in confusion})
    detected = sorted({g for _, g in confusion})
    print("  shape confusion (prompted -> detected, largest object of the prompted colour):")
    print("    " + " " * 10 + "".join(f"{g:>10s}" for g in detected))
    for w in shapes:
        print(f"    {w:10s}" + "".join(f"{confusion[(w, g)]:>10d}" for g in detected))
    if args.out:
        out = Path(args.out)
        save_images(images, out, [f"{i:02d}" for i in range(len(images))])
        make_grid(images).save(out / "grid.png")
        (out / "results.json").write_text(json.dumps({"means": means, "samples": per_sample}, indent=1))
        print(f"  wrote {len(images)} images, grid.png and results.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
