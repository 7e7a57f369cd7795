"""Prompt sets from the synthetic world: the taxonomy CLI, the GenEval-style suite, and that the world's
own clean renders satisfy every rubric item while another row's render does not."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from lensforge.cli import main
from lensforge.data.checks import row_check_problems, score_row
from lensforge.data.prompts_cli import GENEVAL_TAGS, TAXONOMY
from lensforge.data.sources.synthetic import SyntheticWorld, render_scene
from lensforge.data.synthetic_prompts import (
    geneval_correct, geneval_rows, geneval_summary, size_for_ratio, taxonomy_rows, world_config,
)
from lensforge.data.checks import noise_baseline
from lensforge.data.verifier import analyze
from lensforge.errors import LensforgeError

TINY_WORLD = ["max_objects=1", "shapes=[circle,square,triangle]", "colors=[red,green,blue,yellow]", "sizes=[huge]",
              "backgrounds=[flat]", "dense_words=[10,16]"]
ROW_KEYS = {"id", "prompt", "category", "rubric", "scene", "height", "width", "aspect_ratio", "negative", "short", "meta"}


def assert_row_schema(row):
    assert set(row) <= ROW_KEYS and {"id", "prompt", "category", "rubric", "scene"} <= set(row)
    assert isinstance(row["prompt"], str) and row["prompt"] and isinstance(row["category"], str) and row["category"]
    assert isinstance(row["rubric"], list) and row["rubric"]
    ids = [it["id"] for it in row["rubric"]]
    assert len(set(ids)) == len(ids)
    for it in row["rubric"]:
        assert set(it) == {"id", "question", "weight", "check"} and it["question"] and it["weight"] > 0
    assert row_check_problems(row) == []
    assert ("height" in row) == ("width" in row) and "aspect_ratio" not in row


def size_of(row):
    return (row["height"], row["width"]) if "height" in row else (64, 64)


def category_scores(rows, images):
    per = defaultdict(list)
    for row, img in zip(rows, images):
        per[row["category"]].append(score_row(img, row)["score"])
    return {c: float(np.mean(v)) for c, v in per.items()}


def test_cli_writes_500_prompts_that_clean_renders_satisfy(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["data", "prompts", "synthetic:500", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 500 and len({r["id"] for r in rows}) == 500
    cats = {r["category"] for r in rows}
    assert cats == set(TAXONOMY) and len(cats) >= 10
    for c in TAXONOMY:
        assert f"  {c}" in printed
    for r in rows:
        assert_row_schema(r)
    ar = [r for r in rows if r["category"] == "aspect_ratio"]
    assert {(r["height"], r["width"]) for r in ar} == {(96, 48), (96, 64), (64, 64), (64, 96), (48, 96)}
    clean = category_scores(rows, [render_scene(r["scene"], size_of(r)) for r in rows])
    assert set(clean) == set(TAXONOMY)
    for c, v in clean.items():
        assert v >= 0.95, (c, v)
    # another row's render (at this row's size) does not satisfy it
    sub = rows[::3]
    mismatched = category_scores(sub, [render_scene(rows[(3 * i + 7) % 500]["scene"], size_of(r)) for i, r in enumerate(sub)])
    assert float(np.mean(list(mismatched.values()))) < 0.25, mismatched
    for c, v in mismatched.items():
        assert v < 0.5, (c, v)


def test_tiny_world_taxonomy_clean_renders_and_noise_baseline():
    rows = taxonomy_rows(110, seed=2, world=TINY_WORLD)
    assert {r["category"] for r in rows} == set(TAXONOMY)
    assert all(o["color"] in ("red", "green", "blue", "yellow") for r in rows for o in r["scene"]["objects"])
    clean = category_scores(rows, [render_scene(r["scene"], size_of(r)) for r in rows])
    for c, v in clean.items():
        assert v >= 0.95, (c, v)
    base = noise_baseline(rows)
    for name in ("blank", "noise"):
        assert base[name]["score"] <= 0.15, (name, base[name])


def test_rows_state_one_item_per_fact():
    rows = {r["category"]: r for r in taxonomy_rows(len(TAXONOMY), seed=5)}
    kinds = {c: [it["check"]["kind"] for it in r["rubric"]] for c, r in rows.items()}
    assert kinds["single_object"] == ["object"] and kinds["color"] == ["object", "color"]
    assert kinds["shape"] == ["object", "shape"] and kinds["size"] == ["object", "size"]
    assert kinds["count"] == ["count"] and kinds["position"] == ["object", "position"]
    assert kinds["relation"] == ["object", "object", "relation"] and kinds["background"] == ["object", "background", "background"]
    assert kinds["text"] == ["object", "text"] and kinds["aspect_ratio"] == ["aspect_ratio", "object", "position"]
    scene = rows["scene"]
    objs = scene["scene"]["objects"]
    assert kinds["scene"].count("size") == kinds["scene"].count("position") == len(objs)
    assert scene["short"] and len(scene["prompt"].split()) >= 80
    count = rows["count"]["rubric"][0]["check"]
    assert f"{['zero', 'one', 'two', 'three', 'four'][count['count']]} {count['object']['color']}" in rows["count"]["prompt"]
    text = rows["text"]
    assert f'"{text["scene"]["text"]["word"]}"' in text["prompt"]


def test_deterministic_and_options(tmp_path, capsys):
    a, b = taxonomy_rows(30, seed=1), taxonomy_rows(30, seed=1)
    assert a == b and a != taxonomy_rows(30, seed=2)
    only = taxonomy_rows(9, seed=0, categories="count,relation")
    assert [r["category"] for r in only] == ["count", "relation"] * 4 + ["count"]
    assert world_config({"max_objects": 2}).max_objects == 2
    for argv, message in [
        (["synthetic:5", "--world", "max_objectz=3"], "did you mean 'max_objects'"),
        (["synthetic:5", "--world", "shapes=[hexagon]"], "unknown 'hexagon'"),
        (["synthetic:5", "--world", "shapes"], "expects key=value"),
        (["synthetic:5", "--categories", "colour"], "unknown category 'colour'"),
        (["synth:5"], "expected synthetic:N"),
        (["synthetic:x"], "N must be an integer"),
        (["geneval:6", "--world", "shapes=[circle]"], "category 'two_object': needs 2 different shapes"),
        (["synthetic:5", "--resolution", "50"], "multiple of 16"),
    ]:
        assert main(["data", "prompts", *argv[:1], str(tmp_path / "x.jsonl"), *argv[1:]]) == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["data", "prompts", "synthetic:3", str(tmp_path / "new" / "dir" / "p.jsonl")]) == 0  # folders made
    assert len((tmp_path / "new" / "dir" / "p.jsonl").read_text().splitlines()) == 3
    with pytest.raises(LensforgeError, match=">= 1"):
        taxonomy_rows(0)


def test_size_for_ratio():
    assert size_for_ratio("1:1", 64) == (64, 64)
    assert size_for_ratio("2:1", 64) == (48, 96) and size_for_ratio("2:3", 64) == (96, 64)
    h, w = size_for_ratio("3:2", 512)
    assert (h % 16, w % 16) == (0, 0) and w / h == 1.5 and 0.5 <= h * w / 512**2 <= 2


def test_geneval_suite_strict_rule():
    rows = geneval_rows(60, seed=0)
    assert [r["category"] for r in rows[:6]] == list(GENEVAL_TAGS)
    for r in rows:
        assert_row_schema(r)
    assert rows[2]["prompt"].startswith("a photo of ") and rows[2]["rubric"][0]["check"]["kind"] == "count"
    clean = [geneval_correct(render_scene(r["scene"], (96, 96)), r) for r in rows]
    summary = geneval_summary(rows, clean)
    assert summary["overall"] == 1.0 and set(summary["tags"]) == set(GENEVAL_TAGS) and summary["images"] == 60
    wrong = [geneval_correct(render_scene(rows[(i + 5) % 60]["scene"], (96, 96)), r) for i, r in enumerate(rows)]
    assert geneval_summary(rows, wrong)["overall"] < 0.35
    # strict: an image with one of two objects right is wrong, whatever the partial score
    two = next(r for r in rows if r["category"] == "color_attr")
    half = dict(two["scene"], objects=two["scene"]["objects"][:1], relations=[])
    img = render_scene(half, (96, 96))
    assert not geneval_correct(img, two) and score_row(img, two)["mean"] == 0.5
    assert geneval_correct(img, two, analysis=analyze(render_scene(two["scene"], (96, 96))))
    tags = geneval_summary([{"category": "a"}, {"category": "a"}, {"category": "b"}], [True, False, False])
    assert tags == {"tags": {"a": 0.5, "b": 0.0}, "overall": 0.25, "images": 3}


def test_world_vocabulary_is_respected():
    cfg = SyntheticWorld.Config(shapes=["star", "cross"], colors=["pink", "cyan"], backgrounds=["texture"])
    for r in taxonomy_rows(22, seed=0, world=cfg) + geneval_rows(12, seed=0, world=cfg):
        assert {o["shape"] for o in r["scene"]["objects"]} <= {"star", "cross"}
        assert {o["color"] for o in r["scene"]["objects"]} <= {"pink", "cyan"}
        assert r["scene"]["background"]["kind"] == "texture"
