"""Load a recipe: YAML layers with ``extends:``, CLI dotlist overrides, per-key provenance.

Merge order: each file in ``extends`` (relative to the file, recursively, left to right), then
the file itself, then the command-line ``key=value`` overrides. A *plugin node* (a mapping at a
path the schema declares as a plugin) whose ``name`` changes in a later layer is **replaced**,
not deep-merged, so a new plugin never inherits the old one's parameters.

Problems (invalid YAML, missing ``extends`` file, a cycle, a bad override) are collected, not
raised one by one; :func:`load_layers` returns them with whatever could be loaded.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from lensforge.errors import Problem

CLI = "<command line>"


@dataclass
class Loaded:
    data: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)  # dotted key -> file that last set it
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def origin_of(self, key: str) -> str | None:
        """The file that set ``key`` (or its nearest parent)."""
        k = key
        while k:
            if k in self.origin:
                return self.origin[k]
            k = _parent(k)
        return self.files[0] if self.files else None


def _parent(key: str) -> str:
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _record(origin: dict[str, str], data: Any, prefix: str, src: str | dict[str, str]) -> None:
    origin[prefix] = src if isinstance(src, str) else (_nearest(src, prefix) or "?")
    if isinstance(data, dict):
        for k, v in data.items():
            _record(origin, v, f"{prefix}.{k}" if prefix else str(k), src)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _record(origin, v, f"{prefix}[{i}]", src)


def _drop_origin(origin: dict[str, str], prefix: str) -> None:
    for k in [k for k in origin if k == prefix or k.startswith(prefix + ".") or k.startswith(prefix + "[")]:
        del origin[k]


def merge(base: dict[str, Any], over: dict[str, Any], plugin_paths: set[str], origin: dict[str, str], src: str | dict[str, str], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` with plugin-node replacement; track origin.

    ``src`` names the layer ``over`` came from, or is that layer's own origin map (for a layer
    that is itself a merge of several files).
    """
    out = dict(base)
    for k, v in over.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        old = out.get(k)
        replace = (
            # a plugin node, or one nested in a plugin's Config (a stage's reward / reasoner node)
            (path in plugin_paths or any(path.startswith(p + ".") for p in plugin_paths))
            and isinstance(v, dict)
            and isinstance(old, dict)
            and "name" in v
            and v.get("name") != old.get("name")
        )
        if isinstance(v, dict) and isinstance(old, dict) and not replace:
            out[k] = merge(old, v, plugin_paths, origin, src, path)
        else:
            _drop_origin(origin, path)
            out[k] = copy.deepcopy(v)
            _record(origin, v, path, src)
    return out


def read_yaml(path: Path, problems: list[Problem], display: str) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problems.append(Problem("", f"cannot read file: {e.strerror or e}", display))
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        problems.append(Problem("<yaml>", f"invalid YAML{where}: {what}", display))
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(Problem("<yaml>", f"a recipe must be a mapping at the top level, got {type(data).__name__}", display))
        return None
    return data


def load_file(path: Path, plugin_paths: set[str], problems: list[Problem], stack: tuple[Path, ...] = (), files: list[str] | None = None,
              *, inline: dict[str, Any] | None = None, display: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``path`` with its ``extends`` chain; returns (data, origin). ``inline``: a layer given as a mapping
    that lives in the file ``path`` (a pipeline's stage; its ``extends`` are relative to ``path``), named ``display``."""
    files = files if files is not None else []
    path = path.resolve()
    display = display or _display(path)
    if path in stack:
        chain = " -> ".join(_display(p) for p in stack + (path,))
        problems.append(Problem("extends", f"extends cycle: {chain}", _display(stack[-1])))
        return {}, {}
    data = read_yaml(path, problems, display) if inline is None else copy.deepcopy(inline)
    files.append(display)
    if data is None:
        return {}, {}
    ext = data.pop("extends", None) or []
    if isinstance(ext, str):
        ext = [ext]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if not isinstance(ext, list):
        problems.append(Problem("extends", "must be a list of relative paths", display))
        ext = []
    for i, rel in enumerate(ext):
        if not isinstance(rel, str):
            problems.append(Problem(f"extends[{i}]", f"expected a path, got {rel!r}", display))
            continue
        target = (path.parent / rel)
        if not target.exists():
            problems.append(Problem(f"extends[{i}]", f"file '{rel}' not found (looked for {_display(target)})", display))
            continue
        sub, sub_origin = load_file(target, plugin_paths, problems, stack + (path,), files)
        merged = merge(merged, sub, plugin_paths, origin, sub_origin)
    merged = merge(merged, data, plugin_paths, origin, display)
    return merged, origin


def _nearest(origin: dict[str, str], key: str) -> str | None:
    k = key
    while k:
        if k in origin:
            return origin[k]
        k = _parent(k)
    return None


def parse_overrides(overrides: list[str], problems: list[Problem]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` → nested dict (values parsed as YAML, like OmegaConf's dotlist)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            problems.append(Problem(item, "override must look like key=value", CLI))
            continue
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            problems.append(Problem(key or item, "override has an empty key", CLI))
            continue
        try:
            one = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={raw}"]), resolve=False)
        except Exception as e:
            problems.append(Problem(key, f"cannot parse override value {raw!r}: {e}", CLI))
            continue
        out = merge(out, one, set(), {}, CLI)  # type: ignore[arg-type]
    return out


def load_layers(path: str | os.PathLike, overrides: list[str] | None, plugin_paths: set[str], *,
                inline: dict[str, Any] | None = None, display: str | None = None) -> Loaded:
    problems: list[Problem] = []
    p = Path(path)
    if not p.exists():
        problems.append(Problem("", "recipe file not found", str(path)))
        return Loaded(data={}, problems=problems)
    files: list[str] = []
    data, origin = load_file(p, plugin_paths, problems, files=files, inline=inline, display=display)
    if overrides:
        over = parse_overrides(list(overrides), problems)
        data = merge(data, over, plugin_paths, origin, CLI)
    return Loaded(data=data, origin=origin, files=files, problems=problems)
