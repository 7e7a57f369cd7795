"""Core never imports first-party plugins; importing lensforge works without CUDA or xformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "lensforge"


def test_core_sources_never_import_lensforge_plugins():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "lensforge_plugins" or n.startswith("lensforge_plugins.") for n in names):
                offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno}")
            # importlib-style strings too
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lensforge_plugins"):
                offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno} (string)")
    assert offenders == [], offenders


def test_importing_core_modules_loads_no_plugin_and_no_xformers():
    code = (
        "import importlib, pkgutil, sys, lensforge\n"
        "skip = {'lensforge.cli'}\n"
        "for m in pkgutil.walk_packages(lensforge.__path__, 'lensforge.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.startswith('lensforge_plugins') or k.startswith('xformers'))\n"
        "print('LOADED', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED []" in r.stdout, r.stdout + r.stderr[-2000:]
