"""``lensforge reasoner``: prompt rewriting in front of the DiT, and the search over its system prompt.

* ``lensforge reasoner search RECIPE [key=value …]`` — the training-free system-prompt search of a
  ``stage: {name: reasoner_search, …}`` recipe (:mod:`lensforge.reasoners.search`); resumable (run the same
  command again after a crash). Exit 0 when it ended on its rounds or budget, 3 when it stopped because
  the reasoner kept failing or no candidate could be scored (outputs written, resumable), 2 on bad input
  or an unreachable endpoint.
* ``lensforge reasoner rewrite PROMPT… --reasoner NAME [--reasoner-arg k=v …] [--source RUN]`` — show what
  a reasoner makes of prompts (``--source``: the run whose text encoder / training world it serves).
* ``lensforge reasoner system-prompt`` — print the shipped default system prompt and where it lives.
"""

from __future__ import annotations

import argparse
import json

from lensforge.errors import LensforgeError

def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="reasoner_verb", metavar="SUBVERB")
    s = sub.add_parser("search", help="search the reasoner's system prompt (a reasoner_search recipe); resumable")
    s.add_argument("recipe", metavar="RECIPE", help="recipe YAML with stage: {name: reasoner_search, …}")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. stage.rounds=2")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("rewrite", help="print what a reasoner makes of prompts")
    r.add_argument("prompts", nargs="+", metavar="PROMPT")
    from lensforge.reasoners.use import add_cli_arguments

    add_cli_arguments(r)
    r.add_argument("--source", default=None, metavar="RUN",
                   help="a run folder, checkpoint or exported folder the reasoner serves (its text encoder and training "
                        "world; synthetic_world then writes that world's captions)")
    r.add_argument("--json", action="store_true", help="print one JSON object per prompt (text, raw, notes)")
    sub.add_parser("system-prompt", help="print the shipped default system prompt and its path")
    p.set_defaults(_reasoner_parser=p)


def _search(args: argparse.Namespace) -> int:
    from lensforge.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    stage = recipe.config.stage
    if stage.name != "reasoner_search":
        raise LensforgeError(f"{args.recipe}: stage is '{stage.name}'; `lensforge reasoner search` runs recipes with "
                             "stage: {name: reasoner_search, …} (train other stages with `lensforge fit`)")
    problems = recipe.environment_problems()
    if problems:
        raise LensforgeError(f"this machine cannot run {args.recipe}:\n" + "\n".join(f"  - {p}" for p in problems))
    from lensforge.reasoners.search import FAILED_STOPS, format_report, run_search

    summary = run_search(recipe, progress=False if args.no_progress else None)
    print(format_report(summary), end="")
    return 3 if summary["stop_reason"] in FAILED_STOPS else 0


def _rewrite(args: argparse.Namespace) -> int:
    from lensforge.reasoners.use import attach, build_reasoner, rewrite_all

    if not args.reasoner:
        raise LensforgeError("--reasoner NAME is required (lensforge plugins reasoner lists them)")
    reasoner = build_reasoner(args.reasoner, args.reasoner_arg, args.system_prompt_file)
    te = recipe_cfg = None
    if args.source:
        from lensforge.commands._models import load_models

        _, _, te, recipe_cfg, _ = load_models(args.source)
    attach(reasoner, text_encoder=te, recipe_config=recipe_cfg)
    by, line = rewrite_all(reasoner, args.prompts)
    for p in args.prompts:
        rw = by[p]
        if args.json:
            print(json.dumps({k: v for k, v in rw.to_dict().items() if k != "notes"} | {
                "notes": {k: v for k, v in rw.notes.items() if k != "scene"}}, ensure_ascii=False))
        else:
            print(f"{p}\n  -> {rw.text}")
            if not rw.ok:
                print(f"  (no usable rewrite: {rw.error})")
            if rw.notes.get("unparsed"):
                print(f"  (not parsed, kept: {', '.join(rw.notes['unparsed'])})")
    print(line)
    reasoner.close()
    return 0


def run(args: argparse.Namespace) -> int:
    verb = getattr(args, "reasoner_verb", None)
    if verb == "search":
        return _search(args)
    if verb == "rewrite":
        return _rewrite(args)
    if verb == "system-prompt":
        from lensforge.reasoners.prompts import default_system_prompt_path, load_system_prompt

        print(load_system_prompt())
        print(f"\n# {default_system_prompt_path()} (Lens's seven rules, LENS_SPEC §5; lensforge/reasoners/README.md)")
        return 0
    args._reasoner_parser.print_help()
    return 2
