"""A plugin in a separate package, pip-installed with its own entry point, is listed and usable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

PLUGIN_SRC = '''
"""A third-party VAE for the external-package test."""

from dataclasses import dataclass

import torch

from lensforge.interfaces import VAE, LatentSpec


class ExtVAE(VAE):
    """Space-to-depth VAE shipped by a separate distribution."""

    @dataclass(kw_only=True)
    class Config:
        factor: int = 2
        """Pixels per latent token side."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.latent_channels = 3 * config.factor ** 2
        self.downsample_factor = config.factor

    @classmethod
    def latent_spec(cls, config):
        return LatentSpec(channels=3 * config.factor ** 2, downsample=config.factor)

    def encode(self, images, *, sample=False, generator=None):
        return torch.nn.functional.pixel_unshuffle(images, self.config.factor)

    def decode(self, latents):
        return torch.nn.functional.pixel_shuffle(latents, self.config.factor)
'''


@pytest.fixture
def installed_package(tmp_path):
    """Build a package dir with its own pyproject + entry point and pip-install it; uninstall after."""
    suffix = uuid.uuid4().hex[:8]
    dist = f"lensforge-ext-test-{suffix}"
    mod = f"lensforge_ext_test_{suffix}"
    pkg = tmp_path / dist
    (pkg / mod).mkdir(parents=True)
    (pkg / mod / "__init__.py").write_text(PLUGIN_SRC)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points."lensforge.vae"]
        ext_vae = "{mod}:ExtVAE"

        [tool.setuptools]
        packages = ["{mod}"]
    """))
    pip = [sys.executable, "-m", "pip"]
    r = subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", str(pkg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    try:
        yield dist, mod
    finally:
        subprocess.run(pip + ["uninstall", "-y", "-q", dist], capture_output=True, timeout=300)


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lensforge.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_external_plugin_listed_and_named_in_a_recipe(installed_package, tmp_path, env_with_fakes):
    dist, mod = installed_package
    r = run_cli("plugins", "vae")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "ext_vae" in l)
    assert f"{dist} 1.2.3" in line
    assert "Space-to-depth VAE shipped by a separate distribution." in line

    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""
        name: ext
        stage: {name: "_fakes:FakeStage"}
        model:
          dit: {name: "_fakes:FakeDiT", in_channels: 48, text_dims: [16]}
          vae: {name: ext_vae, factor: 4}
          text_encoder: {name: "_fakes:FakeText"}
        data: {source: {name: "_fakes:FakeSource"}}
    """))
    r = run_cli("validate", str(recipe), env=env_with_fakes)
    assert r.returncode == 0, r.stderr
    assert "name: ext_vae" in r.stdout and "factor: 4" in r.stdout
    # its Config is validated like any first-party plugin
    r = run_cli("validate", str(recipe), "model.vae.factr=2", env=env_with_fakes)
    assert r.returncode == 2 and "model.vae.factr: unknown key (did you mean 'factor'?)" in r.stderr
    # blocking its distribution removes it
    env = dict(env_with_fakes, LENSFORGE_BLOCK_PLUGINS=f"dist:{dist}")
    r = run_cli("validate", str(recipe), env=env)
    assert r.returncode == 2 and "unknown vae plugin 'ext_vae'" in r.stderr
