"""Validate plain recipe data against typed dataclasses (core schema and plugin ``Config``s).

One walker serves both: it returns the built dataclass instance and appends every problem it
finds (unknown key with a suggestion, wrong type, missing required value, ``???``) instead of
stopping at the first. Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Any``,
``X | None``/``Optional[X]``, ``Union``, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``dict[str, X]``, nested dataclasses and plugin references
(:func:`plugin_field`).

Numeric ranges live in the schema itself: ``Annotated[float, Range(gt=0)]`` (or the shorthands
:data:`Positive`, :data:`NonNegative` …). A value outside its range is reported like any other
problem (``file -> optim.lr: must be > 0, got -1.0``), so ``lensforge validate`` catches it
before anything is built. Ranges apply inside lists and tuples too
(``tuple[Annotated[float, Range(ge=0, lt=1)], ...]``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from lensforge.errors import LensforgeError, PluginError, Problem, RecipeError

MISSING_VALUE = "???"


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric field: ``Annotated[float, Range(ge=0, lt=1)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is outside the range (None when inside)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if value != value:  # NaN
            return f"must be {self}, got NaN"
        for bound, ok, op in ((self.ge, lambda b: value >= b, ">="), (self.gt, lambda b: value > b, ">"),
                              (self.le, lambda b: value <= b, "<="), (self.lt, lambda b: value < b, "<")):
            if bound is not None and not ok(bound):
                return f"must be {self}, got {value}"
        return None

    def __str__(self) -> str:
        parts = [f"{op} {b:g}" for b, op in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
                 if b is not None]
        return " and ".join(parts) or "any number"


#: Common ranges as ready-made annotations.
PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]
Decay = Annotated[float, Range(ge=0, lt=1)]


@dataclass
class PluginRef:
    """A validated plugin node: the registry key, the class validation used and its built ``Config``.

    ``schema`` is what validation needed: the plugin's light schema class (no torch imported) or the
    plugin class itself; :attr:`cls` is the plugin class, imported on first use (to build it).
    """

    kind: str
    name: str
    schema: type
    config: Any

    @property
    def cls(self) -> type:
        """The plugin class (imports the plugin's module on first use)."""
        full = self.__dict__.get("_cls")
        if full is None:
            from lensforge import registry

            try:
                full = registry.get(self.kind, self.name)
            except LensforgeError:
                full = self.schema  # a class handed in directly (tests, notebooks)
            self.__dict__["_cls"] = full
        return full

    def build(self, **overrides: Any) -> Any:
        cfg = dataclasses.replace(self.config, **overrides) if overrides else self.config
        return self.cls(cfg)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **config_to_dict(self.config)}


def plugin_field(kind: str, default: dict[str, Any] | None = None, doc: str = "", *, optional: bool = False) -> Any:
    """Declare a schema field holding a plugin node ``{name: …, **params}`` of ``kind``.

    ``optional``: the field may be left out or ``null`` (its value is then None).
    """
    md = {"plugin_kind": kind, "doc": doc, "optional": optional}
    if optional:
        return dataclasses.field(default=None, metadata=md)
    if default is None:
        return dataclasses.field(metadata=md)
    return dataclasses.field(default_factory=lambda: dict(default), metadata=md)


def node_to_dict(node: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    return dict(node)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain data (plugin refs as nodes, tuples as lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, PluginRef):
            return v.to_dict()
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def build_config(cls: type, params: dict[str, Any], *, file: str | None = None, prefix: str = "") -> Any:
    """Build ``cls.Config`` from ``params`` or raise :class:`RecipeError` listing every problem."""
    problems: list[Problem] = []
    cfg_cls = getattr(cls, "Config", cls)
    out = validate_dataclass(cfg_cls, params, prefix, problems, origin=lambda k: file)
    if problems:
        raise RecipeError(problems)
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        inner, *extra = typing.get_args(tp)
        ranges = [str(r) for r in extra if isinstance(r, Range)]
        return _type_name(inner) + (f" ({', '.join(ranges)})" if ranges else "")
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _resolve_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as e:  # a forward reference we cannot resolve
        raise PluginError(f"cannot read the type annotations of {cls.__module__}.{cls.__qualname__}: {e}") from e


def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


OriginFn = Callable[[str], Union[str, None]]


def validate_dataclass(
    cls: type, data: Any, prefix: str, problems: list[Problem], origin: OriginFn
) -> Any:
    """Check ``data`` (a mapping) against dataclass ``cls``; fill defaults; collect problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(prefix, f"expected a mapping, got {_show(data)}", origin(prefix)))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _resolve_hints(cls)
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            sugg = f" (did you mean '{hint[0]}'?)" if hint else ""
            allowed = ", ".join(fields) or "(none)"
            where = _join(prefix, key)
            problems.append(Problem(where, f"unknown key{sugg}; allowed keys: {allowed}", origin(where)))
    kwargs: dict[str, Any] = {}
    ok = True
    for name, f in fields.items():
        where = _join(prefix, name)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name in data:
            value = data[name]
        elif has_default:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(value) or isinstance(value, PluginRef):
                kwargs[name] = value
                continue
        else:
            problems.append(Problem(where, "missing required value", origin(where)))
            ok = False
            continue
        if isinstance(value, str) and value == MISSING_VALUE:
            problems.append(Problem(where, "missing required value (???): set it in the recipe or as " f"{where}=…", origin(where)))
            ok = False
            continue
        kind = f.metadata.get("plugin_kind") if f.metadata else None
        n_before = len(problems)
        if kind and value is None and f.metadata.get("optional"):
            built = None
        elif kind:
            built = validate_plugin_node(kind, value, where, problems, origin)
        else:
            built = check_value(hints.get(name, Any), value, where, problems, origin)
        if len(problems) > n_before:
            ok = False
        kwargs[name] = built
    if not ok:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(Problem(prefix, f"invalid value: {e}", origin(prefix)))
        return None


def validate_plugin_node(kind: str, node: Any, where: str, problems: list[Problem], origin: OriginFn) -> PluginRef | None:
    """Validate ``{name: …, **params}`` against the named plugin's ``Config``."""
    from lensforge import registry

    if node is None:
        problems.append(Problem(where, f"missing {kind} plugin node (expected {{name: …}})", origin(where)))
        return None
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict):
        problems.append(Problem(where, f"expected a plugin node {{name: …, …}}, got {_show(node)}", origin(where)))
        return None
    params = dict(node)
    name = params.pop("name", None)
    name_key = _join(where, "name")
    if name is None or name == MISSING_VALUE:
        problems.append(Problem(name_key, f"missing required value: which {kind} plugin", origin(name_key)))
        return None
    try:
        cls = registry.get_schema(kind, str(name))
    except LensforgeError as e:
        problems.append(Problem(name_key, str(e), origin(name_key)))
        return None
    n_before = len(problems)
    cfg = validate_dataclass(cls.Config, params, where, problems, origin)
    if len(problems) > n_before or cfg is None:
        return None
    try:
        for key, msg in cls.check_config(cfg):
            k = _join(where, key) if key else where
            problems.append(Problem(k, msg, origin(k)))
    except Exception as e:  # a plugin's check must not crash validation
        problems.append(Problem(where, f"{kind} plugin '{name}' check_config failed: {e}", origin(where)))
    return PluginRef(kind=kind, name=str(name), schema=cls, config=cfg)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_value(tp: Any, value: Any, where: str, problems: list[Problem], origin: OriginFn) -> Any:
    """Check (and lightly coerce: int→float, list→tuple) ``value`` against annotation ``tp``."""
    if tp is Any or tp is object:
        return value
    if typing.get_origin(tp) is Annotated:
        inner, *extra = typing.get_args(tp)
        n_before = len(problems)
        out = check_value(inner, value, where, problems, origin)
        if len(problems) == n_before:
            for r in extra:
                why = r.violation(out) if isinstance(r, Range) else None
                if why:
                    problems.append(Problem(where, why, origin(where)))
                    return None
        return out
    if isinstance(value, str) and value == MISSING_VALUE:
        problems.append(Problem(where, "missing required value (???)", origin(where)))
        return None
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if o is Union or (sys.version_info >= (3, 10) and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errs: list[Problem] = []
        for a in args:
            if a is type(None):
                continue
            trial: list[Problem] = []
            out = check_value(a, value, where, trial, origin)
            if not trial:
                return out
            errs = errs or trial
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            problems.extend(errs)
        else:
            problems.append(Problem(where, f"expected {' or '.join(_type_name(a) for a in args)}, got {_show(value)}", origin(where)))
        return None
    if o is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
            sugg = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(Problem(where, f"must be one of {', '.join(repr(a) for a in args)}, got {_show(value)}{sugg}", origin(where)))
            return None
        return value
    if o in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            problems.append(Problem(where, f"expected a list, got {_show(value)}", origin(where)))
            return None
        inner = args[0] if args else Any
        return [check_value(inner, v, _join(where, i), problems, origin) for i, v in enumerate(value)]
    if o in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(Problem(where, f"expected a list, got {_show(value)}", origin(where)))
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(args[0], v, _join(where, i), problems, origin) for i, v in enumerate(value))
        if args and len(args) != len(value):
            problems.append(Problem(where, f"expected {len(args)} items, got {len(value)}", origin(where)))
            return None
        return tuple(check_value(a, v, _join(where, i), problems, origin) for i, (a, v) in enumerate(zip(args or [Any] * len(value), value)))
    if o in (dict, typing.Dict):
        if not isinstance(value, dict):
            problems.append(Problem(where, f"expected a mapping, got {_show(value)}", origin(where)))
            return None
        vt = args[1] if len(args) == 2 else Any
        return {k: check_value(vt, v, _join(where, str(k)), problems, origin) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return validate_dataclass(tp, value, where, problems, origin)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    problems.append(Problem(where, f"expected {_type_name(tp)}, got {_show(value)}", origin(where)))
    return None


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(src)
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(getattr(b, "value", None), ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def describe_config(cls: type) -> list[tuple[str, str, str, str]]:
    """``(field, type, default, doc)`` rows for a plugin's ``Config`` (for ``lensforge plugins``)."""
    cfg = getattr(cls, "Config", cls)
    docs = field_docs(cfg)
    hints = _resolve_hints(cfg)
    rows = []
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            d = f.default_factory()  # type: ignore[misc]
            default = repr(config_to_dict(d) if dataclasses.is_dataclass(d) else d)
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints.get(f.name, Any)), default, docs.get(f.name, "")))
    return rows
