"""``lensforge export CKPT OUT``: a diffusers-format Hugging Face folder from a checkpoint.

``CKPT`` is a ``.ckpt``, a run folder (its newest checkpoint) or another exported / official
Lens folder (re-export). EMA weights are exported unless ``--no-ema``. The folder holds
``model_index.json``, ``scheduler/``, ``transformer/`` (official Lens schema and keys for
``lens_mmdit``; sharded when large), ``vae/``, ``text_encoder/``, ``tokenizer/``, a model card
and ``lensforge.json``; ``lensforge sample OUT …`` and ``init_from: OUT`` read it back.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.ckpt), run folder, or exported folder")
    p.add_argument("out", metavar="OUT", help="folder to write (must not exist or be empty)")
    p.add_argument("--no-ema", action="store_true", help="export the trained weights instead of the EMA")
    p.add_argument("--max-shard-size", default="5GB", help="shard transformer weights above this size (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lensforge.commands._models import load_models
    from lensforge.export import export_folder

    dit, vae, te, recipe_cfg, src = load_models(args.checkpoint, ema=not args.no_ema)
    recipe = recipe_cfg if hasattr(recipe_cfg, "model") else None
    max_shard: int | str = int(args.max_shard_size) if str(args.max_shard_size).isdigit() else args.max_shard_size
    out = export_folder(
        dit, vae, te, args.out, recipe_config=recipe, max_shard_size=max_shard,
        progress=not args.no_progress, source=f"{src} ({'trained' if args.no_ema else 'EMA'} weights)", overwrite=args.overwrite,
    )
    print(f"exported {src} -> {out}")
    return 0
