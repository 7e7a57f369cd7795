"""Rubric-item checks: every kind passes on the clean render of its scene and fails on a contradicting one."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lensforge.data.checks import (
    CHECK_KINDS, aggregate, check_problems, row_check_problems, score_items, score_row,
)
from lensforge.data.sources.synthetic import render_scene
from lensforge.data.verifier import analyze
from lensforge.errors import LensforgeError


def obj(i, color, shape, size, cell, x=None, y=None):
    r, c = cell
    return {"id": i, "color": color, "shape": shape, "size": size, "cell": [r, c],
            "x": (c + 0.5) / 3 if x is None else x, "y": (r + 0.5) / 3 if y is None else y}


SCENE = {
    "seed": 3,
    "background": {"kind": "gradient", "colors": ["light grey", "slate"], "direction": "vertical"},
    "objects": [obj(0, "red", "circle", "large", (0, 0)), obj(1, "blue", "square", "medium", (0, 2)),
                obj(2, "red", "circle", "small", (2, 2))],
    "relations": [{"a": 0, "b": 1, "relation": "left of"}, {"a": 1, "b": 2, "relation": "above"}],
    "text": {"word": "KAT", "x": 0.5, "y": 0.5, "h": 0.12, "ink": "black"},
}
RC = {"color": "red", "shape": "circle"}
BS = {"color": "blue", "shape": "square"}
CHECKS = {
    "object": {"kind": "object", "object": BS},
    "object_shape_only": {"kind": "object", "object": {"shape": "square"}},
    "color_by_shape": {"kind": "color", "object": {"shape": "square"}, "color": "blue"},
    "color_by_index": {"kind": "color", "object": 1, "color": "blue"},
    "shape_by_color": {"kind": "shape", "object": {"color": "blue"}, "shape": "square"},
    "size_by_desc": {"kind": "size", "object": dict(RC, cell=[0, 0]), "size": "large"},
    "size_by_index": {"kind": "size", "object": 2, "size": "small"},
    "position": {"kind": "position", "object": BS, "cell": [0, 2], "region": "upper right"},
    "position_by_index": {"kind": "position", "object": 2, "cell": [2, 2]},
    "count": {"kind": "count", "object": RC, "count": 2},
    "count_all": {"kind": "count", "object": {}, "count": 3},
    "count_none": {"kind": "count", "object": {"color": "green"}, "count": 0},
    "relation": {"kind": "relation", "a": RC, "b": BS, "relation": "left of"},
    "relation_by_index": {"kind": "relation", "a": 1, "b": 2, "relation": "above"},
    "background_type": {"kind": "background", "type": "gradient", "direction": "vertical"},
    "background_colors": {"kind": "background", "colors": ["light grey", "slate"]},
    "text": {"kind": "text", **SCENE["text"]},
    "aspect_ratio": {"kind": "aspect_ratio", "ratio": "3:2"},
}


def row_of(checks, scene=SCENE, **extra):
    return {"id": "r", "prompt": "p", "category": "c", "scene": scene,
            "rubric": [{"id": k, "question": f"{k}?", "weight": 1.0, "check": c} for k, c in checks.items()], **extra}


def render(scene=SCENE, size=(128, 192)):
    return render_scene(scene, size)


def test_every_check_passes_on_the_clean_render():
    assert {c["kind"] for c in CHECKS.values()} == set(CHECK_KINDS)
    row = row_of(CHECKS)
    assert row_check_problems(row) == []
    scores = score_items(render(), row)
    assert scores == {k: 1.0 for k in CHECKS}, scores
    res = score_row(render(), row)
    assert res["strict"] and res["score"] == res["mean"] == 1.0 and res["clutter"] == 1.0
    assert set(res["kinds"]) == set(CHECK_KINDS) and res["detections"] == 3


def test_each_check_fails_when_its_fact_is_contradicted():
    def changed(fn):
        sc = copy.deepcopy(SCENE)
        fn(sc)
        return score_items(render(sc), row_of(CHECKS))

    recolor = changed(lambda sc: sc["objects"][1].update(color="green"))
    assert recolor["object"] == recolor["color_by_shape"] == recolor["color_by_index"] == 0.0
    assert recolor["shape_by_color"] == recolor["position"] == recolor["relation"] == 0.0  # no blue square any more
    assert recolor["count"] == recolor["count_all"] == 1.0 and recolor["count_none"] == 0.0
    reshape = changed(lambda sc: sc["objects"][1].update(shape="triangle"))
    assert reshape["object"] == reshape["object_shape_only"] == reshape["shape_by_color"] == 0.0
    assert reshape["color_by_index"] == 1.0  # the matched object 1 is still blue: index refs keep partial credit
    resize = changed(lambda sc: sc["objects"][2].update(size="large"))
    assert resize["size_by_index"] == 0.0 and resize["size_by_desc"] == 1.0
    moved = changed(lambda sc: sc["objects"][1].update(x=1 / 2, y=5 / 6, cell=[2, 1]))
    assert moved["position"] == 0.0 and moved["relation"] == 1.0  # still right of the red circle at upper left
    swapped = changed(lambda sc: (sc["objects"][0].update(x=5 / 6, y=1 / 2, cell=[1, 2]),
                                  sc["objects"][1].update(x=1 / 6, cell=[0, 0])))
    assert swapped["relation"] == 0.0  # both red circles now right of the blue square
    assert swapped["relation_by_index"] == 1.0  # the square (upper left) is still above the small circle
    fewer = changed(lambda sc: sc["objects"].pop(2))
    assert fewer["count"] == 0.5 and fewer["count_all"] == pytest.approx(2 / 3) and fewer["size_by_index"] == 0.0
    flat = changed(lambda sc: sc.update(background={"kind": "flat", "colors": ["light grey"]}))
    assert flat["background_type"] == 0.0 and flat["background_colors"] == 0.5
    other_word = changed(lambda sc: sc["text"].update(word="ZUN"))
    assert other_word["text"] < 0.5
    square = score_items(render(size=(128, 128)), row_of(CHECKS))
    assert square["aspect_ratio"] == 0.0


def test_relation_needs_two_distinct_objects_and_counts_allow_partial_credit():
    one = copy.deepcopy(SCENE)
    one["objects"] = [one["objects"][0]]
    one["relations"] = []
    row = row_of({"self": {"kind": "relation", "a": {"color": "red"}, "b": {"shape": "circle"}, "relation": "left of"},
                  "three": {"kind": "count", "object": RC, "count": 3}}, scene=one)
    s = score_items(render(one), row)
    assert s["self"] == 0.0 and s["three"] == pytest.approx(1 / 3)


def test_background_kinds_on_clean_renders():
    for bg, check in [({"kind": "flat", "colors": ["cream"]}, {"type": "flat", "colors": ["cream"]}),
                      ({"kind": "texture", "colors": ["grey"], "pattern": "checks"}, {"type": "texture", "pattern": "checks"}),
                      ({"kind": "texture", "colors": ["charcoal"], "pattern": "stripes"}, {"pattern": "stripes", "colors": ["charcoal"]}),
                      ({"kind": "gradient", "colors": ["off-white", "dark grey"], "direction": "diagonal"},
                       {"type": "gradient", "direction": "diagonal", "colors": ["off-white", "dark grey"]})]:
        sc = dict(copy.deepcopy(SCENE), background=bg)
        row = row_of({"bg": {"kind": "background", **check}, "wrong": {"kind": "background", "type": "flat", "colors": ["beige"]}},
                     scene=sc)
        s = score_items(render(sc), row)
        assert s["bg"] == 1.0 and s["wrong"] < 1.0, (bg, s)


def test_a_bare_canvas_in_the_background_colour_earns_no_background_credit():
    sc = dict(copy.deepcopy(SCENE), background={"kind": "flat", "colors": ["cream"]})
    row = row_of({"bg": {"kind": "background", "type": "flat", "colors": ["cream"]}}, scene=sc)
    bare = dict(sc, objects=[], relations=[], text=None)
    assert score_items(render(sc), row)["bg"] == 1.0 and score_items(render(bare), row)["bg"] == 0.0


def test_noise_scores_zero_on_every_kind():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(128, 192, 3), dtype=np.uint8)
    scores = score_items(noise, row_of(CHECKS))
    for k, v in scores.items():
        if k != "count_none":  # "no green objects" holds (the 3:2 format needs a scene in it)
            assert v == 0.0, (k, v)


def test_weights_clutter_and_unchecked_items():
    row = row_of({"a": CHECKS["object"], "b": {"kind": "object", "object": {"color": "green"}}})
    row["rubric"][0]["weight"] = 3.0
    row["rubric"].append({"id": "judge", "question": "Is it pretty?", "weight": 1.0})  # for a VLM judge: left out
    s = score_items(render(), row)
    assert s == {"a": 1.0, "b": 0.0}
    assert aggregate(s, row) == pytest.approx(0.75)
    # the same image scored against a one-object scene: three detections for one object
    small = copy.deepcopy(SCENE)
    small["objects"] = [small["objects"][1]]
    res = score_row(render(), dict(row, scene=small))
    assert res["clutter"] == pytest.approx(1 / 3) and res["score"] == pytest.approx(0.25) and not res["strict"]
    assert score_row(render(), {k: v for k, v in row.items() if k != "scene"})["clutter"] == 1.0
    with pytest.raises(LensforgeError, match="no rubric item with a 'check'"):
        score_items(render(), {"id": "x", "rubric": [{"id": "q", "question": "?", "weight": 1}]})


def test_an_analysis_is_reused():
    img = render()
    a = analyze(img)
    assert score_items(None, row_of(CHECKS), analysis=a) == score_items(img, row_of(CHECKS))


@pytest.mark.parametrize("check,fragment", [
    ({"kind": "colour"}, "check kind 'colour' is not one of"),
    ("red", "check must be a dict"),
    ({"kind": "object", "object": {"colour": "red"}}, "unknown key(s) colour"),
    ({"kind": "object", "object": {"color": "teal"}}, "color 'teal' is not one of"),
    ({"kind": "color", "object": {"shape": "circle"}, "color": "teal"}, "color 'teal' is not one of"),
    ({"kind": "size", "object": 7, "size": "large"}, "is not an object of the row's scene"),
    ({"kind": "position", "object": RC, "cell": [3, 0]}, "cell must be [row, col]"),
    ({"kind": "count", "object": RC, "count": -1}, "count must be an integer >= 0"),
    ({"kind": "relation", "a": RC, "b": True, "relation": "left of"}, "b must be an object index or a descriptor"),
    ({"kind": "relation", "a": RC, "b": BS, "relation": "near"}, "relation 'near' is not one of"),
    ({"kind": "background"}, "needs at least one of type, colors"),
    ({"kind": "background", "colors": ["mauve"]}, "colors must be a non-empty list"),
    ({"kind": "background", "type": "flat", "pattern": "dots"}, "pattern 'dots' is not one of"),
    ({"kind": "text", "word": "AB", "x": 0.5, "y": 1.5, "h": 0.1}, "text needs 'y' in (0, 1]"),
    ({"kind": "aspect_ratio", "ratio": "wide"}, "ratio must look like '3:2'"),
])
def test_invalid_checks_are_reported(check, fragment):
    problems = check_problems(check, SCENE)
    assert any(fragment in p for p in problems), problems
    row = row_of({"bad": check})
    with pytest.raises(LensforgeError, match="rubric item 'bad'"):
        score_items(render(), row)


def test_index_refs_need_a_scene():
    assert "the row has no 'scene'" in check_problems({"kind": "size", "object": 0, "size": "large"})[0]
