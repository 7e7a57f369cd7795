"""Feature cache: ``lensforge cache`` then training from it gives the same loss as training without it.

Also: a cache whose plugin config, weights or data no longer match is reported, never used; a miss
names the sample; a corrupted shard is detected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lensforge.cli import main
from lensforge.data.cache import FeatureCache, FeatureCacheWriter, image_hash
from lensforge.errors import LensforgeError
from lensforge.recipe.plugin_config import PluginRef

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "tiny" / "smoke.yaml"
STEPS = 3
COMMON = [f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=100", "sampling.every_n_steps=0",
          "sampling.num_prompts=0", "stage.memo_features=0", "trainer.log_every_n_steps=1"]


def _losses(run: Path) -> list[float]:
    from mlflow.tracking import MlflowClient

    summary = json.loads((run / "summary.json").read_text())
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    hist = sorted(client.get_metric_history(summary["mlflow_run_id"], "train/loss"), key=lambda m: m.step)
    return [m.value for m in hist]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache") / "features"
    assert main(["cache", str(SMOKE), f"data.cache_dir={d}", *COMMON, "--no-progress"]) == 0
    return d


def test_cache_layout(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["vae"]["plugin"] == "tiny_ae" and manifest["text_encoder"]["plugin"] == "hf_encoder"
    assert manifest["text_encoder"]["weights"]["path"] not in ("", "missing")
    assert manifest["counts"]["latents"] > 0 and manifest["counts"]["prompts"] > 1
    assert all((cache_dir / s["file"]).is_file() and len(s["sha256"]) == 64 for s in manifest["shards"])
    index = json.loads((cache_dir / "index.json").read_text())
    from lensforge.data.cache import prompt_hash

    assert prompt_hash("") in index["text"]  # caption dropout's empty prompt


def test_training_from_cache_gives_the_same_loss(cache_dir, tmp_path):
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    assert main(["fit", str(SMOKE), f"output_dir={plain}", *COMMON]) == 0
    assert main(["fit", str(SMOKE), f"output_dir={cached}", f"data.cache_dir={cache_dir}", *COMMON]) == 0
    assert "feature cache" in (cached / "train.log").read_text()
    a, b = _losses(plain), _losses(cached)
    assert len(a) == STEPS and len(b) == STEPS
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_mismatched_cache_is_reported_not_used(cache_dir, tmp_path, capsys):
    rc = main(["fit", str(SMOKE), f"output_dir={tmp_path / 'r'}", f"data.cache_dir={cache_dir}",
               "model.text_encoder.max_length=64", *COMMON])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "stale or does not match" in err and "max_length" in err


# ------------------------------------------------------------------ storage-level checks (fast)


@pytest.fixture
def refs(fakes):
    return (PluginRef("vae", "fake_vae", fakes.FakeVAE, fakes.FakeVAE.Config(factor=2)),
            PluginRef("text_encoder", "fake_text", fakes.FakeText, fakes.FakeText.Config(dim=8)))


def _write(root, refs, fakes):
    vae, te = refs[0].build(), refs[1].build()
    img = torch.rand(3, 8, 12) * 2 - 1
    w = FeatureCacheWriter(root, *refs, shard_bytes=64)
    w.add_latents("s0", (8, 12), vae.encode(img[None])[0], img)
    for p in ("a red cube", ""):
        w.add_text(p, te.encode([p]).sample(0))
    w.close()
    return img, vae, te


def test_lookup_miss_and_changed_image(tmp_path, refs, fakes):
    img, vae, te = _write(tmp_path / "c", refs, fakes)
    cache = FeatureCache.open(tmp_path / "c", *refs)
    (z,) = cache.latents(["s0"], [(8, 12)], images=[img])
    assert torch.equal(z, vae.encode(img[None])[0])
    text = cache.text(["a red cube", ""])
    ref = te.encode(["a red cube", ""])
    assert text.lengths.tolist() == ref.lengths.tolist() == [3, 0]
    assert torch.equal(text.layers[0], ref.layers[0])
    with pytest.raises(LensforgeError, match="no latents for sample 's1' at 8x12"):
        cache.latents(["s1"], [(8, 12)])
    with pytest.raises(LensforgeError, match="not the image that was cached"):
        cache.latents(["s0"], [(8, 12)], images=[img + 0.5])
    with pytest.raises(LensforgeError, match="no text features for prompt"):
        cache.text(["a blue sphere"])
    assert image_hash(img) != image_hash(img.to(torch.float64))


def test_plugin_change_and_corruption_detected(tmp_path, refs, fakes):
    _write(tmp_path / "c", refs, fakes)
    other = PluginRef("vae", "fake_vae", fakes.FakeVAE, fakes.FakeVAE.Config(factor=4))
    with pytest.raises(LensforgeError, match=r"vae config changed \(factor: 2 -> 4\)"):
        FeatureCache.open(tmp_path / "c", other, refs[1])
    with pytest.raises(LensforgeError, match="does not match the recipe"):
        FeatureCacheWriter(tmp_path / "c", other, refs[1])  # never silently mixed
    shard = min((tmp_path / "c").glob("latents-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = FeatureCache.open(tmp_path / "c", *refs)
    with pytest.raises(LensforgeError, match="SHA-256"):
        cache.latents(["s0"], [(8, 12)])
    with pytest.raises(LensforgeError, match="run `lensforge cache"):
        FeatureCache.open(tmp_path / "nothing", *refs)


def test_caption_candidates_cover_the_policy():
    from lensforge.data.cache import caption_candidates
    from lensforge.data.config import CaptionPolicyConfig

    caps = {"dense": "a long caption", "short": "short", "alt": "alt text"}
    mix = CaptionPolicyConfig(mix={"dense": 0.9, "short": 0.1, "alt": 0.0}, dropout=0.1)
    assert caption_candidates(caps, mix) == ["a long caption", "short", ""]
    assert caption_candidates(caps, CaptionPolicyConfig(field="short", dropout=0.0)) == ["short"]
    assert caption_candidates(None, CaptionPolicyConfig(dropout=0.0)) == [""]
