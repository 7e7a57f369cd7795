"""Verifier: near-perfect on clean renders, clearly lower on images that contradict the spec, and no
reward for blank images, noise, an untrained model's samples or a picture sprayed with shapes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lensforge.data.sources.synthetic import (
    BACKGROUND_COLORS, GRADIENT_DIRECTIONS, PALETTE, SHAPES, TEXTURES, SyntheticWorld, render_scene, to_tensor,
)
from lensforge.data.verifier import (
    ACCEPT, ATTRIBUTES, analyze, blank_image, detect, estimate_background, noise_image, verify,
)
from lensforge.data.checks import noise_baseline
from lensforge.errors import LensforgeError

REPO = Path(__file__).resolve().parents[2]
SIZES = [(128, 128), (96, 176), (176, 96), (128, 256), (256, 128), (112, 144), (64, 64), (64, 128)]
NOISE_ATTR_MAX, NOISE_OVERALL_MAX = 0.2, 0.15


def mean_scores(results):
    keys = {k for r in results for k in r}
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in keys}


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SyntheticWorld.Config(glyph_prob=0.3, seed=11))


@pytest.fixture(scope="module")
def tiny_recipe():
    from lensforge.recipe import load_recipe

    return load_recipe(str(REPO / "recipes/tiny/pretrain.yaml")).config


@pytest.fixture(scope="module")
def tiny_world(tiny_recipe):
    return tiny_recipe.data.source.build()


def assert_noise_level(means, what):
    assert means["overall"] <= NOISE_OVERALL_MAX, (what, means)
    for k, v in means.items():
        assert v <= NOISE_ATTR_MAX, (what, k, v, means)


def test_clean_renders_score_at_least_95_percent_per_attribute(world):
    res = []
    for i in range(96):
        sc = world.scene(i)
        res.append(verify(render_scene(sc, SIZES[i % len(SIZES)]), sc))
    m = mean_scores(res)
    assert set(m) == set(ATTRIBUTES) | {"overall"}
    for k, v in m.items():
        assert v >= 0.95, (k, v)


def test_clean_renders_of_the_tiny_world_score_at_least_95_percent(tiny_world):
    assert tiny_world.config.max_objects == 1 and tiny_world.config.sizes == ["huge"]  # the main job's world
    res = []
    for i, p in enumerate(tiny_world.eval_prompts(48)):
        res.append(verify(render_scene(p.scene, [(64, 64), (64, 96), (96, 64)][i % 3]), p.scene))
    m = mean_scores(res)
    assert {"color", "shape", "size", "position", "count", "background"} <= set(m)
    for k, v in m.items():
        assert v >= 0.95, (k, v)


def test_soft_but_correct_objects_still_count(world):
    # a blurry red circle is a red circle
    scene = {"background": {"kind": "flat", "colors": ["light grey"]}, "relations": [], "text": None,
             "objects": [{"id": 0, "shape": "circle", "color": "red", "size": "large", "x": 0.3, "y": 0.3, "cell": [0, 0]}]}
    img = render_scene(scene, (128, 128)).astype(np.float32)
    soft = np.clip(ndimage.gaussian_filter(img, (3, 3, 0)), 0, 255).astype(np.uint8)
    r = verify(soft, scene)
    assert r["color"] == r["shape"] == r["position"] == r["count"] == r["background"] == 1.0, r
    # a paler, blotchier one too (desaturated towards white, pixel noise)
    rng = np.random.default_rng(0)
    pale = np.clip(0.7 * soft + 0.3 * 255 + rng.normal(0, 6, soft.shape), 0, 255).astype(np.uint8)
    r = verify(pale, scene)
    assert r["color"] == r["shape"] == r["position"] == 1.0, r
    # blurred multi-object scenes with mild pixel noise keep nearly everything
    res = []
    for i in range(30):
        sc = world.scene(i)
        im = render_scene(sc, (128, 128)).astype(np.float32)
        im = ndimage.gaussian_filter(im, (2, 2, 0)) + rng.normal(0, 4, im.shape)
        res.append(verify(np.clip(im, 0, 255).astype(np.uint8), sc))
    m = mean_scores(res)
    for k in ("color", "position", "relation"):
        assert m[k] >= 0.95, (k, m)
    for k in ("shape", "size", "count"):
        assert m[k] >= 0.85, (k, m)


def test_accepts_tensor_numpy_and_pil_and_reuses_an_analysis(world):
    sc = world.scene(3)
    img = render_scene(sc, (128, 128))
    a, b, c = verify(img, sc), verify(to_tensor(img), sc), verify(Image.fromarray(img), sc)
    assert a == b == c and a["overall"] == 1.0
    assert verify(img, sc, analysis=analyze(img)) == a
    with pytest.raises(LensforgeError, match="HWC"):
        verify(np.zeros((4, 4), np.uint8), sc)


def test_other_scene_scores_much_lower(world):
    res = [verify(render_scene(world.scene(i + 500), (128, 128)), world.scene(i)) for i in range(40)]
    m = mean_scores(res)
    assert m["overall"] < 0.4
    for k in ("color", "shape", "count", "position"):
        assert m[k] < 0.5, (k, m[k])


def test_each_contradicted_attribute_drops(world):
    colors = list(PALETTE)
    drops = {"color": [], "shape": [], "position": [], "background": []}
    for i in range(30):
        sc = world.scene(i)
        recolored = copy.deepcopy(sc)
        for o in recolored["objects"]:
            o["color"] = colors[(colors.index(o["color"]) + 3) % len(colors)]
        drops["color"].append(verify(render_scene(recolored, (128, 128)), sc)["color"])
        reshaped = copy.deepcopy(sc)
        for o in reshaped["objects"]:
            o["shape"] = "circle" if o["shape"] != "circle" else "square"
        drops["shape"].append(verify(render_scene(reshaped, (128, 128)), sc)["shape"])
        mirrored = copy.deepcopy(sc)
        for o in mirrored["objects"]:
            o["x"], o["y"] = 1 - o["x"], 1 - o["y"]
        drops["position"].append(verify(render_scene(mirrored, (128, 128)), sc)["position"])
        rebg = copy.deepcopy(sc)
        names = list(BACKGROUND_COLORS)
        rebg["background"] = {"kind": "flat", "colors": [names[(names.index(sc["background"]["colors"][0]) + 4) % 8]]}
        drops["background"].append(verify(render_scene(rebg, (128, 128)), sc)["background"])
    assert np.mean(drops["color"]) < 0.1
    assert np.mean(drops["shape"]) < 0.1
    assert np.mean(drops["position"]) < 0.5  # centre cells stay put when mirrored
    assert np.mean(drops["background"]) < 0.1


def test_empty_image_scores_zero_and_extra_objects_cost(world):
    sc = next(world.scene(i) for i in range(50) if len(world.scene(i)["objects"]) == 2)
    blank = np.full((128, 128, 3), 128, np.uint8)
    r = verify(blank, sc)
    assert r["color"] == r["shape"] == r["count"] == 0.0
    fewer = copy.deepcopy(sc)
    fewer["objects"] = fewer["objects"][:1]
    fewer["relations"] = []
    r2 = verify(render_scene(sc, (128, 128)), fewer)  # image has one object more than the spec
    assert r2["color"] == 0.5 and r2["count"] < 1.0  # one of the two detections is the object asked for


def test_spraying_shapes_does_not_pay():
    """One red circle asked for; a picture of nine clean shapes in every colour, the red circle among them."""
    want = {"background": {"kind": "flat", "colors": ["grey"]}, "relations": [], "text": None,
            "objects": [{"id": 0, "shape": "circle", "color": "red", "size": "small", "x": 0.5, "y": 0.5, "cell": [1, 1]}]}
    spray = copy.deepcopy(want)
    colors = list(PALETTE)
    spray["objects"] = [{"id": k, "shape": SHAPES[k % len(SHAPES)] if k != 4 else "circle",
                         "color": colors[k % len(colors)] if k != 4 else "red", "size": "small",
                         "x": (c + 0.5) / 3, "y": (r + 0.5) / 3, "cell": [r, c]}
                        for k, (r, c) in enumerate((r, c) for r in range(3) for c in range(3))]
    img = render_scene(spray, (192, 192))
    assert len(detect(img)) == 9
    r = verify(img, want)
    for k in ("color", "shape", "size", "position"):
        assert r[k] <= 1 / 9 + 1e-9, (k, r)
    assert r["count"] <= 0.2 and r["overall"] <= 0.4, r


def test_noise_blobs_are_rejected_with_a_reason():
    a = analyze(noise_image((64, 64), seed=3))
    assert a.detections == [] and a.background.kind is None
    smooth = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, (128, 128, 3)), (2, 2, 0))
    smooth = np.clip(128 + 80 * smooth / smooth.std(), 0, 255).astype(np.uint8)
    b = analyze(smooth)
    assert len(b.rejected) > 10 and len(b.detections) <= 1
    assert all(d.reason for d in b.rejected)
    assert any("hue deviation" in d.reason for d in b.rejected) and any("area" in d.reason for d in b.rejected)
    assert set(ACCEPT) == {"min_area", "max_aspect", "min_iou", "max_hue_dev"}


def test_background_kind_colours_direction_and_pattern_of_clean_renders():
    names = list(BACKGROUND_COLORS)
    obj = [{"id": 0, "shape": "square", "color": "blue", "size": "medium", "x": 0.5, "y": 0.5, "cell": [1, 1]}]
    cases = [{"kind": "flat", "colors": [c]} for c in names]
    cases += [{"kind": "gradient", "colors": [names[i], names[(i + 1 + i // 3) % 8]], "direction": d}
              for i in range(8) for d in GRADIENT_DIRECTIONS]
    cases += [{"kind": "texture", "colors": [c], "pattern": p} for c in names for p in TEXTURES]
    for bg in cases:
        for size in ((64, 64), (96, 176), (256, 128)):
            scene = {"seed": 5, "background": bg, "objects": obj, "relations": [], "text": None}
            est = estimate_background(render_scene(scene, size))
            assert est.kind == bg["kind"] and est.colors == bg["colors"], (bg, size, est)
            assert est.direction == bg.get("direction") and est.pattern == bg.get("pattern"), (bg, size, est)


def test_noise_baseline_blank_and_uniform_noise_score_like_noise(world, tiny_world):
    for scenes in ([world.scene(i) for i in range(48)], [p.scene for p in tiny_world.eval_prompts(48)]):
        base = noise_baseline(scenes, size=(64, 64), seed=1)
        assert set(base) == {"blank", "noise"}
        for name, means in base.items():
            assert_noise_level(means, name)
    assert blank_image((8, 6), 1).shape == (8, 6, 3) and (blank_image((4, 4), 1) == 128).all()
    with pytest.raises(LensforgeError, match="at least one"):
        noise_baseline([])
    with pytest.raises(LensforgeError, match="3 images for 2 items"):
        noise_baseline([world.scene(0), world.scene(1)], extra={"x": [blank_image((8, 8))] * 3})


def test_untrained_tiny_dit_samples_score_like_noise(tiny_recipe, tiny_world, world):
    """The tiny recipe's models, random init (zero-init output layer or not), 3 sampler steps."""
    import torch

    from lensforge.sampling.sampler import generate

    vae = tiny_recipe.model.vae.build().eval()
    te = tiny_recipe.model.text_encoder.build().eval()
    tiny = tiny_world.eval_prompts(24)
    multi = world.eval_prompts(24)
    sizes = [(64, 64), (64, 96), (96, 64)]
    for zero_init in (True, False):
        torch.manual_seed(0)
        dit = tiny_recipe.model.dit.build(zero_init=zero_init).eval()
        for prompts in (tiny, multi):
            with torch.no_grad():
                imgs = [generate(dit, vae, te, [p.prompt], [sizes[i % 3]], steps=3, seeds=[i])[0]
                        for i, p in enumerate(prompts)]
            base = noise_baseline([p.scene for p in prompts], extra={"untrained": imgs})
            assert set(base) == {"blank", "noise", "untrained"}
            assert_noise_level(base["untrained"], (zero_init, "untrained"))  # blank/noise: the 48-scene test
