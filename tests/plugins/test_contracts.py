"""Contract tests generated from the registry: every VAE and text-encoder plugin's ``tiny_config()``.

A third-party plugin installed with an entry point is picked up here automatically; plugin authors
can run the same checks in their own tests with :mod:`lensforge.testing.contracts`.
"""

from __future__ import annotations

import pytest

from lensforge import registry
from lensforge.testing.contracts import CHECKS


def _cases():
    out = []
    for kind, checks in CHECKS.items():
        for spec in registry.specs(kind):
            if spec.name.startswith("fake_"):  # tests/_fakes.py minimal doubles are not product plugins
                continue
            for check in checks:
                out.append(pytest.param(kind, spec.name, check, id=f"{kind}:{spec.name}:{check}"))
    return out


@pytest.mark.parametrize("kind,name,check", _cases())
def test_plugin_contract(kind, name, check):
    cls = registry.get(kind, name)
    CHECKS[kind][check](cls, cls.tiny_config())


def test_first_party_plugins_are_covered():
    ids = {(p.values[0], p.values[1]) for p in _cases()}
    for kind, name in [("vae", "flux2"), ("vae", "tiny_ae"), ("text_encoder", "gpt_oss"), ("text_encoder", "hf_encoder")]:
        assert (kind, name) in ids
