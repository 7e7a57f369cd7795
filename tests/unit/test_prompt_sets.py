"""Prompt-set JSONL: loader errors (every bad row at once, file:line), writer, seeded split, categories."""

from __future__ import annotations

import json
import random

import pytest

from lensforge.data.prompt_sets import (
    GLOBAL_STRUCTURAL_ITEM, PromptRow, PromptSet, PromptSetError, RubricItem, held_out_score, load_prompt_set,
    row_problems, write_prompt_set,
)
from lensforge.errors import LensforgeError


def row(i: int, category: str = "animals", **extra) -> dict:
    d = {"id": f"p{i:04d}", "prompt": f"prompt number {i}", "category": category,
         "rubric": [{"id": "r1", "question": "Is there a cat?", "weight": 2},
                    {"id": "r2", "question": "Is it red?", "weight": 1.5, "check": {"attr": "colour"}}]}
    d.update(extra)
    return d


def write_lines(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")


def test_round_trip_with_optional_fields(tmp_path):
    rows = [row(0, scene={"objects": [{"shape": "circle"}]}, aspect_ratio="16:9", negative="blurry",
                short="a cat", meta={"source": "test"}),
            row(1, category="food", height=512, width=768)]
    p = write_prompt_set(tmp_path / "sub" / "set.jsonl", rows)
    ps = load_prompt_set(p)
    assert len(ps) == 2 and ps.ids == ["p0000", "p0001"] and "p0001" in ps
    assert [r.to_dict() for r in ps] == rows
    r0 = ps.by_id("p0000")
    assert isinstance(r0.rubric[1], RubricItem) and r0.rubric[1].check == {"attr": "colour"}
    assert r0.total_weight == pytest.approx(3.5) and r0.aspect() == pytest.approx(16 / 9)
    assert ps[1].aspect() == pytest.approx(768 / 512)
    assert not list(tmp_path.glob("sub/.*"))  # no temporary file left behind
    # a PromptSet writes itself; the writer also accepts dataclass rows
    ps.write(tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_text() == p.read_text()


def test_every_bad_row_is_reported_at_once_with_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [
        row(0),                                                            # 1 ok
        "{not json",                                                       # 2
        {k: v for k, v in row(2).items() if k != "category"},              # 3 missing category
        row(3, rubric=[]),                                                 # 4 empty rubric
        row(4, rubric=[{"id": "a", "question": "Q?", "weight": 0}]),       # 5 weight <= 0
        row(0),                                                            # 6 duplicate id of line 1
        row(6, promt="typo"),                                              # 7 unknown key
        row(7, rubric=[{"id": "a", "question": "Q?", "weight": 1, "wieght": 2}]),  # 8 unknown item key
        row(8, rubric=[{"id": "a", "question": "Q?", "weight": 1}, {"id": "a", "question": "R?", "weight": 1}]),  # 9
        row(9, height=512),                                                # 10 height without width
        row(10, aspect_ratio="wide"),                                      # 11 bad aspect ratio
        row(11, aspect_ratio="1:1", height=64, width=64),                  # 12 both
        row(12, prompt="   "),                                             # 13 empty prompt
        "",                                                                # 14 blank: skipped
        "[1, 2]",                                                          # 15 not an object
        row(15, rubric=[{"id": "a", "question": "Q?", "weight": True}]),  # 16 bool is not a number
        row(16),                                                           # 17 ok
    ]
    write_lines(p, lines)
    with pytest.raises(PromptSetError) as ei:
        load_prompt_set(p)
    err = ei.value
    msg = str(err)
    expect = {
        2: "not valid JSON", 3: "missing 'category'", 4: "'rubric' is empty", 5: "'weight' must be a number > 0",
        6: "duplicate id 'p0000' (first on line 1)", 7: "unknown key 'promt' (did you mean 'prompt'?)",
        8: "unknown key 'wieght' (did you mean 'weight'?)", 9: "duplicate item id 'a'",
        10: "'height' and 'width' go together", 11: "'aspect_ratio' must be a 'W:H' string",
        12: "cannot be combined", 13: "'prompt' must be a non-empty string", 15: "must be a JSON object",
        16: "'weight' must be a number > 0",
    }
    for line, text in expect.items():
        assert any(pr.startswith(f"{p}:{line}: ") and text in pr for pr in err.problems), (line, text, msg)
    assert not any(pr.startswith((f"{p}:1:", f"{p}:14:", f"{p}:17:")) for pr in err.problems)
    assert f"{len(expect)} bad rows" in msg.splitlines()[0]
    assert isinstance(err, LensforgeError) and err.exit_code == 2


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LensforgeError, match="no such file"):
        load_prompt_set(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(LensforgeError, match="no rows"):
        load_prompt_set(tmp_path / "empty.jsonl")


def test_writer_refuses_bad_rows_and_writes_nothing(tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(LensforgeError, match="duplicate id 'p0001'"):
        write_prompt_set(out, [row(1), row(1)])
    with pytest.raises(LensforgeError, match="'rubric' is empty"):
        write_prompt_set(out, [PromptRow(id="a", prompt="p", category="c", rubric=[])])
    assert not out.exists()


def test_split_is_deterministic_stable_and_seeded(tmp_path):
    rows = [row(i, category=("a", "b", "c")[i % 3]) for i in range(400)]
    ps = PromptSet([PromptRow(**{**r, "rubric": [RubricItem(**it) for it in r["rubric"]]}) for r in rows])
    train, held = ps.split(seed=7, held_out_fraction=0.25)
    assert len(train) + len(held) == 400 and not set(train.ids) & set(held.ids)
    assert 60 <= len(held) <= 140  # binomial around 100
    assert held.ids == ps.split(seed=7, held_out_fraction=0.25)[1].ids  # deterministic
    # stable when rows are reordered, removed or added
    shuffled = list(ps.rows)
    random.Random(0).shuffle(shuffled)
    extra = [PromptRow(id=f"new{i}", prompt="x", category="a", rubric=[RubricItem(id="r", question="q?")])
             for i in range(100)]
    bigger = PromptSet(shuffled[50:] + extra)
    held2 = set(bigger.split(seed=7, held_out_fraction=0.25)[1].ids)
    assert held2 & set(ps.ids) == set(held.ids) - {r.id for r in shuffled[:50]}
    # file order kept inside each part
    assert held.ids == [i for i in ps.ids if i in set(held.ids)]
    # another seed gives another split; the edges are exact
    assert ps.split(seed=8, held_out_fraction=0.25)[1].ids != held.ids
    assert len(ps.split(seed=1, held_out_fraction=0.0)[1]) == 0
    assert len(ps.split(seed=1, held_out_fraction=1.0)[0]) == 0
    with pytest.raises(LensforgeError, match="held_out_fraction"):
        ps.split(seed=1, held_out_fraction=1.5)
    assert 0.0 <= held_out_score("p0001", 7) < 1.0


def test_category_counts_filter_and_global_item(tmp_path):
    p = tmp_path / "s.jsonl"
    write_prompt_set(p, [row(0, "food"), row(1, "animals"), row(2, "food"), row(3, "text")])
    ps = load_prompt_set(p)
    assert ps.category_counts() == {"food": 2, "animals": 1, "text": 1}
    assert ps.categories == ["animals", "food", "text"]
    assert ps.filter(categories=["food"]).ids == ["p0000", "p0002"]
    g = ps.with_global_item()
    assert all(r.rubric[-1] == GLOBAL_STRUCTURAL_ITEM and len(r.rubric) == 3 for r in g)
    assert g[0].with_global_item() is g[0]  # appended once
    assert len(ps[0].rubric) == 2  # the original rows are untouched
    assert row_problems(g[0].to_dict()) == []


def test_duplicate_ids_in_memory_are_refused():
    r = PromptRow(id="a", prompt="p", category="c", rubric=[RubricItem(id="r", question="q?")])
    with pytest.raises(LensforgeError, match="duplicate ids 'a'"):
        PromptSet([r, r])


def test_row_size_own_size_else_aspect_ratio_at_the_callers_base():
    from lensforge.data.prompt_sets import row_size
    from lensforge.eval.suites import expand

    assert row_size({"height": 32, "width": 64}, base=256) == (32, 64)
    assert row_size({"aspect_ratio": "2:1"}) is None  # no base: the caller's default size
    h, w = row_size({"aspect_ratio": "2:1"}, base=64, lens_table=False)
    assert (h, w) == (48, 96) and h % 16 == 0 and w % 16 == 0
    assert row_size({}, base=64) is None
    items = expand([{"prompt": "a"}, {"prompt": "b", "aspect_ratio": "1:2"}], [0], (64, 64))
    assert [it.size for it in items] == [(64, 64), (96, 48)]
