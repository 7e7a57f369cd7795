"""Shared pytest setup: GPU tests skip cleanly without CUDA; fake plugins for core tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# the fake plugins in tests/_fakes.py are importable as "_fakes" (also by subprocesses: see env_with_fakes)
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

os.environ.setdefault("LENSFORGE_QUIET_XFORMERS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def env_with_fakes() -> dict[str, str]:
    """Environment for a subprocess that can import tests/_fakes.py."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def fakes():
    """Register the fake plugins (dit/vae/text_encoder/stage named fake_*) and return the module."""
    import _fakes

    return _fakes
