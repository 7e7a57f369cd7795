"""Score a trained run on held-out prompts of its world: a thin wrapper over ``lensforge eval``'s code.

    python tools/eval_run.py runs/tiny_pretrain [--prompts 48] [--steps 20] [--cfg 4] [--size 64x64]

The same as ``lensforge eval RUN --suite validation --num-prompts N`` (held-out prompts of the run's
training world, the verifier's per-attribute means and the shape confusion of one-object scenes),
printed in one line per table, for quick looks from a shell. ``--out DIR`` also writes the images, a
grid and ``results.json``. Prefer ``lensforge eval`` (several targets, other suites, noise baseline,
MLflow).
"""

from __future__ import annotations

import argparse
import json
import sys
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

    from lensforge import registry
    from lensforge.errors import LensforgeError
    from lensforge.eval.run import generate_images, score_images, summarize
    from lensforge.eval.suites import build_suite
    from lensforge.eval.targets import load_target
    from lensforge.sampling.sampler import make_grid, save_images

    try:
        target = load_target(args.source, ema=not args.raw)
        if target.recipe is None:
            raise LensforgeError(f"{args.source} carries no training recipe (an exported folder?): "
                                 "pass a run folder or a .ckpt, so the world of its prompts is known")
        suite = build_suite("validation", target.recipe, num_prompts=args.prompts, seeds=[0], size=args.size,
                            prompt_seed=args.seed)
    except LensforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = target.recipe
    steps = cfg.sampling.steps if args.steps is None else args.steps
    gs = cfg.sampling.guidance_scale if args.cfg is None else args.cfg
    size = suite.items[0].size
    prompts = [it.row["prompt"] for it in suite.items]
    images = generate_images(target.dit, target.vae, target.text_encoder, suite.items, prompts, steps=steps,
                             guidance_scale=gs)
    scored = score_images(registry.get("reward", "verifier")(), suite.items, images, prompts)
    summary = summarize(suite, scored)
    means = dict(summary["attributes"], overall=summary["reward"])
    print(f"{target.source}: {len(scored)} held-out prompts, {size[0]}x{size[1]}, {steps} steps, CFG {gs:g}, "
          f"{'raw' if args.raw else 'EMA'} weights")
    print("  " + "  ".join(f"{k} {v:.2f}" for k, v in means.items() if v is not None))
    conf = summary["shape_confusion"]
    detected = sorted({g for v in conf.values() for g in v})
    print("  shape confusion (prompted -> detected, largest object of the prompted colour):")
    print("    " + " " * 10 + "".join(f"{g:>10s}" for g in detected))
    for w in conf:
        print(f"    {w:10s}" + "".join(f"{conf[w].get(g, 0):>10d}" for g in detected))
    if args.out:
        out = Path(args.out)
        save_images(images, out, [f"{i:02d}" for i in range(len(images))])
        make_grid(images).save(out / "grid.png")
        samples = [{"prompt": s.item.row["prompt"], "scores": s.details.get("attributes"), "seed": s.item.seed}
                   for s in scored]
        (out / "results.json").write_text(json.dumps({"means": means, "samples": samples}, indent=1))
        print(f"  wrote {len(images)} images, grid.png and results.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
