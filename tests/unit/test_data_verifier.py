"""Verifier: near-perfect on clean renders, clearly lower on images that contradict the spec."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from lensforge.data.sources.synthetic import PALETTE, SyntheticWorld, render_scene, to_tensor
from lensforge.data.verifier import verify

SIZES = [(128, 128), (96, 176), (176, 96), (128, 256), (256, 128), (112, 144)]


def mean_scores(results):
    keys = {k for r in results for k in r}
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in keys}


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SyntheticWorld.Config(glyph_prob=0.3, seed=11))


def test_clean_renders_score_at_least_95_percent_per_attribute(world):
    res = []
    for i in range(80):
        sc = world.scene(i)
        res.append(verify(render_scene(sc, SIZES[i % len(SIZES)]), sc))
    m = mean_scores(res)
    assert set(m) >= {"color", "shape", "size", "position", "count", "relation", "text", "overall"}
    for k, v in m.items():
        assert v >= 0.95, (k, v)


def test_accepts_tensor_numpy_and_pil(world):
    sc = world.scene(3)
    img = render_scene(sc, (128, 128))
    a, b, c = verify(img, sc), verify(to_tensor(img), sc), verify(Image.fromarray(img), sc)
    assert a == b == c and a["overall"] == 1.0


def test_other_scene_scores_much_lower(world):
    res = [verify(render_scene(world.scene(i + 500), (128, 128)), world.scene(i)) for i in range(40)]
    m = mean_scores(res)
    assert m["overall"] < 0.5
    for k in ("color", "shape", "count", "position"):
        assert m[k] < 0.6, (k, m[k])


def test_each_contradicted_attribute_drops(world):
    colors = list(PALETTE)
    drops = {"color": [], "shape": [], "position": []}
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
    assert np.mean(drops["color"]) < 0.1
    assert np.mean(drops["shape"]) < 0.1
    assert np.mean(drops["position"]) < 0.5  # centre cells stay put when mirrored


def test_empty_image_scores_zero_and_extra_objects_cost_count(world):
    sc = next(world.scene(i) for i in range(50) if len(world.scene(i)["objects"]) == 2)
    blank = np.full((128, 128, 3), 128, np.uint8)
    r = verify(blank, sc)
    assert r["color"] == r["shape"] == r["count"] == 0.0
    fewer = copy.deepcopy(sc)
    fewer["objects"] = fewer["objects"][:1]
    fewer["relations"] = []
    r2 = verify(render_scene(sc, (128, 128)), fewer)  # image has one object more than the spec
    assert r2["color"] == 1.0 and r2["count"] < 1.0
