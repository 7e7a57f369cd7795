"""``lensforge plugins [KIND] [NAME]``: list plugins, or show one plugin's Config."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="only this kind (dit, vae, text_encoder, attention, data, stage …)")
    p.add_argument("name", nargs="?", help="show this plugin's parameters (its Config fields)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lensforge import registry

    console = Console(width=160)
    if args.name:
        from lensforge.recipe.plugin_config import describe_config

        schema = registry.get_schema(args.kind, args.name)  # no torch for a plugin with a light schema
        spec = next((s for s in registry.specs(args.kind) if s.name == args.name), None)
        provenance = spec.provenance if spec is not None else "escape hatch"
        console.print(f"[bold]{args.kind}:{args.name}[/bold]  {provenance}  ({spec.target if spec else args.name})")
        console.print(spec.summary() if spec is not None else (schema.__doc__ or "").strip().splitlines()[0])
        t = Table("parameter", "type", "default", "description", box=None)
        for row in describe_config(schema):
            t.add_row(*row)
        console.print(t)
        return 0
    if args.kind:
        registry.check_kind(args.kind)
    t = Table("kind", "name", "provenance", "summary", box=None)
    for spec in registry.specs(args.kind):
        t.add_row(spec.kind, spec.name, spec.provenance, spec.summary())
    for (kind, name), dup in registry.conflicts().items():
        t.add_row(kind, name, "[red]CONFLICT[/red]", "; ".join(s.source for s in dup))
    console.print(t)
    return 0
