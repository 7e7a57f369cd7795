"""``tiny_ae``: analytic codec quality, Lightning fitting, weights round trip."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch

from lensforge_plugins.vae.tiny_ae import TinyAE, analytic_basis, pixel_basis, psnr


def _scenes(n: int, size=(64, 64)) -> torch.Tensor:
    from lensforge.data.sources.synthetic import SyntheticWorld

    w = SyntheticWorld(SyntheticWorld.Config(seed=0))
    return torch.stack([w.get(i, size).image for i in range(n)])


def test_basis_is_orthonormal():
    W = analytic_basis(16, 24, 12).reshape(48, -1)
    torch.testing.assert_close(W @ W.T, torch.eye(48), atol=1e-5, rtol=0)


def test_pixel_basis_is_orthonormal_area_averaging():
    W = pixel_basis(16, 4)
    assert W.shape == (48, 3, 16, 16)
    flat = W.reshape(48, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(48), atol=1e-5, rtol=0)
    # channel (luma, sub-pixel 1, 2) covers exactly rows 4..7, columns 8..11 of the token
    support = W[1 * 4 + 2].abs().sum(0) > 0
    assert support[4:8, 8:12].all() and int(support.sum()) == 16


@pytest.mark.parametrize("basis", ["dct", "pixels"])
@pytest.mark.parametrize("size", ["large", "huge"])  # huge: the tiny recipe's world
def test_codec_keeps_the_shapes_of_the_synthetic_world(basis, size):
    """Encode → decode of held-out one-object scenes: the verifier still reads colour, shape and place."""
    import numpy as np

    from lensforge.data.sources.synthetic import SyntheticWorld, render_scene, to_tensor
    from lensforge.data.verifier import verify

    world = SyntheticWorld(SyntheticWorld.Config(min_objects=1, max_objects=1, shapes=["circle", "square", "triangle"],
                                                 sizes=[size], backgrounds=["flat"]))
    ae = TinyAE(TinyAE.Config(basis=basis)).eval()
    scores = []
    for p in world.eval_prompts(12):
        x = to_tensor(render_scene(p.scene, (64, 64)))[None]
        with torch.no_grad():
            rec = ae.decode(ae.encode(x))[0]
        scores.append(verify(((rec.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8), p.scene))
    mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("color", "shape", "position")}
    assert mean["color"] == 1.0 and mean["position"] == 1.0, mean
    assert mean["shape"] >= (0.8 if size == "large" else 0.95), mean  # large, 48 scenes: dct 1.00, pixels 0.96


@pytest.mark.parametrize("basis", ["dct", "pixels"])
def test_flat_colour_is_exact_and_specs_match(basis):
    ae = TinyAE(TinyAE.Config(basis=basis))
    assert (ae.latent_channels, ae.downsample_factor) == (48, 16)
    spec = TinyAE.latent_spec(TinyAE.Config(basis=basis))
    assert (spec.channels, spec.downsample) == (48, 16)
    x = torch.tensor([0.8, -0.3, 0.1]).view(1, 3, 1, 1).expand(1, 3, 32, 48).contiguous()
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (1, 48, 2, 3)
        torch.testing.assert_close(ae.decode(z), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("basis", ["dct", "pixels"])
def test_synthetic_world_reconstruction_quality(basis):
    x = _scenes(8)
    ae = TinyAE(TinyAE.Config(basis=basis))
    with torch.no_grad():
        z = ae.encode(x)
        quality = psnr(ae.decode(z), x)
    assert quality > 24.0, quality  # measured ~26-28 dB (see the module docstring)
    assert 0.2 < float(z.std()) < 3.0  # roughly unit-scale latents for the DiT


def test_fits_as_a_lightning_module_and_reloads(tmp_path):
    x = _scenes(8, (32, 32))
    cfg = TinyAE.Config(patch=8, luma_coeffs=8, chroma_coeffs=4, refine_channels=8, lr=5e-3)
    torch.manual_seed(0)
    ae = TinyAE(cfg)
    with torch.no_grad():
        before = ae.reconstruction_loss(x).item()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)
    trainer = L.Trainer(max_steps=15, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ae, loader)
    with torch.no_grad():
        after = ae.reconstruction_loss(x).item()
    assert after < before
    assert torch.equal(ae.enc_weight, analytic_basis(8, 8, 4))  # encoder fixed by default

    path = str(tmp_path / "ae.safetensors")
    ae.save_weights(path)
    again = TinyAE(TinyAE.Config(patch=8, luma_coeffs=8, chroma_coeffs=4, refine_channels=8, weights=path))
    with torch.no_grad():
        torch.testing.assert_close(again(x), ae(x))
    # a Lightning checkpoint of a parent system holding the codec under "vae."
    ckpt = tmp_path / "system.ckpt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in ae.state_dict().items()}}, ckpt)
    from_ckpt = TinyAE(TinyAE.Config(patch=8, luma_coeffs=8, chroma_coeffs=4, refine_channels=8, weights=str(ckpt)))
    torch.testing.assert_close(from_ckpt.dec_weight, ae.dec_weight)


def test_pixels_basis_fits_its_refinement_and_reloads(tmp_path):
    x = _scenes(8, (32, 32))
    cfg = TinyAE.Config(patch=8, basis="pixels", pixel_block=4, refine_channels=8, lr=5e-3)
    torch.manual_seed(0)
    ae = TinyAE(cfg)
    assert ae.dec_weight is None and ae.latent_channels == 12
    opt = ae.configure_optimizers()
    with torch.no_grad():
        before = ae.reconstruction_loss(x).item()
    for _ in range(15):
        opt.zero_grad()
        ae.training_step(x).backward()
        opt.step()
    with torch.no_grad():
        after = ae.reconstruction_loss(x).item()
    assert after < before
    path = str(tmp_path / "ae.safetensors")
    ae.save_weights(path)
    again = TinyAE(TinyAE.Config(patch=8, basis="pixels", pixel_block=4, refine_channels=8, weights=path))
    with torch.no_grad():
        torch.testing.assert_close(again(x), ae(x))


def test_mixed_size_databatch_and_calibration():
    ae = TinyAE(TinyAE.tiny_config())
    imgs = [torch.rand(3, 16, 16) * 2 - 1, torch.rand(3, 16, 32) * 2 - 1, torch.rand(3, 16, 16) * 2 - 1]
    batch = DataBatch(images=imgs, prompts=["a", "b", "c"], keys=["0", "1", "2"])
    loss = ae.training_step(batch, 0)
    loss.backward()
    assert ae.dec_weight.grad is not None and ae.enc_weight.grad is None
    ae.calibrate(imgs)
    with torch.no_grad():
        z = torch.cat([ae.encode(i[None]).flatten(2) for i in imgs], 2)
    torch.testing.assert_close(z.mean((0, 2)), torch.zeros(ae.latent_channels), atol=1e-4, rtol=0)


def test_errors(tmp_path):
    with pytest.raises(LensforgeError, match="multiples of 16"):
        TinyAE(TinyAE.Config()).encode(torch.zeros(1, 3, 20, 32))
    with pytest.raises(LensforgeError, match="does not exist"):
        TinyAE(TinyAE.Config(weights=str(tmp_path / "none.safetensors")))
    assert TinyAE.check_config(TinyAE.Config(luma_coeffs=0))[0][0] == "luma_coeffs"
    assert TinyAE.check_config(TinyAE.Config(basis="wavelet"))[0][0] == "basis"
    assert TinyAE.check_config(TinyAE.Config(basis="pixels", pixel_block=3))[0][0] == "pixel_block"
    with pytest.raises(LensforgeError, match="pixel_block"):
        TinyAE(TinyAE.Config(basis="pixels", pixel_block=5))
    assert TinyAE.check_environment(TinyAE.Config(weights=str(tmp_path / "x.pt")))[0][0] == "weights"
