"""``lensforge data``: build-shards, stats, packing.

* ``lensforge data build-shards SRC OUT``: write WebDataset-style shards from an image folder,
  shards, or ``synthetic:N``.
* ``lensforge data index SRC [--out FILE]``: write the compact sample index of a set of shards (local
  or ``s3://`` / ``gs://`` / ``https://``) beside them, for ``mode: indexed`` reading.
* ``lensforge data stats SRC [--out DIR]``: caption-length and resolution / aspect-ratio histograms,
  printed and saved as PNG plots.
* ``lensforge data packing [RECIPE] [key=value …]``: packing efficiency of the default data mix (or a
  recipe's ``data:`` section) over a number of batches.
* ``lensforge data prompts synthetic:N|geneval:N OUT.jsonl [--seed S] [--categories a,b] [--world k=v …]``:
  a prompt set drawn from the synthetic world, one checkable rubric item per stated fact
  (:mod:`lensforge.data.synthetic_prompts`).
* ``lensforge data rubrics PROMPTS.txt OUT.jsonl --base-url URL --model M``: a category and rubric items
  for each prompt from an OpenAI-compatible LLM (:mod:`lensforge.data.rubric_writer`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from typing import Any

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_verb", metavar="SUBVERB")
    b = sub.add_parser("build-shards", help="write WebDataset-style tar shards from SRC into OUT")
    b.add_argument("src", metavar="SRC", help="image folder, shard folder/.tar, or synthetic:N")
    b.add_argument("out", metavar="OUT", help="output folder for shard-NNNNNN.tar files")
    b.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar file (default 1000)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    x = sub.add_parser("index", help="write the compact sample index of a set of shards (local or remote) beside them")
    x.add_argument("src", metavar="SRC", help="shard folder, .tar, glob, or URL (s3://bucket/prefix/, https://…/{000..099}.tar)")
    x.add_argument("--out", metavar="FILE", default=None, help="index file or URL (default: lensforge.index beside the shards)")
    x.add_argument("--workers", type=int, default=None, help="shards scanned in parallel (default: CPU count, at most 8)")
    x.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option of a remote store, e.g. -o endpoint_url=http://127.0.0.1:9000 (repeatable)")
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("stats", help="caption-length and resolution/aspect histograms (text + PNG)")
    s.add_argument("src", metavar="SRC", help="image folder, shard folder/.tar, or synthetic:N")
    s.add_argument("--out", metavar="DIR", default=None, help="folder for the PNG plots (default runs/data_stats)")
    s.add_argument("--no-plots", action="store_true", help="print only, save no PNG")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    k = sub.add_parser("packing", help="packing efficiency of the default data mix or a recipe's")
    k.add_argument("args", nargs="*", metavar="RECIPE|key=value",
                   help="optional recipe YAML, then overrides (data.packing.token_budget=8192 …)")
    k.add_argument("--batches", type=int, default=50, help="batches to pack (default 50)")
    k.add_argument("--downsample", type=int, default=None,
                   help="pixels per latent token side (default: the recipe VAE's, else 16)")
    k.add_argument("--seed", type=int, default=None, help="data seed (default: the recipe's, else 0)")
    from lensforge.data.rubric_writer import add_cli_arguments as _rubrics_arguments

    _rubrics_arguments(sub.add_parser("rubrics", help="category + rubric items per prompt from an LLM endpoint"))
    from lensforge.data.prompts_cli import add_arguments as _prompts_arguments

    _prompts_arguments(sub.add_parser("prompts", help="taxonomy / GenEval-style prompt set from the synthetic world"))
    p.set_defaults(_data_parser=p)


def run(args: argparse.Namespace) -> int:
    verb = getattr(args, "data_verb", None)
    if verb == "build-shards":
        return _build_shards(args)
    if verb == "index":
        return _index(args)
    if verb == "stats":
        return _stats(args)
    if verb == "packing":
        return _packing(args)
    if verb == "rubrics":
        from lensforge.data.rubric_writer import run_cli

        return run_cli(args)
    if verb == "prompts":
        from lensforge.data.synthetic_prompts import run as _prompts

        return _prompts(args)
    args._data_parser.print_help()
    return 2


def _build_shards(args: argparse.Namespace) -> int:
    from lensforge.data.shards import build_shards, open_source

    src = open_source(args.src)
    res = build_shards(src, args.out, args.samples_per_shard, progress=not args.no_progress)
    print(f"wrote {res['samples']} samples into {len(res['shards'])} shards under {args.out}"
          + (f" ({res['no_header']} with an unreadable image header, copied as-is)" if res["no_header"] else ""))
    if res.get("index"):
        print(f"index: {res['index']}")
    return 0


def _index(args: argparse.Namespace) -> int:
    import os

    import yaml

    from lensforge.data.index import build_index
    from lensforge.data.sources.common import IMAGE_EXTS

    opts: dict[str, Any] = {}
    for item in args.storage_option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise LensforgeError(f"--storage-option expects KEY=VALUE, got '{item}'")
        opts[key] = yaml.safe_load(value) if value else value
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    if workers < 1:
        raise LensforgeError("--workers must be >= 1")
    res = build_index(args.src, args.out, image_exts=IMAGE_EXTS, workers=workers, storage_options=opts,
                      progress=not args.no_progress)
    print(f"indexed {res.samples} samples in {res.shards} shards into {res.out} ({res.seconds:.1f} s)")
    if res.no_image:
        print(f"{res.no_image} keys without an image member (not samples)")
    if res.bad_shards:
        print(f"{len(res.bad_shards)} damaged shard(s): their complete samples are indexed, the rest skipped:")
        for name, why in list(res.bad_shards.items())[:10]:
            print(f"  {name}: {why}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from lensforge.data.shards import open_source
    from lensforge.data.stats import compute_stats, format_stats, plot_stats

    src = open_source(args.src)
    st = compute_stats(src, progress=not args.no_progress)
    print(format_stats(st, args.src))
    if not args.no_plots:
        paths = plot_stats(st, args.out or "runs/data_stats")
        print("plots: " + ", ".join(paths))
    return 0


def _data_config(args: argparse.Namespace) -> tuple[Any, int, int]:
    """``(DataConfig, downsample, seed)`` from a recipe or the defaults, plus overrides."""
    from lensforge.data.config import DataConfig

    items = list(args.args)
    recipe_path = items.pop(0) if items and "=" not in items[0] else None
    downsample, seed = 16, 0
    if recipe_path:
        from lensforge.recipe import load_recipe

        recipe = load_recipe(recipe_path, items)
        cfg = recipe.config.data
        seed = recipe.config.seed
        vae = recipe.config.model.vae
        spec = vae.schema.latent_spec(vae.config) if hasattr(vae.schema, "latent_spec") else None
        if spec is not None:
            downsample = int(spec.downsample)
    else:
        from omegaconf import OmegaConf

        from lensforge.errors import RecipeError
        from lensforge.recipe.plugin_config import config_to_dict, validate_dataclass

        base = OmegaConf.create(config_to_dict(DataConfig()))
        for it in items:
            key, _, value = it.partition("=")
            key = key[len("data."):] if key.startswith("data.") else key
            import yaml

            OmegaConf.update(base, key, yaml.safe_load(value) if value else value, force_add=True)
        data = OmegaConf.to_container(base, resolve=True)
        problems: list[Any] = []
        cfg = validate_dataclass(DataConfig, data, "data", problems, origin=lambda k: "<command line>")
        if problems:
            raise RecipeError(problems)
    if args.downsample is not None:
        downsample = args.downsample
    if args.seed is not None:
        seed = args.seed
    return cfg, downsample, seed


def _packing(args: argparse.Namespace) -> int:
    import dataclasses

    from lensforge.data.loader import build_loader

    cfg, downsample, seed = _data_config(args)
    if args.batches < 1:
        raise LensforgeError("--batches must be >= 1")
    cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, num_workers=0))
    loader = build_loader(cfg, downsample=downsample, seed=seed, rank=0, world_size=1)
    effs, samples, sizes = [], [], set()
    for batch in loader:
        effs.append(batch.stats["packing_efficiency"])
        samples.append(len(batch))
        sizes |= {tuple(im.shape[-2:]) for im in batch.images}
        if len(effs) >= args.batches:
            break
    if not effs:
        raise LensforgeError("the data source yielded no batch")
    p = cfg.packing
    print(f"token budget {p.token_budget} (image tokens at {downsample} px/token + ~{p.text_tokens_per_word} text tokens/word), "
          f"lookahead {p.lookahead}, seed {seed}")
    print(f"batches: {len(effs)}   samples/batch: {statistics.mean(samples):.1f}   distinct sizes: {len(sizes)}   "
          f"skipped: {loader.skipped}")
    print(f"packing efficiency: mean {statistics.mean(effs):.3f}   min {min(effs):.3f}   max {max(effs):.3f}")
    return 0
