"""Structure of the core package: no import circles, stages use each other's public names only,
the pretrain stage stays its Config and its objective."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "lensforge"


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py")}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import of a lensforge module, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lensforge.") or a.name == "lensforge":
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == "lensforge" or mod.startswith("lensforge.")):
                continue
            names = [a.name for a in node.names]
            out.append((mod, names, node.lineno))
            for n in names:  # ``from lensforge.x import y`` where y is a module
                if f"{mod}.{n}" in modules:
                    out.append((f"{mod}.{n}", [], node.lineno))
    return out


def test_no_import_circles_among_lensforge_modules():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for mod, _, _ in _imports(path, name, modules):
            target = mod
            while target not in modules and "." in target:  # ``from pkg.mod import Class``
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                graph[name].add(target)
    # package __init__ re-exports are aliases, not dependencies of their own: skip edges out of them
    # only when they import their own submodules (``lensforge.export`` → ``lensforge.export.reader``)
    for pkg in [m for m, p in modules.items() if p.name == "__init__.py"]:
        graph[pkg] = {t for t in graph[pkg] if not t.startswith(pkg + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == [], f"import circles among lensforge modules: {cycles}"


def test_stage_modules_import_no_private_names_of_each_other():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if not name.startswith("lensforge.stages"):
            continue
        for mod, names, line in _imports(path, name, modules):
            if mod.startswith("lensforge.stages") and mod != name:
                offenders += [f"{name}:{line} imports {mod}.{n}" for n in names if n.startswith("_")]
    assert offenders == [], offenders


def test_pretrain_is_its_config_and_objective():
    n = len((CORE / "stages" / "pretrain.py").read_text(encoding="utf-8").splitlines())
    assert n <= 250, f"lensforge/stages/pretrain.py has {n} lines: pre-training logic only, the trunk does the rest"
