"""A VAE written only from plugins/README.md is named in the tiny recipe and trained for a few steps."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_examples() -> dict[str, str]:
    """``{file name: code}`` of the ``<!-- example: NAME -->`` python blocks of plugins/README.md."""
    text = (REPO / "plugins" / "README.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S)}


def test_readme_vae_trains_in_tiny_recipe(tmp_path):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "patch_proj.py").write_text(readme_examples()["patch_proj.py"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lensforge.cli", "fit", str(REPO / "recipes" / "tiny" / "smoke.yaml"),
           "model.vae.name=patch_proj:PatchProjVAE", "model.vae.channels=48", "model.dit.in_channels=48",
           "trainer.max_steps=3", f"output_dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 3
    assert "patch_proj:PatchProjVAE" in (out / "recipe.yaml").read_text()
