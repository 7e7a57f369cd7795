"""Plugin registry: one namespace per kind, entry-point discovery, the ``pkg.mod:Class`` hatch.

Kinds and the interface base class each accepts are listed in :data:`KINDS`. Plugins arrive in
three ways:

1. **Entry points** in group ``lensforge.<kind>`` (``name = "pkg.module:Class"``). First-party
   plugins are declared exactly like a third party's. Discovery reads metadata only: nothing is
   imported until a plugin is asked for, and its distribution and version are recorded.
2. **The decorator** :func:`register` on a class (in-tree code, notebooks, tests). Importing a
   module that declares an entry-point plugin also runs its decorator; that is not a duplicate.
3. **The escape hatch**: a recipe may name ``"pkg.module:Class"`` directly (still type-checked).

A name declared twice by different sources is an error naming both. An unknown name is an error
listing the known names and the closest matches.

Environment switches (mirroring pytest's):

* ``LENSFORGE_DISABLE_PLUGIN_AUTOLOAD=1``: ignore entry points, except those of the
  distributions listed in ``LENSFORGE_PLUGINS`` (comma-separated distribution names).
* ``LENSFORGE_BLOCK_PLUGINS``: comma-separated ``name``, ``kind:name`` or ``dist:NAME`` items
  that are never offered.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from lensforge.errors import PluginError

#: kind -> "module:BaseClass" (imported lazily, only when a class must be checked).
KINDS: dict[str, str] = {
    "dit": "lensforge.interfaces.models:DiT",
    "vae": "lensforge.interfaces.models:VAE",
    "text_encoder": "lensforge.interfaces.models:TextEncoder",
    "attention": "lensforge.interfaces.models:AttentionBackend",
    "data": "lensforge.interfaces.data:DataSource",
    "stage": "lensforge.interfaces.stage:Stage",
    "reward": "lensforge.interfaces.reward:Reward",
    "reasoner": "lensforge.interfaces.reasoner:Reasoner",
}

#: kind -> "module:SchemaBase": the light base of a plugin's validation half (see
#: :mod:`lensforge.interfaces.schema`); recipes validate against it without importing torch.
SCHEMA_BASES: dict[str, str] = {
    "dit": "lensforge.interfaces.schema:DiTSchema",
    "vae": "lensforge.interfaces.schema:VAESchema",
    "text_encoder": "lensforge.interfaces.schema:TextEncoderSchema",
    "attention": "lensforge.interfaces.schema:PluginSchema",
    "data": "lensforge.interfaces.schema:PluginSchema",
    "stage": "lensforge.interfaces.schema:StageSchema",
    "reward": "lensforge.interfaces.schema:PluginSchema",
    "reasoner": "lensforge.interfaces.schema:PluginSchema",
}

#: Class-level names a plugin class must not (re)define for its light schema base to stand in for it.
_SCHEMA_MEMBERS = ("Config", "tiny_config", "check_config", "check_environment", "input_spec", "latent_spec",
                   "feature_spec", "check_recipe", "roles")

ENTRY_POINT_PREFIX = "lensforge."


def _import_object(target: str) -> Any:
    mod_name, _, qual = target.partition(":")
    if not mod_name or not qual:
        raise PluginError(f"'{target}' is not of the form 'package.module:Class'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise PluginError(f"cannot import module '{mod_name}' for '{target}': {e}") from e
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PluginError(f"module '{mod_name}' has no attribute '{qual}' (from '{target}')") from e
    return obj


def base_class(kind: str) -> type:
    check_kind(kind)
    return _import_object(KINDS[kind])


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PluginError(
            f"unknown plugin kind '{kind}'; kinds are: {', '.join(KINDS)}" + _suggest(kind, KINDS)
        )


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


@dataclass
class PluginSpec:
    """What the registry knows about one plugin, before or after import."""

    kind: str
    name: str
    target: str  # "pkg.module:Class"
    source: str  # "entry point of lensforge 0.1.0", "decorator in my_mod", …
    dist: str | None = None
    version: str | None = None
    cls: type | None = None
    schema: type | None = None  # the light validation half, when found without importing ``cls``

    @property
    def provenance(self) -> str:
        if self.dist:
            return f"{self.dist} {self.version or '?'}"
        return f"in-process ({self.target.partition(':')[0]})"

    def summary(self) -> str:
        """One-line summary: class docstring's first line, read from source without importing."""
        if self.cls is not None:
            doc = inspect.getdoc(self.cls) or ""
            return doc.strip().splitlines()[0] if doc.strip() else ""
        return _docstring_without_import(self.target)


def module_source(mod_name: str) -> tuple[str, bool] | None:
    """``(path of the .py file, is a package __init__)`` of a module, found **without importing** it or
    its parent packages (``importlib.util.find_spec`` of a submodule imports the parents, and a
    plugin package's ``__init__`` may import torch). None when it is not a plain source file."""
    import sys

    loaded = sys.modules.get(mod_name)
    if loaded is not None:
        f = getattr(loaded, "__file__", None)
        return (f, f.endswith("__init__.py")) if f and f.endswith(".py") else None
    parts = mod_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        o = spec.origin
        return (o, o.endswith("__init__.py")) if o and o.endswith(".py") else None
    locations = list(spec.submodule_search_locations or [])
    for i, part in enumerate(parts[1:], 1):
        last = i == len(parts) - 1
        nxt: list[str] = []
        for loc in locations:
            pkg = os.path.join(loc, part)
            if os.path.isfile(os.path.join(pkg, "__init__.py")):
                if last:
                    return os.path.join(pkg, "__init__.py"), True
                nxt = [pkg]
                break
            if last and os.path.isfile(pkg + ".py"):
                return pkg + ".py", False
            if os.path.isdir(pkg):  # a namespace package
                nxt.append(pkg)
        if not nxt:
            return None
        locations = nxt
    return None


def _parse_module(mod_name: str) -> tuple[ast.Module, str, bool] | None:
    found = module_source(mod_name)
    if found is None:
        return None
    try:
        with open(found[0], encoding="utf-8") as f:
            return ast.parse(f.read()), found[0], found[1]
    except (OSError, SyntaxError):
        return None


def _resolve_from(mod_name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``mod_name`` names."""
    if not node.level:
        return node.module or ""
    base = mod_name if is_pkg else mod_name.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _top_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """Module-level ``from … import …`` statements, including those under ``if TYPE_CHECKING:`` (how a
    package that loads its names lazily declares its re-exports)."""
    out = []
    for n in tree.body:
        if isinstance(n, ast.ImportFrom):
            out.append(n)
        elif isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            out += [m for m in n.body if isinstance(m, ast.ImportFrom)]
    return out


def _class_source(target: str, _depth: int = 0) -> tuple[ast.ClassDef, ast.Module, str, bool] | None:
    """``(class node, module tree, module name, is package)`` where ``pkg.mod:Class`` is defined, read from
    source without importing (follows re-exports such as ``from .model import Class``)."""
    mod_name, _, qual = target.partition(":")
    parsed = _parse_module(mod_name)
    if parsed is None:
        return None
    tree, _, is_pkg = parsed
    node: Any = tree
    for i, part in enumerate(qual.split(".")):
        found = next(
            (n for n in getattr(node, "body", []) if isinstance(n, ast.ClassDef) and n.name == part), None
        )
        if found is None and i == 0 and _depth < 3:
            for n in _top_imports(tree):  # a re-export in a package __init__: follow it
                if any((a.asname or a.name) == part for a in n.names):
                    name = next(a.name for a in n.names if (a.asname or a.name) == part)
                    rest = ".".join([name] + qual.split(".")[1:])
                    return _class_source(f"{_resolve_from(mod_name, is_pkg, n)}:{rest}", _depth + 1)
        if found is None:
            return None
        node = found
    return node, tree, mod_name, is_pkg


def _docstring_without_import(target: str) -> str:
    """First docstring line of ``pkg.mod:Class`` read from source (follows ``from .x import Class``)."""
    found = _class_source(target)
    if found is None:
        return ""
    doc = ast.get_docstring(found[0]) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class _Registry:
    specs: dict[str, dict[str, PluginSpec]] = field(default_factory=lambda: {k: {} for k in KINDS})
    conflicts: dict[tuple[str, str], list[PluginSpec]] = field(default_factory=dict)
    discovered: bool = False


_REG = _Registry()


def _blocklist() -> set[str]:
    raw = os.environ.get("LENSFORGE_BLOCK_PLUGINS", "")
    return {item.strip() for item in raw.split(",") if item.strip()}


def _blocked(spec: PluginSpec) -> bool:
    bl = _blocklist()
    return (
        spec.name in bl
        or f"{spec.kind}:{spec.name}" in bl
        or (spec.dist is not None and f"dist:{spec.dist}" in bl)
    )


def _autoload_allowed(dist: str | None) -> bool:
    if os.environ.get("LENSFORGE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false", "False"):
        return True
    allowed = {d.strip().lower() for d in os.environ.get("LENSFORGE_PLUGINS", "").split(",") if d.strip()}
    return dist is not None and dist.lower() in allowed


def _add(spec: PluginSpec) -> None:
    table = _REG.specs[spec.kind]
    old = table.get(spec.name)
    if old is None:
        table[spec.name] = spec
        return
    if old.target == spec.target:
        # Same class seen twice (entry point + its decorator running on import): merge.
        if spec.cls is not None:
            old.cls = spec.cls
        return
    _REG.conflicts.setdefault((spec.kind, spec.name), [old]).append(spec)


def discover(refresh: bool = False) -> None:
    """Read entry points of every kind (metadata only; nothing is imported)."""
    if _REG.discovered and not refresh:
        return
    if refresh:
        # keep decorator-registered classes, re-read entry points
        for kind, table in _REG.specs.items():
            _REG.specs[kind] = {n: s for n, s in table.items() if s.dist is None}
        _REG.conflicts.clear()
        importlib.invalidate_caches()
    _REG.discovered = True
    seen: set[tuple[str, str, str]] = set()
    for dist in md.distributions():
        dist_name = dist.metadata["Name"] if dist.metadata else None
        for ep in dist.entry_points:
            if not ep.group.startswith(ENTRY_POINT_PREFIX):
                continue
            kind = ep.group[len(ENTRY_POINT_PREFIX):]
            if kind not in KINDS or not _autoload_allowed(dist_name):
                continue
            key = (kind, ep.name, ep.value)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            spec = PluginSpec(
                kind=kind,
                name=ep.name,
                target=ep.value.replace(" ", ""),
                source=f"entry point '{ep.name}' of distribution {dist_name} {dist.version}",
                dist=dist_name,
                version=dist.version,
            )
            if not _blocked(spec):
                _add(spec)


def register(kind: str, name: str | None = None) -> Callable[[type], type]:
    """Class decorator: check the interface and ``Config``, then register under ``name``.

    ``name`` defaults to the class name in snake_case.
    """
    check_kind(kind)

    def deco(cls: type) -> type:
        key = name or _snake(cls.__name__)
        validate_plugin_class(kind, cls, key)
        cls.plugin_name = key
        cls.plugin_kind = kind
        target = f"{cls.__module__}:{cls.__qualname__}"
        spec = PluginSpec(kind=kind, name=key, target=target, source=f"@register in module {cls.__module__}", cls=cls)
        discover()
        _add(spec)
        return cls

    return deco


def _snake(s: str) -> str:
    out = []
    for i, ch in enumerate(s):
        if ch.isupper() and i and not s[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def validate_plugin_class(kind: str, cls: Any, name: str, *, schema_only: bool = False) -> None:
    """Check a class against its kind: subclass of the interface (or, ``schema_only``, of the kind's
    light schema base), keyword-only ``Config``."""
    base = schema_base(kind) if schema_only else base_class(kind)
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise PluginError(
            f"{kind} plugin '{name}' ({_describe(cls)}) must subclass {base.__module__}.{base.__qualname__}"
        )
    cfg = getattr(cls, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg) or not isinstance(cfg, type):
        raise PluginError(f"{kind} plugin '{name}' ({_describe(cls)}) needs a nested 'Config' dataclass")
    if not all(f.kw_only for f in dataclasses.fields(cfg)):
        raise PluginError(
            f"{kind} plugin '{name}' ({_describe(cls)}): Config must be declared @dataclass(kw_only=True)"
        )


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def names(kind: str) -> list[str]:
    check_kind(kind)
    discover()
    return sorted(_REG.specs[kind])


def specs(kind: str | None = None) -> list[PluginSpec]:
    """All known plugin specs (of one kind), without importing them."""
    discover()
    kinds = [kind] if kind else list(KINDS)
    out = []
    for k in kinds:
        check_kind(k)
        out.extend(_REG.specs[k][n] for n in sorted(_REG.specs[k]))
    return out


def conflicts() -> dict[tuple[str, str], list[PluginSpec]]:
    discover()
    return dict(_REG.conflicts)


def is_escape_hatch(name: str) -> bool:
    return ":" in name


def get_spec(kind: str, name: str) -> PluginSpec:
    """The spec for ``name`` (or a ``pkg.mod:Class`` target), loading and checking the class."""
    check_kind(kind)
    discover()
    if (kind, name) in _REG.conflicts:
        srcs = "; ".join(s.source for s in _REG.conflicts[(kind, name)])
        raise PluginError(f"{kind} plugin name '{name}' is declared twice: {srcs}")
    if is_escape_hatch(name):
        cls = _import_object(name)
        validate_plugin_class(kind, cls, name)
        return PluginSpec(kind=kind, name=name, target=name, source="escape hatch", cls=cls)
    spec = _REG.specs[kind].get(name)
    if spec is None:
        known = sorted(_REG.specs[kind])
        raise PluginError(
            f"unknown {kind} plugin '{name}'"
            + _suggest(name, known)
            + f"; known {kind} plugins: {', '.join(known) or '(none)'}"
        )
    if spec.cls is None:
        try:
            cls = _import_object(spec.target)
        except PluginError as e:
            raise PluginError(f"{kind} plugin '{name}' ({spec.source}) failed to load: {e}") from e
        validate_plugin_class(kind, cls, name)
        spec.cls = cls
        if (kind, name) in _REG.conflicts:  # its import registered a different class under the same name
            return get_spec(kind, name)
    spec.cls.plugin_name = spec.cls.__dict__.get("plugin_name") or name
    spec.cls.plugin_kind = kind
    return spec


def get(kind: str, name: str) -> type:
    """The plugin class registered as ``name`` for ``kind`` (imports only that plugin)."""
    return get_spec(kind, name).cls  # type: ignore[return-value]


def schema_base(kind: str) -> type:
    check_kind(kind)
    return _import_object(SCHEMA_BASES[kind])


def _light_schema(kind: str, target: str) -> type | None:
    """The plugin's validation half, found by reading its module's source (nothing heavy imported).

    The plugin class must subclass, as a name imported with ``from … import …``, a class that is a
    subclass of the kind's schema base and defines its own ``Config``; the plugin class itself must
    not redefine any of the members validation calls. Anything else → None (import the class).
    """
    if "." in target.partition(":")[2]:
        return None
    found = _class_source(target)
    if found is None:
        return None
    node, tree, mod_name, is_pkg = found
    own = set()
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            own |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            own.add(stmt.target.id)
    if own & set(_SCHEMA_MEMBERS):
        return None
    imported: dict[str, tuple[str, str]] = {}
    for n in _top_imports(tree):
        src = _resolve_from(mod_name, is_pkg, n)
        for a in n.names:
            imported[a.asname or a.name] = (src, a.name)
    base_cls = schema_base(kind)
    for b in node.bases:
        if not isinstance(b, ast.Name) or b.id not in imported:
            continue
        src, attr = imported[b.id]
        if src.startswith("lensforge.interfaces"):
            continue
        try:
            obj = getattr(importlib.import_module(src), attr)
        except Exception:  # noqa: BLE001 - fall back to importing the plugin itself
            return None
        if isinstance(obj, type) and issubclass(obj, base_cls) and "Config" in obj.__dict__:
            return obj
    return None


def get_schema(kind: str, name: str) -> type:
    """What validation needs of a plugin: its light schema class when it has one (found without
    importing the plugin, see :mod:`lensforge.interfaces.schema`), else the plugin class itself."""
    check_kind(kind)
    discover()
    spec = None if is_escape_hatch(name) else _REG.specs[kind].get(name)
    if spec is not None and (kind, name) not in _REG.conflicts:
        if spec.cls is not None:
            return spec.cls
        if spec.schema is None:
            light = _light_schema(kind, spec.target)
            if light is not None:
                validate_plugin_class(kind, light, name, schema_only=True)
                light.plugin_name = light.__dict__.get("plugin_name") or name
                light.plugin_kind = kind
                spec.schema = light
        if spec.schema is not None:
            return spec.schema
    return get(kind, name)


def build(kind: str, node: Any) -> Any:
    """Instantiate a plugin from a recipe node ``{name: …, **params}`` (dict or DictConfig)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    params = dict(node)
    name = params.pop("name")
    return get(kind, name).from_params(**params)  # validated against the plugin's Config


def _reset_for_tests() -> None:
    """Forget everything (tests only)."""
    global _REG
    _REG = _Registry()
