"""Resolution policy (Lens table, generic rule, nearest aspect, fitting) and caption policy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lensforge.data.captions import DROPPED, CaptionPolicy, estimate_text_tokens
from lensforge.data.config import CaptionPolicyConfig, PackingConfig, ResolutionPolicyConfig
from lensforge.data.resolution import LENS_ASPECTS, ResolutionPolicy, fit_image, resolve_resolution
from lensforge.errors import LensforgeError
from lensforge.interfaces import SampleError


def test_lens_official_table():
    assert resolve_resolution(1024, "16:9") == (768, 1376)
    assert resolve_resolution(1024, "1:2") == (1472, 736)
    assert resolve_resolution(1440, "3:4") == (1616, 1216)
    assert resolve_resolution(1440, "2:1") == (1040, 2080)
    for base in (1024, 1440):
        for a in LENS_ASPECTS:
            h, w = resolve_resolution(base, a)
            assert h % 16 == 0 and w % 16 == 0


@pytest.mark.parametrize("base", [128, 256, 512, 768])
@pytest.mark.parametrize("m", [16, 32])
def test_generic_rule_multiples_area_and_aspect(base, m):
    for a in LENS_ASPECTS:
        h, w = resolve_resolution(base, a, m)
        assert h % m == 0 and w % m == 0
        wr, hr = map(float, a.split(":"))
        assert abs(np.log((w / h) / (wr / hr))) < 0.25
        assert 0.7 < (h * w) / base**2 < 1.35


def test_lens_table_falls_back_when_not_a_multiple():
    h, w = resolve_resolution(1440, "1:2", 32)  # 1040 is not a multiple of 32
    assert h % 32 == 0 and w % 32 == 0


def test_policy_draws_all_buckets_deterministically_and_nearest_for_real_images():
    pol = ResolutionPolicy(ResolutionPolicyConfig(base_resolutions=[128, 256]), downsample=16)
    rng = np.random.default_rng(0)
    drawn = {pol.choose(rng).size for _ in range(400)}
    assert drawn == {b.size for b in pol.all_buckets()} and len(drawn) >= 12  # some small buckets coincide
    a = [pol.choose(np.random.default_rng([1, i])).size for i in range(20)]
    assert a == [pol.choose(np.random.default_rng([1, i])).size for i in range(20)]
    assert pol.choose(rng, native_size=(1080, 1920)).aspect == "16:9"
    assert pol.choose(rng, native_size=(500, 1000)).aspect == "2:1"
    assert pol.choose(rng, native_size=(600, 610)).aspect == "1:1"


def test_policy_multiple_of_follows_downsample_and_bad_config_errors():
    pol = ResolutionPolicy(ResolutionPolicyConfig(base_resolutions=[200], multiple_of=16), downsample=32)
    assert all(b.height % 32 == 0 and b.width % 32 == 0 for b in pol.all_buckets())
    with pytest.raises(LensforgeError, match="W:H"):
        ResolutionPolicy(ResolutionPolicyConfig(aspect_ratios=["wide"]))
    with pytest.raises(LensforgeError, match="aspect_weights"):
        ResolutionPolicy(ResolutionPolicyConfig(aspect_weights=[1.0]))


def test_fit_image_cover_and_contain():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    assert fit_image(img, (64, 64), "cover").size == (64, 64)
    c = fit_image(img, (64, 64), "contain")
    arr = np.asarray(c)
    assert c.size == (64, 64) and arr[0, 32].sum() == 0 and arr[32, 32, 0] > 200  # padded top, red middle


def test_caption_policy_field_mix_dropout_fallback():
    caps = {"dense": "a long dense caption", "short": "short one"}
    pol = CaptionPolicy(CaptionPolicyConfig(field="dense", dropout=0.0))
    assert pol.choose(caps, np.random.default_rng(0)) == ("a long dense caption", "dense")
    mix = CaptionPolicy(CaptionPolicyConfig(mix={"dense": 0.75, "short": 0.25}, dropout=0.2))
    picks = [mix.choose(caps, np.random.default_rng([0, i]))[1] for i in range(4000)]
    frac = {k: picks.count(k) / len(picks) for k in ("dense", "short", DROPPED)}
    assert abs(frac[DROPPED] - 0.2) < 0.03
    assert abs(frac["dense"] - 0.6) < 0.03 and abs(frac["short"] - 0.2) < 0.03
    assert all(mix.choose(caps, np.random.default_rng([0, i]))[0] == "" for i in range(4000) if picks[i] == DROPPED)
    assert pol.choose({"caption": "only this"}, np.random.default_rng(0)) == ("only this", "caption")
    with pytest.raises(SampleError, match="no caption"):
        pol.choose({"url": "x"}, np.random.default_rng(0))
    with pytest.raises(LensforgeError, match="dropout"):
        CaptionPolicy(CaptionPolicyConfig(dropout=1.5))


def test_text_token_estimate():
    cfg = PackingConfig(text_tokens_per_word=1.5, text_tokens_min=2)
    assert estimate_text_tokens("one two three four", cfg) == 6
    assert estimate_text_tokens("", cfg) == 2
    assert estimate_text_tokens("a b", PackingConfig(text_tokens_per_word=0, text_tokens_estimate=40)) == 40


def test_resolution_policy_sizes_are_its_buckets_sizes():
    from lensforge.data.resolution import resolve_resolution

    cfg = ResolutionPolicyConfig(base_resolutions=[48, 64], aspect_ratios=["1:2", "1:1", "2:1"], multiple_of=16,
                                 lens_table=False)
    assert ResolutionPolicy(cfg).sizes == {resolve_resolution(b, a, 16, False) for b in (48, 64)
                                           for a in ("1:2", "1:1", "2:1")}
