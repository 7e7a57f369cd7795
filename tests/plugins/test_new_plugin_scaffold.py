"""``tools/new_plugin.py`` writes plugins that load, validate and pass the contract tests."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lensforge import registry
from lensforge.testing.contracts import CHECKS

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "new_plugin.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind,name", [("vae", "scaf_vae"), ("text_encoder", "scaf_te")])
def test_module_scaffold_passes_contracts(tmp_path, monkeypatch, kind, name):
    r = _run(kind, name, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    cls_name = "".join(p.capitalize() for p in name.split("_"))
    cls = registry.get(kind, f"{name}:{cls_name}")  # the escape hatch, type-checked
    for check in CHECKS[kind].values():
        check(cls, cls.tiny_config())
    assert _run(kind, name, "--out", str(tmp_path)).returncode != 0  # refuses to overwrite


def test_package_scaffold_declares_entry_point(tmp_path, monkeypatch):
    pkg_dir = tmp_path / "my_lens_plugins"
    r = _run("vae", "pkg_vae", "--package", str(pkg_dir))
    assert r.returncode == 0, r.stderr
    meta = tomllib.loads((pkg_dir / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["lensforge.vae"] == {"pkg_vae": "my_lens_plugins.pkg_vae:PkgVae"}
    monkeypatch.syspath_prepend(str(pkg_dir))
    mod = importlib.import_module("my_lens_plugins.pkg_vae")
    cls = mod.PkgVae
    registry.validate_plugin_class("vae", cls, "pkg_vae")
    assert "VAEContract" in (pkg_dir / "tests" / "test_pkg_vae.py").read_text()


def test_rejects_bad_names(tmp_path):
    r = _run("vae", "My-VAE", "--out", str(tmp_path))
    assert r.returncode != 0 and "snake_case" in r.stderr
