"""Does a trained DiT respond to the *shape* word of a prompt as much as to the *colour* word?

    python tools/shape_probe.py runs/tiny_pretrain [--draws 8]

For a one-object synthetic scene (a huge object by default, ``--object-size``, in the centre of a grey 64² image) it builds three
prompts, written by the synthetic world's own ``dense_caption`` with the run's ``dense_words`` (so
they read like its training captions), that differ only in the shape word (red circle / square / triangle) and three that differ
only in the colour word (red / green / blue circle). At noise levels σ = 0.9, 0.6, 0.3 it noises the
latent of the first scene, asks the DiT (EMA weights) for its clean-latent prediction
``x̂0 = x_σ − σ·v`` under each prompt, and prints

* ``spread``: RMS deviation of the three predictions from their mean (how much the word changes the
  prediction), averaged over ``--draws`` noise draws;
* ``ratio``: that spread divided by the spread of the three *true* latents — 1.0 would mean the
  model moves its prediction by as much as the images really differ.

At high σ a model that has bound the word to the picture has a large ratio; at low σ the noisy
latent (always the first scene's) rightly dominates. Used in docs/tiny_recipe.md.
"""

from __future__ import annotations

import argparse
import sys

#: Caption word budget when the source carries no synthetic-world recipe (an exported folder): the tiny recipe's.
FALLBACK_WORDS = (10, 16)
VARIANTS = {
    "shape": [("red", s) for s in ("circle", "square", "triangle")],
    "colour": [(c, "circle") for c in ("red", "green", "blue")],
}


def _scene(color: str, shape: str, size: str) -> dict:
    obj = {"id": 0, "shape": shape, "color": color, "size": size, "x": 0.5, "y": 0.5, "cell": [1, 1]}
    return {"seed": 0, "background": {"kind": "flat", "colors": ["grey"]}, "objects": [obj], "relations": [], "text": None}


def _caption_words(recipe_cfg) -> tuple[int, int]:
    """The ``dense_words`` of the run's synthetic world, so the probe's prompts read like its training captions."""
    from lensforge.data.sources.synthetic import SyntheticWorld

    try:
        source = recipe_cfg.data.source.build()
    except AttributeError:  # no recipe (exported folder) or a recipe without a data source
        return FALLBACK_WORDS
    return tuple(source.config.dense_words) if isinstance(source, SyntheticWorld) else FALLBACK_WORDS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run folder, a .ckpt or an exported folder")
    ap.add_argument("--draws", type=int, default=8, help="noise draws per σ (default 8)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--object-size", default="huge",
                    help="size class of the probe object (synthetic world's SIZES; default huge, the tiny recipe's world)")
    args = ap.parse_args(argv)

    import torch

    from lensforge.commands._models import load_models
    import numpy as np

    from lensforge.data.sources.synthetic import SIZES, dense_caption, render_scene, to_tensor
    from lensforge.errors import LensforgeError
    from lensforge.interfaces import PackedBatch

    if args.object_size not in SIZES:
        print(f"error: --object-size must be one of {', '.join(SIZES)}, got '{args.object_size}'", file=sys.stderr)
        return 2

    try:
        dit, vae, te, recipe_cfg, src = load_models(args.source, ema=True)
        words = _caption_words(recipe_cfg)
    except LensforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dit.eval()
    gen = torch.Generator().manual_seed(0)
    print(f"{src}: clean-latent prediction spread across prompts (mean of {args.draws} noise draws)")
    with torch.no_grad():
        for kind, variants in VARIANTS.items():
            lat = [vae.encode(to_tensor(render_scene(_scene(c, s, args.object_size), (args.size, args.size)))[None])[0] for c, s in variants]
            h, w = lat[0].shape[-2:]
            true = torch.stack([z.flatten(1).T for z in lat]).float()  # [3, h*w, C]
            true_spread = (true - true.mean(0)).pow(2).mean().sqrt().item()
            # the world's own caption writer, same phrasing draw for every variant: only the word differs
            prompts = [dense_caption(_scene(c, s, args.object_size), np.random.default_rng(0), *words) for c, s in variants]
            if kind == "shape":
                print(f"  prompt: {prompts[0]!r}")
            text = te.encode(prompts)
            for sigma in (0.9, 0.6, 0.3):
                spreads = []
                for _ in range(args.draws):
                    eps = torch.randn(true[0].shape, generator=gen)
                    xs = (1 - sigma) * true[0] + sigma * eps
                    pb = PackedBatch(img_tokens=xs.repeat(3, 1), img_shapes=torch.tensor([[h, w]] * 3),
                                     sigmas=torch.full((3,), sigma), text=text)
                    pred = xs[None] - sigma * dit(pb).float().view(3, h * w, -1)
                    spreads.append((pred - pred.mean(0)).pow(2).mean().sqrt().item())
                spread = sum(spreads) / len(spreads)
                print(f"  {kind:6s} word, sigma {sigma}: spread {spread:.3f} (true {true_spread:.3f}), "
                      f"ratio {spread / true_spread:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
