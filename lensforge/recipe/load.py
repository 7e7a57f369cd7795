"""``load_recipe``: layers → interpolation → schema + plugin validation → cross checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from lensforge.errors import Problem, RecipeError
from lensforge.recipe.checks import run_checks
from lensforge.recipe.loader import Loaded, load_layers
from lensforge.recipe.plugin_config import config_to_dict, validate_dataclass
from lensforge.recipe.schema import RecipeConfig


def plugin_paths(cls: type = RecipeConfig, prefix: str = "") -> set[str]:
    """Dotted paths of every plugin node the schema declares."""
    import typing

    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("plugin_kind"):
            out.add(path)
        elif isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name]):
            out |= plugin_paths(hints[f.name], path)
    return out


@dataclass
class Recipe:
    """A validated recipe: the typed config plus what is needed to log and reproduce it."""

    config: RecipeConfig
    data: dict[str, Any]  # resolved plain data (what ``validate`` prints)
    path: str
    files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    _origin: Any = field(default=None, repr=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(config_to_dict(self.config), sort_keys=False, default_flow_style=None, width=100)

    def plugins(self) -> dict[str, Any]:
        """``{dotted path: PluginRef}`` for every plugin node that is set (optional nodes may be null),
        the DiT nodes of extra roles (``model.roles.<role>.dit``) included."""
        out = {}
        for path in sorted(plugin_paths()):
            obj: Any = self.config
            for part in path.split("."):
                obj = getattr(obj, part)
            if obj is not None:
                out[path] = obj
        for role, rc in sorted((getattr(self.config.model, "roles", None) or {}).items()):
            if getattr(rc, "dit", None) is not None:
                out[f"model.roles.{role}.dit"] = rc.dit
        return out

    def environment_issues(self) -> list[Problem]:
        """Every plugin's ``check_environment`` failure on this machine (missing folders …)."""
        out = []
        for path, ref in self.plugins().items():
            check = getattr(getattr(ref, "schema", None), "check_environment", None)
            if not callable(check):
                continue
            try:
                found = [(f"{path}.{key}" if key else path, msg) for key, msg in check(ref.config)]
            except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
                found = [(path, f"check_environment failed: {type(e).__name__}: {e}")]
            out.extend(Problem(key, msg, self.origin_of(key)) for key, msg in found)
        return out

    def environment_problems(self) -> list[str]:
        """``key: message`` for every plugin whose ``check_environment`` fails on this machine."""
        return [f"{p.key}: {p.message}" for p in self.environment_issues()]

    def origin_of(self, key: str) -> str | None:
        """The recipe file (or ``<command line>``) that set ``key``."""
        return self._origin(key) if self._origin is not None else self.path


def schema_defaults(cls: type) -> dict[str, Any]:
    """Defaults of the core schema's plain (non-plugin) fields, as a base layer for interpolation."""
    import typing

    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("plugin_kind"):
            continue
        tp = hints.get(f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out[f.name] = schema_defaults(tp)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = config_to_dict(f.default_factory())  # type: ignore[misc]
    return out


def _resolve(loaded: Loaded, problems: list[Problem]) -> dict[str, Any]:
    from lensforge.recipe.loader import merge

    base = schema_defaults(RecipeConfig)
    data = merge(base, loaded.data, set(plugin_paths()), {}, "<default>")
    try:
        cfg = OmegaConf.create(data)
    except Exception as e:
        problems.append(Problem("", f"cannot build the recipe: {e}", loaded.files[-1] if loaded.files else None))
        return {}
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:
        pass
    # find every key whose interpolation fails
    def walk(node: Any, prefix: str) -> Any:
        if OmegaConf.is_dict(node):
            out = {}
            for k in node.keys():
                path = f"{prefix}.{k}" if prefix else str(k)
                try:
                    child = node._get_node(k)
                    if OmegaConf.is_config(child):
                        out[k] = walk(child, path)
                    else:
                        out[k] = node[k]
                except Exception as e:
                    msg = str(e).splitlines()[0]
                    problems.append(Problem(path, f"cannot resolve interpolation: {msg}", loaded.origin_of(path)))
                    out[k] = None
            return out
        if OmegaConf.is_list(node):
            return [walk(c, f"{prefix}[{i}]") if OmegaConf.is_config(c) else c for i, c in enumerate(node)]
        return node

    return walk(cfg, "")


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, inline: dict[str, Any] | None = None,
                display: str | None = None) -> Recipe:
    """Load and validate a recipe; raise :class:`RecipeError` listing every problem.

    ``inline``: the recipe's top layer as a mapping written inside the file ``path`` (a pipeline's stage entry,
    its ``extends`` relative to that file), reported as ``display``.
    """
    loaded = load_layers(path, overrides, plugin_paths(), inline=inline, display=display)
    problems = list(loaded.problems)
    data = _resolve(loaded, problems) if loaded.files else {}
    config = None
    if loaded.files:
        found: list[Problem] = []
        config = validate_dataclass(RecipeConfig, data, "", found, origin=loaded.origin_of)
        if loaded.problems:
            # a layer failed to load: values it would have set are not "missing", they are unknown
            found = [p for p in found if not p.message.startswith("missing required value")]
        problems.extend(found)
    if config is not None and not problems:
        for key, msg in run_checks(config):
            problems.append(Problem(key, msg, loaded.origin_of(key)))
    if problems or config is None:
        raise RecipeError(problems or [Problem("", "recipe is empty", str(path))])
    return Recipe(config=config, data=data, path=display or str(path), files=loaded.files, overrides=list(overrides or []),
                  _origin=loaded.origin_of)
