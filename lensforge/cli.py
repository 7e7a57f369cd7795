"""The ``lensforge`` command line.

Verbs live in :mod:`lensforge.commands` (one module each, with ``add_arguments(parser)`` and
``run(args) -> int``). Only the module of the verb being run is imported, so ``--help`` is fast.
User errors (:class:`~lensforge.errors.LensforgeError`) print one short message and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

#: verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "fit": ("lensforge.commands.fit", "train one stage from a recipe"),
    "validate": ("lensforge.commands.validate", "check a recipe and print it resolved"),
    "plugins": ("lensforge.commands.plugins", "list plugins (kind, name, provenance, summary)"),
    "plan": ("lensforge.commands.plan", "parameter counts and per-GPU memory estimate of a recipe"),
    "cache": ("lensforge.commands.cache", "precompute VAE latents and text features for a recipe"),
    "data": ("lensforge.commands.data", "data tools: build-shards, index, stats, packing, prompts, rubrics"),
    "sample": ("lensforge.commands.sample", "generate images from a checkpoint or exported folder"),
    "export": ("lensforge.commands.export", "write a diffusers-format Hugging Face folder"),
    "eval": ("lensforge.commands.eval", "score runs / checkpoints / exports on a suite, side by side"),
    "reasoner": ("lensforge.commands.reasoner", "prompt rewriting (reasoner plugins) and the search over its system prompt"),
}


def _available_verbs() -> dict[str, tuple[str, str]]:
    out = {}
    for verb, (mod, help_) in VERBS.items():
        if importlib.util.find_spec(mod) is not None:
            out[verb] = (mod, help_)
    return out


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser = argparse.ArgumentParser(
        prog="lensforge",
        description="Train Lens-style text-to-image models from YAML recipes.",
        parents=[common],
    )
    from lensforge import __version__

    parser.add_argument("--version", action="version", version=f"lensforge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (mod, help_) in _available_verbs().items():
        p = sub.add_parser(verb, help=help_, description=help_, parents=[common])
        if verb == selected:
            module = importlib.import_module(mod)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def _selected_verb(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LENSFORGE_DEBUG") == "1"
    try:
        parser = build_parser(_selected_verb(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "verb", None):
            parser.print_help()
            return 2
        rc = args._run(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("lensforge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        from lensforge.errors import LensforgeError

        if debug:
            traceback.print_exc()
        if isinstance(e, LensforgeError):
            print(f"lensforge: error: {e}", file=sys.stderr)
            return e.exit_code
        print(f"lensforge: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
