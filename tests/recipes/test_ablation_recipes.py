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
