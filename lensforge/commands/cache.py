"""``lensforge cache RECIPE [k=v …]``: precompute VAE latents and text features into ``data.cache_dir``.

Walks the recipe's training data loader in training order (same seed, same packing, same sizes)
for ``--steps`` batches (default: ``trainer.max_steps × accumulate_grad_batches``) or until
``--max-samples`` samples, encodes every image with the recipe's VAE and every prompt the caption
policy can produce for those samples (each caption field in use, plus ``""`` for caption dropout)
with its text encoder, and writes safetensors shards + index + manifest
(:mod:`lensforge.data.cache`). Training with the same ``data.cache_dir`` then reads them instead
of running the VAE and text encoder, and refuses a stale or mismatched cache.

The walk is that of a single process; for a multi-GPU run cache with the same recipe on a machine
that reaches every rank's samples (``--steps`` covering the ranks' batches) — a miss at training
time names the sample, it is never silently re-encoded.
"""

from __future__ import annotations

import argparse
import itertools
import logging

from lensforge.commands import add_recipe_arguments

log = logging.getLogger("lensforge.cache")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--steps", type=int, default=None,
                   help="batches to cache (default: trainer.max_steps × trainer.accumulate_grad_batches)")
    p.add_argument("--max-samples", type=int, default=None, help="stop after this many samples")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: the recipe's data.cache_dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache (even a mismatched one)")
    p.add_argument("--shard-size-mb", type=int, default=1024, help="shard size in MiB (default 1024)")
    p.add_argument("--device", default=None, help="device for the VAE and text encoder (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from lensforge.data import build_datamodule
    from lensforge.data.cache import FeatureCacheWriter, encode_into
    from lensforge.errors import LensforgeError
    from lensforge.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.config
    cache_dir = args.cache_dir or cfg.data.cache_dir
    if not cache_dir:
        raise LensforgeError("no cache folder: set data.cache_dir in the recipe (or data.cache_dir=… / --cache-dir)")
    steps = args.steps if args.steps is not None else cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches
    if steps < 1:
        raise LensforgeError("--steps must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if getattr(cfg.stage.config, "vae_sample_posterior", False):
        raise LensforgeError("stage.vae_sample_posterior is true: a cache would freeze one posterior sample per image; "
                             "set it to false to train from cached latents")

    torch.manual_seed(cfg.seed)
    vae = cfg.model.vae.build().to(device)
    te = cfg.model.text_encoder.build().to(device)
    for m in (vae, te):
        m.requires_grad_(False)
        m.eval()
    writer = FeatureCacheWriter(cache_dir, cfg.model.vae, cfg.model.text_encoder,
                                shard_bytes=args.shard_size_mb << 20, overwrite=args.overwrite)
    dm = build_datamodule(cfg.data, downsample=int(vae.downsample_factor), seed=cfg.seed)
    if hasattr(dm, "setup"):
        dm.setup("fit")
    loader = dm.train_dataloader()

    limit = args.max_samples
    seen = {"n": 0}

    def batches():
        for batch in itertools.islice(iter(loader), steps):
            if limit is not None and seen["n"] >= limit:
                return
            seen["n"] += len(batch.keys)
            yield batch

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=limit, desc="caching", unit="sample")
    stats = encode_into(writer, batches(), vae, te, cfg.data.captions, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    root = writer.close(source={"recipe": recipe.path, "data_source": cfg.data.source.to_dict(), "seed": cfg.seed, "steps": steps})
    print(f"cached {stats['samples']} samples: {stats['latents']} new latents, {stats['prompts']} new prompts -> {root}")
    return 0
