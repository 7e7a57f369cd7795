"""Registry: decorator checks, entry-point discovery (lazy), escape hatch, errors, switches."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lensforge import registry
from lensforge.errors import PluginError
from lensforge.interfaces import VAE


def test_first_party_plugins_are_listed_with_provenance_without_import():
    import sys

    specs = {(s.kind, s.name): s for s in registry.specs()}
    for key in [("dit", "lens_mmdit"), ("vae", "flux2"), ("vae", "tiny_ae"), ("text_encoder", "gpt_oss"),
                ("text_encoder", "hf_encoder"), ("attention", "sdpa_loop"), ("data", "synthetic"), ("stage", "pretrain")]:
        assert key in specs, key
        assert specs[key].dist == "lensforge"
        assert specs[key].provenance.startswith("lensforge ")
    # listing read metadata only: the heavy DiT plugin module was not imported by it
    assert specs[("dit", "lens_mmdit")].cls is None or "lensforge_plugins.dit.lens_mmdit" in sys.modules


def test_decorator_requires_interface_and_kw_only_config():
    with pytest.raises(PluginError, match="must subclass"):
        @registry.register("vae", "not_a_vae")
        class NotAVae:  # noqa: F841
            @dataclass(kw_only=True)
            class Config:
                pass

    with pytest.raises(PluginError, match="kw_only"):
        @registry.register("vae", "positional_cfg")
        class BadCfg(VAE):  # noqa: F841
            @dataclass
            class Config:
                x: int = 1

    with pytest.raises(PluginError, match="Config"):
        @registry.register("vae", "no_cfg_dataclass")
        class NoCfg(VAE):  # noqa: F841
            class Config:
                pass


def test_duplicate_name_is_an_error_naming_both_sources(fakes):
    @registry.register("vae", "dup_vae_test")
    class First(VAE):
        """first"""

        @dataclass(kw_only=True)
        class Config:
            pass

    @registry.register("vae", "dup_vae_test")
    class Second(VAE):
        """second"""

        @dataclass(kw_only=True)
        class Config:
            pass

    with pytest.raises(PluginError) as e:
        registry.get("vae", "dup_vae_test")
    msg = str(e.value)
    assert "declared twice" in msg
    assert "test_registry" in msg and msg.count("@register") == 2


def test_unknown_name_lists_known_and_close_matches(fakes):
    with pytest.raises(PluginError) as e:
        registry.get("vae", "fake_vea")
    msg = str(e.value)
    assert "unknown vae plugin 'fake_vea'" in msg
    assert "did you mean 'fake_vae'" in msg
    assert "flux2" in msg  # known names listed


def test_unknown_kind():
    with pytest.raises(PluginError, match="unknown plugin kind 'vea'.*did you mean 'vae'"):
        registry.get("vea", "x")


def test_escape_hatch_is_type_checked(fakes):
    assert registry.get("vae", "_fakes:FakeVAE") is fakes.FakeVAE
    with pytest.raises(PluginError, match="must subclass"):
        registry.get("dit", "_fakes:FakeVAE")
    with pytest.raises(PluginError, match="cannot import module"):
        registry.get("vae", "no_such_module_xyz:Thing")
    with pytest.raises(PluginError, match="has no attribute"):
        registry.get("vae", "_fakes:Nope")


def test_disable_autoload_and_allow_list(monkeypatch):
    monkeypatch.setenv("LENSFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.discover(refresh=True)
    try:
        assert "flux2" not in registry.names("vae")
        monkeypatch.setenv("LENSFORGE_PLUGINS", "lensforge")
        registry.discover(refresh=True)
        assert "flux2" in registry.names("vae")
    finally:
        monkeypatch.delenv("LENSFORGE_DISABLE_PLUGIN_AUTOLOAD")
        monkeypatch.delenv("LENSFORGE_PLUGINS", raising=False)
        registry.discover(refresh=True)


def test_block_list(monkeypatch):
    monkeypatch.setenv("LENSFORGE_BLOCK_PLUGINS", "vae:flux2,hf_encoder")
    registry.discover(refresh=True)
    try:
        assert "flux2" not in registry.names("vae")
        assert "tiny_ae" in registry.names("vae")
        assert "hf_encoder" not in registry.names("text_encoder")
        monkeypatch.setenv("LENSFORGE_BLOCK_PLUGINS", "dist:lensforge")
        registry.discover(refresh=True)
        assert registry.names("dit") == [] or all(registry.get_spec("dit", n).dist != "lensforge" for n in registry.names("dit"))
    finally:
        monkeypatch.delenv("LENSFORGE_BLOCK_PLUGINS")
        registry.discover(refresh=True)


def test_summary_read_without_import():
    spec = registry.get_spec("vae", "_fakes:FakeVAE")
    assert spec.summary() == "Space-to-depth by ``factor`` with a fixed scale: exact inverse."
    # ast-based summary for a not-yet-imported target
    assert registry._docstring_without_import("_fakes:FakeText") == "One feature row per word: a hashed embedding."
    # a class re-exported by a package __init__ (``from .model import LensMMDiT``) is followed
    assert registry._docstring_without_import("lensforge_plugins.dit.lens_mmdit:LensMMDiT").startswith("Lens dual-stream MMDiT")
