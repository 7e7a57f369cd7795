"""``flux2`` parity with diffusers' AutoencoderKLFlux2 plus LENS_SPEC §2's patchify and BN normalisation."""

from __future__ import annotations

import pytest
import torch

from lensforge.errors import LensforgeError
from lensforge.testing.fixtures import save_tiny_flux2_vae

from lensforge_plugins.vae.flux2 import Flux2VAE, patchify, unpatchify


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_flux2_vae(tmp_path_factory.mktemp("vae"), seed=5)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 16, 24, generator=g) * 2 - 1


def _reference_tokens(vae, x):
    """Spec math written out independently: mode → b c (h p1) (w p2) → b (c p1 p2) h w → BN normalise."""
    z = vae.encode(x).latent_dist.mode()
    B, C, H, W = z.shape
    z = z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, C * 4, H // 2, W // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    var = vae.bn.running_var.view(1, -1, 1, 1)
    return (z - mean) / torch.sqrt(var + vae.config.batch_norm_eps), z


def test_encode_decode_parity_with_diffusers(folder, images):
    from diffusers import AutoencoderKLFlux2

    ref = AutoencoderKLFlux2.from_pretrained(folder).eval()
    assert ref.bn.running_var.std() > 0.1 and ref.bn.running_mean.abs().max() > 0.1  # non-trivial stats
    plugin = Flux2VAE(Flux2VAE.Config(path=str(folder)))
    assert (plugin.latent_channels, plugin.downsample_factor) == (16, 4)
    with torch.no_grad():
        want, z_patched = _reference_tokens(ref, images)
        got = plugin.encode(images)
        assert got.shape == (2, 16, 4, 6)
        assert (got - want).abs().max() <= 1e-6
        # tokens: row-major over (h, w), channel c*4 + p1*2 + p2
        tokens = got.flatten(2).transpose(1, 2)
        assert tokens.shape == (2, 24, 16)
        # decode == diffusers' decode of the un-normalised, unpatchified latents
        z = z_patched.view(2, 4, 2, 2, 4, 6).permute(0, 1, 4, 2, 5, 3).reshape(2, 4, 8, 12)
        want_img = ref.decode(z).sample
        got_img = plugin.decode(got)
    assert got_img.shape == images.shape
    assert (got_img - want_img).abs().max() <= 1e-5


def test_patchify_roundtrip_and_channel_order():
    z = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    p = patchify(z)
    assert p.shape == (2, 12, 2, 3)
    # channel c*4 + p1*2 + p2 of token (h, w) is z[c, 2h+p1, 2w+p2]
    assert p[1, 2 * 4 + 1 * 2 + 0, 1, 2] == z[1, 2, 3, 4]
    assert torch.equal(unpatchify(p), z)


def test_sample_posterior_is_seeded(folder, images):
    plugin = Flux2VAE(Flux2VAE.Config(path=str(folder)))
    a = plugin.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    b = plugin.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    m = plugin.encode(images)
    assert torch.equal(a, b) and not torch.equal(a, m)


def test_chunked_decode_and_bf16_upcast(folder, images):
    full = Flux2VAE(Flux2VAE.Config(path=str(folder), decode_batch_size=0, encode_batch_size=0))
    chunked = Flux2VAE(Flux2VAE.Config(path=str(folder), decode_batch_size=1, encode_batch_size=1))
    lat = full.encode(images)
    torch.testing.assert_close(chunked.encode(images), lat, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.decode(lat), full.decode(lat), atol=1e-5, rtol=0)
    bf = Flux2VAE(Flux2VAE.Config(path=str(folder), dtype="bfloat16", upcast_fp32=True))
    out = bf.decode(lat)
    assert out.dtype == torch.float32 and bf.vae.decoder.conv_in.weight.dtype == torch.bfloat16
    assert bf.vae.bn.running_var.dtype == torch.float32  # statistics never rounded to bf16
    torch.testing.assert_close(bf.vae.bn.running_var, full.vae.bn.running_var, atol=0, rtol=0)
    assert (out - full.decode(lat)).abs().max() < 0.1


def test_tiled_decode_runs(folder):
    plugin = Flux2VAE(Flux2VAE.Config(path=str(folder), tiling=True))
    plugin.vae.tile_sample_min_size = 16
    plugin.vae.tile_latent_min_size = 8  # conv-decoder factor 2 in the tiny VAE
    lat = torch.randn(1, 16, 8, 8)
    assert plugin.decode(lat).shape == (1, 3, 32, 32)


def test_lens_root_folder(tmp_path, folder, images):
    import shutil

    shutil.copytree(folder, tmp_path / "root" / "vae")
    a = Flux2VAE(Flux2VAE.Config(path=str(tmp_path / "root")))
    b = Flux2VAE(Flux2VAE.Config(path=str(folder)))
    assert torch.equal(a.encode(images), b.encode(images))
    assert Flux2VAE.latent_spec(Flux2VAE.Config(path=str(tmp_path / "root"))).channels == 16


def test_config_checks(tmp_path, folder):
    assert Flux2VAE.check_environment(Flux2VAE.Config(path=str(tmp_path / "nope")))[0][0] == "path"
    spec = Flux2VAE.latent_spec(Flux2VAE.Config(path=str(folder)))
    assert (spec.channels, spec.downsample) == (16, 4)
    default = Flux2VAE.latent_spec(Flux2VAE.Config(config={}))
    assert (default.channels, default.downsample) == (128, 16)  # the real FLUX.2 VAE
    with pytest.raises(LensforgeError, match="multiples of 4"):
        Flux2VAE(Flux2VAE.Config(path=str(folder))).encode(torch.zeros(1, 3, 10, 12))
