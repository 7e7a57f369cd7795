"""The ablation recipes (recipes/ablations/, issue 19): every one validates, each arm changes only what its
ablation is about, and tools/ablations.py names them all. Nothing here trains an arm."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lensforge.cli import main
from lensforge.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
ABL = REPO / "recipes" / "ablations"
RECIPES = sorted(ABL.glob("*.yaml"))


def _tool():
    spec = importlib.util.spec_from_file_location("ablations_tool", REPO / "tools" / "ablations.py")
    if "ablations_tool" not in sys.modules:  # dataclasses look their module up in sys.modules
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ablations_tool"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["ablations_tool"]


def _cfg(stem: str):
    return load_recipe(str(ABL / f"{stem}.yaml")).config


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_ablation_recipe_validates(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_the_tool_names_every_ablation_recipe_and_nothing_else():
    arms = {stem for ab in _tool().ABLATIONS.values() for stem in ab.arms.values()}
    assert arms == {p.stem for p in RECIPES}
    assert all(next(iter(ab.arms.values())) == "baseline" for ab in _tool().ABLATIONS.values())


# what each arm may change against baseline.yaml (dotted prefixes of the resolved recipe)
ALLOWED = {
    "captions_short": {"data.captions"}, "captions_mix": {"data.captions"},
    "resolution_fixed": {"data.resolution"}, "resolution_buckets": {"data.packing"},
    "encoder_shallow": {"model.text_encoder", "model.dit.text_dims"},
    "encoder_embeddings": {"model.text_encoder", "model.dit.text_dims"},
}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("stem", sorted(ALLOWED))
def test_each_arm_changes_one_thing(stem):
    base = _flat(load_recipe(str(ABL / "baseline.yaml")).data)
    arm = _flat(load_recipe(str(ABL / f"{stem}.yaml")).data)
    changed = {k for k in base.keys() | arm.keys() if base.get(k) != arm.get(k)} - {"name", "output_dir"}
    assert changed, stem
    assert all(any(k.startswith(p) for p in ALLOWED[stem]) for k in changed), (stem, changed)


def test_every_arm_trains_on_the_same_number_of_images_per_step():
    """max_samples binds before the token budget, so every arm sees 12 images a step (not more short-caption ones)."""
    from lensforge.data.captions import estimate_text_tokens
    from lensforge.data.resolution import resolve_resolution

    cfg = _cfg("baseline")
    world = cfg.data.source.build()
    longest = max(estimate_text_tokens(world.captions(i)[1]["dense"], cfg.data.packing) for i in range(300))
    r = cfg.data.resolution
    biggest = max((h // 16) * (w // 16) for h, w in (resolve_resolution(b, a, r.multiple_of, r.lens_table)
                                                     for b in r.base_resolutions for a in r.aspect_ratios))
    for p in RECIPES:
        c = _cfg(p.stem)
        assert c.data.packing.max_samples == cfg.data.packing.max_samples == 12
        assert c.data.packing.max_samples * (biggest + longest) <= c.data.packing.token_budget, p.stem
        assert c.trainer.max_steps == cfg.trainer.max_steps and c.data.source.config == cfg.data.source.config


def test_dry_run_lists_every_arm_and_seed_without_running_anything(tmp_path, capsys):
    assert _tool().main(["all", "--dry-run", "--seeds", "0,1", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    fits = [line for line in out.splitlines() if line.startswith("[dry-run] lensforge fit")]
    assert len(fits) == 2 * len(RECIPES)
    assert out.count("--reasoner synthetic_world") == 2 and out.count("--suite ar_sweep") == 2
    assert not any(tmp_path.iterdir())


def test_verdict_compares_the_difference_with_the_seed_spread():
    tool = _tool()
    ab = tool.ABLATIONS["captions"]
    agree = {"dense": {"dense": {0: 0.60, 1: 0.62}, "short": {0: 0.30, 1: 0.33}, "mix": {0: 0.45, 1: 0.50}}}
    assert tool.verdict(ab, agree).startswith("**Agrees")
    noisy = {"dense": {"dense": {0: 0.40, 1: 0.60}, "short": {0: 0.45, 1: 0.55}, "mix": {0: 0.42, 1: 0.58}}}
    assert tool.verdict(ab, noisy).startswith("**Inconclusive")
    worse = {"dense": {"dense": {0: 0.30, 1: 0.31}, "short": {0: 0.60, 1: 0.61}, "mix": {0: 0.50, 1: 0.52}}}
    assert tool.verdict(ab, worse).startswith("**Disagrees")
    one_worse = {"dense": {"dense": {0: 0.30, 1: 0.31}, "short": {0: 0.60, 1: 0.61}, "mix": {0: 0.30, 1: 0.32}}}
    assert tool.verdict(ab, one_worse).startswith("**Partly disagrees")
    one_better = {"dense": {"dense": {0: 0.60, 1: 0.61}, "short": {0: 0.30, 1: 0.31}, "mix": {0: 0.60, 1: 0.62}}}
    assert tool.verdict(ab, one_better).startswith("**Partly agrees")
    both = {"dense": {"dense": {0: 0.50, 1: 0.51}, "short": {0: 0.30, 1: 0.31}, "mix": {0: 0.70, 1: 0.71}}}
    assert tool.verdict(ab, both).startswith("**Mixed")


def test_in_parallel_runs_jobs_side_by_side_and_stops_the_queue_on_a_failure():
    import threading
    import time

    tool = _tool()
    lock, running, peak, ran = threading.Lock(), [0], [0], []

    def task(i, fail=False):
        def go():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
                ran.append(i)
            if fail:
                raise SystemExit(f"failed ({i})")
        return go

    tool.in_parallel([task(i) for i in range(6)], 2)
    assert sorted(ran) == list(range(6)) and peak[0] == 2
    ran.clear()
    peak[0] = 0
    with pytest.raises(SystemExit, match="failed"):
        tool.in_parallel([task(0, fail=True)] + [task(i) for i in range(1, 8)], 2)
    assert len(ran) < 8  # the queue behind the failure was dropped
    ran.clear()
    tool.in_parallel([task(i) for i in range(3)], 1)
    assert ran == [0, 1, 2]


def test_rewriting_the_doc_keeps_the_hand_written_readings(tmp_path):
    tool = _tool()
    st = tool.Settings([0, 1], tmp_path, tmp_path, tmp_path / "ablations.md", tmp_path / "img", [], 4, 7, 1, 4,
                       False, True)
    doc = tool.write_doc(list(tool.ABLATIONS), st)
    text = doc.read_text()
    assert text.count("<!-- /reading -->") == len(tool.ABLATIONS) + 1 and "Not measured yet." in text
    mine = "The short arm wins here; the world's short captions already name every object."
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("<!-- reading:captions"))
    doc.write_text("\n".join(lines[: at + 1] + [mine] + lines[at + 1:]))
    assert tool.kept_readings(doc)["captions"] == [mine]
    again = tool.write_doc(list(tool.ABLATIONS), st).read_text()
    assert again.count(mine) == 1 and tool.kept_readings(doc) == {"overview": [], "captions": [mine], "resolutions": [], "encoder": []}


def test_collect_keeps_other_suites_off_the_dense_learning_curve(tmp_path):
    """A short-prompt eval names run folders, which eval reports as their newest checkpoint: its score
    must fill the short column only, not the dense curve's last point (it once did)."""
    import json

    tool = _tool()
    ab = tool.ABLATIONS["captions"]
    st = tool.Settings([0], tmp_path, tmp_path, tmp_path / "a.md", tmp_path / "img", [], 4, 7, 1, 4, False, True)

    def write(suite, rows):
        folder = tool.suite_dir(ab, suite, 0, st)
        folder.mkdir(parents=True)
        targets = {label: str(path) for label, path, _ in rows}
        summary = {label: {"reward": r, "attributes": {}} for label, _, r in rows}
        (folder / "results.json").write_text(json.dumps({"settings": {"targets": targets}, "summary": summary,
                                                         "images": []}))

    ck = lambda stem, step: tmp_path / f"{stem}_s0" / "checkpoints" / f"step-{step:07d}.ckpt"  # noqa: E731
    write("dense", [(f"{stem}@{s}", ck(stem, s), v) for stem, vals in
                    (("baseline", (0.2, 0.3)), ("captions_short", (0.1, 0.12)), ("captions_mix", (0.15, 0.25)))
                    for s, v in zip((500, 1000), vals)])
    write("short", [(stem, ck(stem, 1000), v) for stem, v in
                    (("baseline", 0.9), ("captions_short", 0.8), ("captions_mix", 0.7))])
    c = tool.collect(ab, st)
    assert c["curves"]["dense"][0] == {500: 0.2, 1000: 0.3}
    assert c["table"]["dense"]["dense"] == {0: 0.3} and c["table"]["short"]["dense"] == {0: 0.9}
    assert c["table"]["dense_curve"]["short"] == {0: pytest.approx(0.11)}


def test_one_ablation_evaluates_into_its_own_folder_and_the_newest_dense_results_win(tmp_path, capsys):
    """Running one ablation must not overwrite the dense eval of ``all`` (which holds every arm)."""
    import os

    tool = _tool()
    assert tool.main(["captions", "--dry-run", "--seeds", "0", "--work", str(tmp_path)]) == 0
    assert f"--out {tmp_path}/eval/captions/dense_s0 " in capsys.readouterr().out
    assert tool.main(["all", "--dry-run", "--seeds", "0", "--work", str(tmp_path)]) == 0
    assert f"--out {tmp_path}/eval/dense_s0 " in capsys.readouterr().out
    st = tool.Settings([0], tmp_path, tmp_path, tmp_path / "a.md", tmp_path / "img", [], 4, 7, 1, 4, False, True)
    ab = tool.ABLATIONS["captions"]
    assert tool.results_file(ab, "dense", 0, st) is None
    every, own = tmp_path / "eval" / "dense_s0" / "results.json", tmp_path / "eval" / "captions" / "dense_s0" / "results.json"
    for i, p in enumerate((every, own)):
        p.parent.mkdir(parents=True)
        p.write_text("{}")
        os.utime(p, (1000 + i, 1000 + i))
    assert tool.results_file(ab, "dense", 0, st) == own
    os.utime(every, (2000, 2000))
    assert tool.results_file(ab, "dense", 0, st) == every
    assert tool.results_file(tool.ABLATIONS["encoder"], "dense", 0, st) == every
