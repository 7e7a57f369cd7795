"""Putting a reasoner in front of a model: what ``lensforge sample``, ``lensforge eval`` and the search share.

* :func:`add_cli_arguments` — ``--reasoner NAME``, ``--reasoner-arg KEY=VALUE`` (dotted keys reach nested
  settings: ``endpoint.base_url=…``), ``--system-prompt-file FILE``;
* :func:`build_reasoner` — a reasoner plugin from those (validated against its ``Config``);
* :func:`attach` — :meth:`~lensforge.interfaces.reasoner.Reasoner.setup` with the model's text encoder and
  training world, then ``preflight`` (an unreachable endpoint is a clear error before any image);
* :func:`rewrite_all` — each distinct prompt rewritten once, ``{prompt: Rewrite}``, with a one-line report.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.reasoner")


def add_cli_arguments(p: argparse.ArgumentParser, *, recipe_default: bool = False) -> None:
    """The reasoner options of a verb (``recipe_default``: the recipe's ``sampling.reasoner`` applies unless off)."""
    default = " (default: the recipe's sampling.reasoner, if any)" if recipe_default else " (default: none)"
    p.add_argument("--reasoner", default=None, metavar="NAME",
                   help="rewrite prompts with this reasoner plugin first: synthetic_world, openai_compatible, "
                        "transformers_lm …" + default)
    p.add_argument("--reasoner-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the reasoner's Config (repeatable; dotted keys for nested ones, e.g. "
                        "endpoint.base_url=http://127.0.0.1:8000/v1 endpoint.model=qwen2.5:7b)")
    p.add_argument("--system-prompt-file", default=None, metavar="FILE",
                   help="the reasoner's system prompt (plain text, e.g. a search's best_system_prompt.txt)")
    if recipe_default:
        p.add_argument("--no-reasoner", action="store_true", help="do not rewrite, even if the recipe names a reasoner")


def parse_params(args: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "endpoint.model=x"]`` → ``{"a": 1, "endpoint": {"model": "x"}}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or not key.strip():
            raise LensforgeError(f"--reasoner-arg must look like key=value, got '{a}'")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LensforgeError(f"--reasoner-arg '{a}': '{part}' was already given a value")
        node[parts[-1]] = yaml.safe_load(value) if value else value
    return out


def build_reasoner(name: str, args: Sequence[str] = (), system_prompt_file: str | None = None) -> Any:
    """A reasoner plugin from its registry name and ``key=value`` parameters (validated against its Config)."""
    from lensforge import registry

    params = parse_params(args)
    cls = registry.get("reasoner", name)
    if system_prompt_file is not None:
        if not getattr(cls, "uses_system_prompt", True):
            raise LensforgeError(f"reasoner '{name}' does not use a system prompt (--system-prompt-file does not apply)")
        params["system_prompt_file"] = system_prompt_file
    return cls.from_params(**params)


def reasoner_for(args: argparse.Namespace, recipe_config: Any = None) -> Any:
    """The reasoner a verb's options ask for (``--reasoner``), else the recipe's ``sampling.reasoner`` (unless
    ``--no-reasoner``), with ``--reasoner-arg`` / ``--system-prompt-file`` applied; None = no rewriting."""
    from lensforge.recipe.plugin_config import config_to_dict

    if getattr(args, "reasoner", None):
        return build_reasoner(args.reasoner, args.reasoner_arg, args.system_prompt_file)
    ref = getattr(getattr(recipe_config, "sampling", None), "reasoner", None)
    if ref is None or getattr(args, "no_reasoner", False):
        if args.reasoner_arg or args.system_prompt_file:
            raise LensforgeError("--reasoner-arg / --system-prompt-file need a reasoner: give --reasoner NAME"
                                 + (" (the recipe's sampling.reasoner is turned off by --no-reasoner)" if ref else ""))
        return None
    base = [f"{k}={_yaml(v)}" for k, v in config_to_dict(ref.config).items() if v is not None]
    log.info("reasoner: the recipe's sampling.reasoner (%s); --no-reasoner turns it off", ref.name)
    return build_reasoner(ref.name, [*base, *args.reasoner_arg], args.system_prompt_file)


def _yaml(v: Any) -> str:
    import json

    return json.dumps(v)  # JSON is YAML: parse_params reads it back unchanged


def sharing_problems(reasoner: Any, text_encoder: Any, key: str) -> list[tuple[str, str]]:
    """Validation of a reasoner node that shares the text encoder's weights (``share_text_encoder: true``):
    the recipe's text encoder must be ``gpt_oss`` and, when the reasoner names a ``path``, from that folder."""
    import os

    if reasoner is None or not getattr(reasoner.config, "share_text_encoder", False):
        return []
    if text_encoder.name != "gpt_oss":
        return [(f"{key}.share_text_encoder",
                 f"the model's text encoder is '{text_encoder.name}'; {reasoner.name} can share weights only with the "
                 "gpt_oss text encoder (set share_text_encoder: false and path: <model folder>)")]
    mine, theirs = getattr(reasoner.config, "path", None), getattr(text_encoder.config, "path", None)
    if mine and theirs and os.path.realpath(os.path.expanduser(mine)) != os.path.realpath(os.path.expanduser(theirs)):
        return [(f"{key}.path", f"'{mine}' is not the text encoder's folder '{theirs}': only the same weights can be shared")]
    return []


def training_world(recipe_config: Any) -> Any:
    """The synthetic world config a recipe trains on (None when its data is not the synthetic world)."""
    src = getattr(getattr(recipe_config, "data", None), "source", None)
    return src.config if src is not None and getattr(src, "name", None) == "synthetic" else None


def attach(reasoner: Any, *, text_encoder: Any = None, recipe_config: Any = None) -> Any:
    """Tell ``reasoner`` what it serves (the text encoder, the training world), then check it can run."""
    reasoner.setup(text_encoder=text_encoder, world=training_world(recipe_config))
    reasoner.preflight()
    return reasoner


def rewrite_all(reasoner: Any, prompts: Sequence[str], *, system_prompt: str | None = None) -> tuple[dict[str, Any], str]:
    """``({prompt: Rewrite}, report line)``: each distinct prompt rewritten once."""
    unique = list(dict.fromkeys(str(p) for p in prompts))
    rewrites = reasoner.rewrite(unique, system_prompt=system_prompt)
    if len(rewrites) != len(unique):
        raise LensforgeError(f"reasoner '{reasoner.plugin_name}' returned {len(rewrites)} rewrites for {len(unique)} prompts")
    by = {p: r for p, r in zip(unique, rewrites)}
    failed = [r for r in rewrites if not r.ok]
    unparsed = sum(bool(r.notes.get("unparsed")) for r in rewrites)
    line = f"reasoner {reasoner.describe()}: {len(unique)} prompt(s) rewritten"
    if failed:
        line += (f", {len(failed)} without a usable rewrite (the prompt was used as is; first: "
                 f"{failed[0].error})")
    if unparsed:
        line += f", {unparsed} with words it could not parse (kept, see notes.unparsed)"
    return by, line


__all__ = ["add_cli_arguments", "attach", "build_reasoner", "parse_params", "reasoner_for", "rewrite_all",
           "sharing_problems", "training_world"]
