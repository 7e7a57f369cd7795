"""``lensforge eval TARGET… [--suite NAME|FILE] [--reward NAME]``: score models on the same prompts and seeds.

TARGET is a run folder (its newest checkpoint), a checkpoint or an exported / official Lens folder;
several targets are generated with the same prompts, sizes and seeds and printed side by side, next to
the suite's noise baseline (blank images, uniform noise, an untrained model of the first target's
architecture). Suites (:mod:`lensforge.eval.suites`): ``validation`` (the default for a run: held-out
prompts of its training world, attribute by attribute), ``geneval_synth`` (GenEval's six categories and
strict rule), ``ar_sweep`` (aspect ratios 1:2 … 2:1 × resolutions around the training size), or any
prompt-set ``.jsonl`` file scored with ``--reward`` (default ``verifier``; a VLM judge once installed).

Writes under ``--out`` (default ``runs/eval/<suite>``): ``results.json`` (per image: target, prompt,
seed, size, reward, score per rubric item), ``summary.md`` (tables), ``categories.png`` (per-category
bars per target), ``ar_heatmap_<target>.png`` (sweep), ``grid_<target>.png`` and ``images/``; logs the
figures to each target's own MLflow run when it has one (embedded store), else to a new run in
``<out>/mlflow.db``.

``--reasoner NAME [--reasoner-arg k=v …]`` rewrites every prompt first (each distinct prompt once, the same
rewrite for every target): each image's ``model_prompt`` is in ``results.json``, every rewrite (raw answer,
failures, unparsed words) in ``rewrites.json``, both logged to MLflow with the figures. Score a suite with
and without it to see what the reasoner is worth.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="run folder, checkpoint, or exported / official Lens folder")
    p.add_argument("--suite", default=None,
                   help="validation (default for runs), geneval_synth, ar_sweep, or a prompt-set .jsonl file")
    p.add_argument("--reward", default="verifier", help="reward plugin scoring the images (default verifier)")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the reward plugin's Config (repeatable), e.g. score=strict")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps for every target (default: each target's own — its recipe's sampling.steps or an "
                        "export's recorded inference steps, else 20)")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance scale for every target (default: each target's own, as --steps; else 4.0)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each prompt is generated once per seed (default 0)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="prompts of a built-in suite (default: validation 48, geneval_synth 96, ar_sweep 12); a file's first N")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed drawing a built-in suite's prompts (default 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (a quick look)")
    p.add_argument("--size", default=None, help="HxW in pixels for items without their own size (default: the recipe's)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<suite>)")
    p.add_argument("--batch-size", type=int, default=16, help="images generated together, sizes packed (default 16)")
    p.add_argument("--no-baseline", action="store_true", help="skip the noise baseline (blank, noise, untrained model)")
    p.add_argument("--no-images", action="store_true", help="do not write every image (grids and results still written)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-ema", action="store_true", help="checkpoints: use the trained weights instead of the EMA")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="DiT dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from lensforge.reasoners.use import add_cli_arguments

    add_cli_arguments(p)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise LensforgeError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise LensforgeError("--seeds is empty")
    return seeds


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LensforgeError(f"--size must look like 64x96 (height x width), got '{text}'") from None
    if h <= 0 or w <= 0:
        raise LensforgeError(f"--size must be positive, got '{text}'")
    return h, w


def build_reward(name: str, args: list[str]):
    """A reward plugin from its registry name and ``key=value`` parameters (validated against its Config)."""
    import yaml

    from lensforge import registry

    params = {}
    for a in args:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise LensforgeError(f"--reward-arg must look like key=value, got '{a}'")
        params[k.strip()] = yaml.safe_load(v)
    return registry.get("reward", name).from_params(**params)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lensforge.eval.report import log_to_mlflow, summary_tables, write_outputs
    from lensforge.eval.run import TargetResult, baseline_images, generate_images, score_images, summarize
    from lensforge.eval.suites import build_suite
    from lensforge.eval.targets import load_targets, untrained_like

    for n, flag in ((args.steps, "--steps"), (args.batch_size, "--batch-size"), (args.limit, "--limit"),
                    (args.num_prompts, "--num-prompts")):
        if n is not None and n < 1:
            raise LensforgeError(f"{flag} must be >= 1")
    seeds = _seeds(args.seeds)
    size = _size(args.size)
    reward = build_reward(args.reward, args.reward_arg)
    targets = load_targets(args.targets, ema=not args.no_ema, device=args.device, dtype=args.dtype)
    recipe = next((t.recipe for t in targets if t.recipe is not None), None)
    suite_name = args.suite or ("validation" if recipe is not None else None)
    if suite_name is None:
        raise LensforgeError("an exported folder carries no training recipe: choose --suite geneval_synth, ar_sweep or "
                             "a prompt-set .jsonl file")
    suite = build_suite(suite_name, recipe, num_prompts=args.num_prompts, seeds=seeds, size=size,
                        prompt_seed=args.prompt_seed)
    if args.limit:
        suite.items = suite.items[: args.limit]
    problems = reward.check_rows([it.row for it in suite.items])
    if problems:
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise LensforgeError(f"reward '{args.reward}' cannot score suite '{suite.name}':\n  " + "\n  ".join(problems[:10]) + more)
    reward.preflight()
    def settings_of(t: Any) -> tuple[int, float]:
        """Each model sampled as it is meant to be (its own defaults) unless --steps / --cfg say otherwise."""
        steps, cfg = t.defaults()
        return (args.steps or steps), (args.cfg if args.cfg is not None else cfg)

    per_target = {t.label: settings_of(t) for t in targets}
    out = Path(args.out or f"runs/eval/{suite.name}")
    items = suite.items
    prompts = [str(it.row["prompt"]) for it in items]
    reasoner_info = None
    if args.reasoner or args.reasoner_arg or args.system_prompt_file:
        from lensforge.reasoners.use import attach, reasoner_for, rewrite_all

        reasoner = reasoner_for(args)
        attach(reasoner, text_encoder=targets[0].text_encoder, recipe_config=recipe)
        rewrites, line = rewrite_all(reasoner, prompts)
        print(line)
        prompts = [rewrites[p].text for p in prompts]
        n_failed = sum(not r.ok for r in rewrites.values())
        suite.notes.append(f"prompts rewritten by {reasoner.describe()}" + (f" ({n_failed} without a usable rewrite "
                                                                             "kept the prompt)" if n_failed else ""))
        reasoner_info = {"plugin": args.reasoner, "args": args.reasoner_arg, "system_prompt_file": args.system_prompt_file,
                         "describe": reasoner.describe(), "rewrites": len(rewrites),
                         "failed": n_failed, "stats": reasoner.stats()}
        reasoner.close()
    how = "; ".join(f"{label}: {st} steps, CFG {g:g}" for label, (st, g) in per_target.items())
    log.info("eval: suite %s, %d images per target, %d target(s) (%s), reward %s -> %s",
             suite.name, len(items), len(targets), how, args.reward, out)

    gen_targets = list(targets)
    if not args.no_baseline:
        gen_targets.append(untrained_like(targets[0]))
    bar = None if args.no_progress else tqdm(total=len(items) * len(gen_targets), desc="eval images", unit="img")
    results: list[TargetResult] = []
    for t in gen_targets:
        steps, cfg = per_target.get(t.label) or settings_of(targets[0])  # the untrained baseline: as the first target
        images = generate_images(t.dit, t.vae, t.text_encoder, items, prompts, steps=steps, guidance_scale=cfg,
                                 batch_size=args.batch_size, progress=bar.update if bar is not None else None)
        scored = score_images(reward, items, images, prompts)
        results.append(TargetResult(label=t.label, scored=scored, summary=summarize(suite, scored),
                                    baseline=t.label == "untrained" and t is gen_targets[-1] and not args.no_baseline,
                                    sampling=f"{steps} steps, CFG {cfg:g}"))
    if bar is not None:
        bar.close()
    if not args.no_baseline:
        for name, imgs in baseline_images(suite).items():
            scored = score_images(reward, items, imgs, prompts)
            results.append(TargetResult(label=name, scored=scored, summary=summarize(suite, scored), baseline=True))
    distinct = set(per_target.values())
    steps, cfg = distinct.pop() if len(distinct) == 1 else (None, None)  # one setting for all, else per target
    # the reward plugin's own counters (a judge's calls, latency, tokens, cache hits, dropped judgements)
    stats = {k: float(v) for k, v in reward.stats().items()}
    settings = {"targets": {t.label: str(t.source) for t in targets}, "steps": steps, "guidance_scale": cfg,
                "sampling": {label: {"steps": st, "guidance_scale": g} for label, (st, g) in per_target.items()},
                "seeds": seeds, "reward": args.reward, "reward_args": args.reward_arg, "ema": not args.no_ema,
                "num_prompts": args.num_prompts, "prompt_seed": args.prompt_seed, "limit": args.limit,
                "reward_stats": stats}
    if reasoner_info is not None:
        from lensforge.fileio import atomic_write_text

        settings["reasoner"] = reasoner_info
        out.mkdir(parents=True, exist_ok=True)
        rewrites_path = atomic_write_text(out / "rewrites.json", json.dumps(
            [{"id": it.row.get("id"), **rewrites[str(it.row["prompt"])].to_dict()} for it in
             {str(it.row["prompt"]): it for it in items}.values()], indent=1, ensure_ascii=False, default=str))
    artifacts = write_outputs(out, suite, results, settings, save_images=not args.no_images)
    if reasoner_info is not None:
        artifacts["rewrites"] = rewrites_path
    print(summary_tables(suite, results), end="")
    if not args.no_mlflow:
        for w in log_to_mlflow(out, suite, results, targets, artifacts, reward_stats=stats):
            print(f"MLflow: {w}")
    failed = sum(r.summary["failed"] for r in results if not r.baseline)
    if failed:
        print(f"note: {failed} image(s) could not be scored (see results.json 'failure'); they are left out of the means")
    if stats:
        print("reward stats: " + ", ".join(f"{k} {v:g}" for k, v in sorted(stats.items())))
    reward.close()
    print(f"wrote {artifacts['summary']}, {artifacts['results']} and plots/grids to {out}")
    return 0
