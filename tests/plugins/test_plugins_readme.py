"""The worked examples in plugins/README.md are complete: they load and pass the contract checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lensforge import registry
from lensforge.testing.contracts import CHECKS

README = Path(__file__).resolve().parents[2] / "plugins" / "README.md"


def readme_examples() -> dict[str, str]:
    """``{file name: code}`` of the ``<!-- example: NAME -->`` python blocks of plugins/README.md."""
    text = README.read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S)}


def test_readme_has_both_examples():
    assert set(readme_examples()) >= {"patch_proj.py", "hashed_words.py"}


@pytest.mark.parametrize("kind,target", [("vae", "patch_proj:PatchProjVAE"), ("text_encoder", "hashed_words:HashedWords")])
def test_readme_example_passes_contracts(tmp_path, monkeypatch, kind, target):
    for name, code in readme_examples().items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = registry.get(kind, target)
    for check in CHECKS[kind].values():
        check(cls, cls.tiny_config())
