"""Export → load → sample round trips at tiny sizes (no network: tiny random models in temp folders).

* the official trio (lens_mmdit + flux2 + gpt_oss) exports to exactly the official Lens layout:
  model_index.json components, transformer/config.json schema and key layout, vae/ loadable by
  diffusers' AutoencoderKLFlux2, scheduler/ by FlowMatchEulerDiscreteScheduler;
* loading the folder back and sampling gives the same images as the models it came from;
* other combinations (fake plugins) round-trip through the ``_lensforge`` record;
* ``init_from_path`` on an export gives a transformer state dict that loads with strict=True.
"""

from __future__ import annotations

import json

import pytest
import torch

from lensforge import registry
from lensforge.errors import LensforgeError
from lensforge.export import export_folder, init_from_path, load_folder
from lensforge.export.common import OFFICIAL_MODEL_INDEX

#: transformer/config.json keys of microsoft/Lens (LENS_SPEC §1.1)
OFFICIAL_TRANSFORMER_KEYS = {
    "_class_name", "_diffusers_version", "patch_size", "in_channels", "out_channels", "num_layers",
    "attention_head_dim", "num_attention_heads", "enc_hidden_dim", "axes_dims_rope", "gate_mlp", "rms_norm",
    "multi_layer_encoder_feature", "selected_layer_index",
}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def official_trio():
    """Tiny lens_mmdit (random, not zero-init) + flux2 + gpt_oss from tiny random folders."""
    from lensforge.testing.fixtures import tiny_flux2_folder, tiny_gpt_oss_folder

    dit_cls = registry.get("dit", "lens_mmdit")
    dit = dit_cls(dit_cls.Config(flavor="tiny", attention="sdpa_loop", in_channels=16, text_layers=(1, 3), zero_init=False))
    _randomize(dit, 0)
    vae_cls = registry.get("vae", "flux2")
    vae = vae_cls(vae_cls.Config(path=str(tiny_flux2_folder())))
    te_cls = registry.get("text_encoder", "gpt_oss")
    te = te_cls(te_cls.Config(path=str(tiny_gpt_oss_folder()), layers=[1, 3], dtype="float32"))
    return dit.eval(), vae, te


@pytest.fixture(scope="module")
def official_export(official_trio, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lens_tiny"
    export_folder(*official_trio, out, max_shard_size=20_000)
    return out


def test_official_layout(official_export, official_trio):
    out = official_export
    index = json.loads((out / "model_index.json").read_text())
    assert index == OFFICIAL_MODEL_INDEX
    for f in ("scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
              "text_encoder/config.json", "tokenizer/tokenizer_config.json", "README.md", "lensforge.json"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "transformer/config.json").read_text())
    assert OFFICIAL_TRANSFORMER_KEYS <= set(cfg), OFFICIAL_TRANSFORMER_KEYS - set(cfg)
    assert cfg["_class_name"] == "LensTransformer2DModel"
    assert cfg["selected_layer_index"] == [1, 3]
    # sharded with an index; keys exactly the DiT's (official) layout
    idx = json.loads((out / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = set(idx["weight_map"].values())
    assert len(shards) > 1 and all((out / "transformer" / s).is_file() for s in shards)
    assert set(idx["weight_map"]) == set(official_trio[0].state_dict())
    assert "transformer_blocks.0.attn.img_qkv.weight" in idx["weight_map"]
    assert "LensTransformer2DModel" in (out / "README.md").read_text()


def test_vae_loads_with_diffusers(official_export, official_trio):
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2.from_pretrained(official_export / "vae")
    ref = official_trio[1].vae.state_dict()
    got = vae.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_scheduler_loads_with_diffusers_and_matches_lens_sigmas(official_export):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lensforge.sampling.schedule import compute_empirical_mu, lens_sigmas

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(official_export / "scheduler")
    assert sched.config.use_dynamic_shifting and sched.config.time_shift_type == "exponential"
    steps, seq_len = 8, 64
    import numpy as np

    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=compute_empirical_mu(seq_len, steps))
    torch.testing.assert_close(sched.sigmas.float(), lens_sigmas(steps, seq_len), rtol=1e-5, atol=1e-6)


def test_load_then_sample_gives_same_images(official_export, official_trio):
    from lensforge.sampling.sampler import generate

    dit, vae, te = official_trio
    prompts = ["a red cube on a blue floor", "two green spheres"]
    sizes = [(32, 64), (48, 48)]
    kw = {"steps": 3, "guidance_scale": 3.0, "seeds": [5, 6]}
    ref = generate(dit, vae, te, prompts, sizes, **kw)
    dit2, vae2, te2 = load_folder(official_export)
    assert type(dit2) is type(dit) and dit2.config.text_layers == (1, 3)
    got = generate(dit2, vae2, te2, prompts, sizes, **kw)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(ref[0], torch.zeros_like(ref[0]))


def test_init_from_export_loads_strict(official_export, official_trio):
    states = init_from_path(official_export)
    assert set(states) == {"dit"}  # folder-backed encoders come from the recipe's own paths
    fresh = type(official_trio[0])(official_trio[0].config)
    fresh.load_state_dict(states["dit"], strict=True)
    for k, v in official_trio[0].state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_official_folder_without_lensforge_record_imports(official_export, tmp_path):
    """An official Lens folder has no lensforge.json: the plugins come from the official mapping."""
    import shutil

    off = tmp_path / "official"
    shutil.copytree(official_export, off)
    (off / "lensforge.json").unlink()
    dit, vae, te = load_folder(off)
    assert (type(dit).plugin_name, type(vae).plugin_name, type(te).plugin_name) == ("lens_mmdit", "flux2", "gpt_oss")
    assert dit.config.num_layers == 2 and dit.arch.in_channels == 16


def test_other_combination_roundtrip(fakes, tmp_path):
    dit = fakes.FakeDiT(fakes.FakeDiT.Config(in_channels=12, depth=2))
    vae = fakes.FakeVAE(fakes.FakeVAE.Config(factor=2))
    te = fakes.FakeText(fakes.FakeText.Config(dim=16))
    out = export_folder(dit, vae, te, tmp_path / "exp")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_lensforge"]["dit"] == {"plugin": "fake_dit", "config": {"in_channels": 12, "text_dims": [16], "depth": 2}}
    assert set(index) >= {"scheduler", "transformer", "vae", "text_encoder"}
    dit2, _, te2 = load_folder(out)
    for a, b in ((dit, dit2), (te, te2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(LensforgeError, match="not empty"):
        export_folder(dit, vae, te, out)


def test_not_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LensforgeError, match="model_index.json"):
        load_folder(tmp_path)
    with pytest.raises(LensforgeError, match="does not exist"):
        init_from_path(tmp_path / "nope")


def test_flux2_from_config_and_gpt_oss_from_a_pipeline_root(official_export, official_trio, tmp_path):
    """flux2 built from a config dict is written with save_pretrained; a gpt_oss pointing at a whole
    Lens folder gets only that folder's text_encoder/ copied."""
    from diffusers import AutoencoderKLFlux2

    from lensforge.testing.fixtures import tiny_flux2_config

    vae_cls = registry.get("vae", "flux2")
    vae = vae_cls(vae_cls.Config(config=tiny_flux2_config()))
    te_cls = registry.get("text_encoder", "gpt_oss")
    te = te_cls(te_cls.Config(path=str(official_export), layers=[1, 3], dtype="float32"))
    out = export_folder(official_trio[0], vae, te, tmp_path / "again")
    assert not (out / "text_encoder" / "transformer").exists()
    assert (out / "text_encoder" / "config.json").is_file()
    loaded = AutoencoderKLFlux2.from_pretrained(out / "vae")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vae.vae.state_dict().items())
    _, vae2, te2 = load_folder(out)
    assert vae2.config.path == str(out / "vae") and te2.config.path == str(out / "text_encoder")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(vae2.encode(x), vae.encode(x))
