"""Contract checks every VAE and text-encoder plugin must pass, reusable by plugin authors.

lensforge's own ``tests/plugins/test_contracts.py`` runs them on every registered plugin's
``tiny_config()``. A plugin author can run the same checks on their plugin with a few lines::

    from lensforge.testing.contracts import VAEContract

    class TestMyVAE(VAEContract):
        plugin_cls = MyVAE            # config defaults to MyVAE.tiny_config()

Each check is also a plain function (``check_vae_shapes(cls, config)`` …) raising
``AssertionError`` with a clear message.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from lensforge.interfaces import TextEncoder, TextFeatures, VAE

#: Prompts used by the text-encoder checks (different lengths, one empty).
CONTRACT_PROMPTS = ["a red circle", "two small blue squares left of a large yellow triangle", ""]


def _images(vae: VAE, batch: int = 2, seed: int = 0) -> Tensor:
    f = int(vae.downsample_factor)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 2 * f, 3 * f, generator=g) * 2 - 1


def _build(cls: type, config: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return cls(copy.deepcopy(config))


def _perturb(module: torch.nn.Module) -> None:
    """Change every saved float tensor (parameters and persistent buffers) so a reload must restore it."""
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t).abs() * 0.5 + 0.1)


# ----------------------------------------------------------------------------- VAE


def check_vae_shapes(cls: type, config: Any) -> VAE:
    vae = _build(cls, config)
    assert isinstance(vae, VAE), f"{cls.__name__} is not a VAE"
    C, f = int(vae.latent_channels), int(vae.downsample_factor)
    assert C > 0 and f > 0, "latent_channels and downsample_factor must be positive"
    spec = cls.latent_spec(config)
    if spec is not None:
        assert (spec.channels, spec.downsample) == (C, f), (
            f"latent_spec {spec} disagrees with the built model ({C} channels, downsample {f})"
        )
    x = _images(vae)
    with torch.no_grad():
        z = vae.encode(x)
        assert tuple(z.shape) == (2, C, 2, 3), f"encode gave {tuple(z.shape)}, expected (2, {C}, 2, 3)"
        y = vae.decode(z)
    assert tuple(y.shape) == tuple(x.shape), f"decode gave {tuple(y.shape)}, expected {tuple(x.shape)}"
    return vae


def check_vae_dtypes(cls: type, config: Any) -> None:
    vae = _build(cls, config)
    with torch.no_grad():
        z = vae.encode(_images(vae))
        y = vae.decode(z)
    assert z.is_floating_point() and y.is_floating_point(), "latents and images must be floating point"
    assert torch.isfinite(z).all() and torch.isfinite(y).all(), "non-finite latents or images"


def check_vae_determinism(cls: type, config: Any) -> None:
    vae = _build(cls, config)
    vae.freeze()
    x = _images(vae)
    with torch.no_grad():
        z1, z2 = vae.encode(x), vae.encode(x)
        assert torch.equal(z1, z2), "encode (posterior mode) is not deterministic"
        assert torch.equal(vae.decode(z1), vae.decode(z1)), "decode is not deterministic"


def check_vae_state_dict_roundtrip(cls: type, config: Any) -> None:
    a = _build(cls, config, seed=0)
    b = _build(cls, config, seed=1)
    _perturb(b)
    b.load_state_dict(a.state_dict())
    a.freeze()
    b.freeze()
    x = _images(a)
    with torch.no_grad():
        za, zb = a.encode(x), b.encode(x)
        assert torch.equal(za, zb), "encode differs after load_state_dict"
        assert torch.equal(a.decode(za), b.decode(za)), "decode differs after load_state_dict"


def check_vae_freeze(cls: type, config: Any) -> None:
    vae = _build(cls, config)
    vae.freeze()
    assert not vae.training, "freeze() must put the VAE in eval mode"
    trainable = [n for n, p in vae.named_parameters() if p.requires_grad]
    assert not trainable, f"freeze() left trainable parameters: {trainable[:5]}"


# ----------------------------------------------------------------------------- text encoder


def _encode(enc: TextEncoder, prompts: list[str]) -> TextFeatures:
    with torch.no_grad():
        return enc.encode(prompts)


def check_text_shapes(cls: type, config: Any) -> TextEncoder:
    enc = _build(cls, config)
    assert isinstance(enc, TextEncoder), f"{cls.__name__} is not a TextEncoder"
    feats = _encode(enc, CONTRACT_PROMPTS)
    assert isinstance(feats, TextFeatures), "encode must return TextFeatures"
    assert feats.num_samples == len(CONTRACT_PROMPTS), f"{feats.num_samples} samples for {len(CONTRACT_PROMPTS)} prompts"
    assert tuple(feats.dims) == tuple(enc.feature_dims), f"feature dims {feats.dims} != feature_dims {enc.feature_dims}"
    spec = cls.feature_spec(config)
    if spec is not None:
        assert tuple(spec) == tuple(enc.feature_dims), f"feature_spec {spec} != built feature_dims {enc.feature_dims}"
    assert int(feats.lengths[1]) > int(feats.lengths[0]), "a longer prompt must give more feature rows"
    # variable length, no padding: a sample encoded alone equals its slice of the batch
    alone = _encode(enc, [CONTRACT_PROMPTS[0]])
    assert int(alone.lengths[0]) == int(feats.lengths[0]), "length depends on the batch (padding leaked)"
    for a, b in zip(alone.sample(0), feats.sample(0)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg="features depend on the batch (padding leaked)")
    return enc


def check_text_dtypes(cls: type, config: Any) -> None:
    feats = _encode(_build(cls, config), CONTRACT_PROMPTS[:2])
    for t in feats.layers:
        assert t.is_floating_point(), "features must be floating point"
        assert torch.isfinite(t).all(), "non-finite features"
    assert feats.lengths.dtype == torch.long


def check_text_determinism(cls: type, config: Any) -> None:
    enc = _build(cls, config)
    a, b = _encode(enc, CONTRACT_PROMPTS), _encode(enc, CONTRACT_PROMPTS)
    assert torch.equal(a.lengths, b.lengths)
    for x, y in zip(a.layers, b.layers):
        assert torch.equal(x, y), "encode is not deterministic"
    c = _encode(enc, CONTRACT_PROMPTS[:2])
    m0, m1 = c.sample(0)[-1].float().mean(0), c.sample(1)[-1].float().mean(0)
    assert not torch.equal(m0, m1), "different prompts give identical features"


def check_text_state_dict_roundtrip(cls: type, config: Any) -> None:
    a = _build(cls, config, seed=0)
    b = _build(cls, config, seed=1)
    _perturb(b)
    b.load_state_dict(a.state_dict())
    fa, fb = _encode(a, CONTRACT_PROMPTS), _encode(b, CONTRACT_PROMPTS)
    for x, y in zip(fa.layers, fb.layers):
        assert torch.equal(x, y), "features differ after load_state_dict"


def check_text_freeze(cls: type, config: Any) -> None:
    enc = _build(cls, config)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert not trainable, f"text encoder must be frozen after construction; trainable: {trainable[:5]}"
    enc.freeze()
    assert not enc.training, "freeze() must put the encoder in eval mode"
    feats = enc.encode(CONTRACT_PROMPTS[:1])
    assert not any(t.requires_grad for t in feats.layers), "features must not require grad"


VAE_CHECKS = {
    "shapes": check_vae_shapes,
    "dtypes": check_vae_dtypes,
    "determinism": check_vae_determinism,
    "state_dict_roundtrip": check_vae_state_dict_roundtrip,
    "freeze": check_vae_freeze,
}

TEXT_ENCODER_CHECKS = {
    "shapes": check_text_shapes,
    "dtypes": check_text_dtypes,
    "determinism": check_text_determinism,
    "state_dict_roundtrip": check_text_state_dict_roundtrip,
    "freeze": check_text_freeze,
}

#: kind -> {check name -> check function}
CHECKS = {"vae": VAE_CHECKS, "text_encoder": TEXT_ENCODER_CHECKS}


class _Contract:
    plugin_cls: type
    #: Optional config; ``plugin_cls.tiny_config()`` when None.
    config: Any = None

    def _cfg(self) -> Any:
        return self.config if self.config is not None else self.plugin_cls.tiny_config()


class VAEContract(_Contract):
    """pytest mixin: subclass as ``class TestX(VAEContract): plugin_cls = MyVAE``."""

    def test_shapes(self):
        check_vae_shapes(self.plugin_cls, self._cfg())

    def test_dtypes(self):
        check_vae_dtypes(self.plugin_cls, self._cfg())

    def test_determinism(self):
        check_vae_determinism(self.plugin_cls, self._cfg())

    def test_state_dict_roundtrip(self):
        check_vae_state_dict_roundtrip(self.plugin_cls, self._cfg())

    def test_freeze(self):
        check_vae_freeze(self.plugin_cls, self._cfg())


class TextEncoderContract(_Contract):
    """pytest mixin: subclass as ``class TestX(TextEncoderContract): plugin_cls = MyEncoder``."""

    def test_shapes(self):
        check_text_shapes(self.plugin_cls, self._cfg())

    def test_dtypes(self):
        check_text_dtypes(self.plugin_cls, self._cfg())

    def test_determinism(self):
        check_text_determinism(self.plugin_cls, self._cfg())

    def test_state_dict_roundtrip(self):
        check_text_state_dict_roundtrip(self.plugin_cls, self._cfg())

    def test_freeze(self):
        check_text_freeze(self.plugin_cls, self._cfg())
