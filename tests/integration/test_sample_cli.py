"""``lensforge sample`` and ``lensforge export`` through the CLI, at tiny sizes on CPU.

* a short tiny training run gives a checkpoint; ``lensforge export CKPT OUT`` writes a folder;
  ``lensforge sample`` from the checkpoint and from the folder writes the same PNGs;
* prompts from arguments and a file, seeds, batch size does not change the pictures, grid +
  samples.json, clear errors for bad sizes and missing prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensforge.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "tiny" / "smoke.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Two optimizer steps of the tiny smoke recipe (no tracking)."""
    run = tmp_path_factory.mktemp("run")
    rc = main(["fit", str(SMOKE), f"output_dir={run}", "trainer.max_steps=2", "checkpoint.every_n_steps=2",
               "tracking.enabled=false", "sampling.every_n_steps=0", "sampling.num_prompts=0"])
    assert rc == 0
    ckpts = sorted((run / "checkpoints").glob("step-*.ckpt"))
    assert ckpts, list(run.rglob("*"))
    return ckpts[-1]


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny_export"
    assert main(["export", str(checkpoint), str(out), "--no-progress"]) == 0
    return out


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("0*.png"))}


ARGS = ["a red circle on a flat background", "a blue square", "--height", "48", "--width", "80", "--steps", "2",
        "--guidance-scale", "3.0", "--seeds", "3,4", "--no-progress"]


def test_export_folder_layout(exported):
    index = json.loads((exported / "model_index.json").read_text())
    assert {"scheduler", "transformer", "vae", "text_encoder", "_lensforge"} <= set(index)
    cfg = json.loads((exported / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "LensTransformer2DModel"
    assert (exported / "README.md").is_file()
    assert (exported / "tokenizer").is_dir()


def test_sample_from_checkpoint_equals_sample_from_export(checkpoint, exported, tmp_path):
    a, b = tmp_path / "from_ckpt", tmp_path / "from_export"
    assert main(["sample", str(checkpoint), *ARGS, "--out", str(a)]) == 0
    assert main(["sample", str(exported), *ARGS, "--out", str(b), "--batch-size", "1"]) == 0
    pa, pb = _pngs(a), _pngs(b)
    assert len(pa) == 4 and pa.keys() == pb.keys()
    assert pa == pb, "export -> load -> sample must give the checkpoint's images"
    assert (a / "grid.png").is_file()
    meta = json.loads((a / "samples.json").read_text())
    assert [(m["prompt"], m["seed"]) for m in meta["images"]] == [
        ("a red circle on a flat background", 3), ("a red circle on a flat background", 4), ("a blue square", 3), ("a blue square", 4)]
    from PIL import Image

    assert Image.open(a / meta["images"][0]["file"]).size == (80, 48)


def test_prompts_file_and_seed(exported, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("# comment\n\na green triangle\n")
    out = tmp_path / "s"
    assert main(["sample", str(exported), "--prompts-file", str(pf), "--seed", "7", "--num-images-per-prompt", "2",
                 "--height", "32", "--width", "32", "--steps", "1", "--no-progress", "--out", str(out)]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert [(m["prompt"], m["seed"]) for m in meta["images"]] == [("a green triangle", 7), ("a green triangle", 8)]


@pytest.mark.parametrize("size, msg", [
    (("48", "112"), "aspect ratio must be between 1:2 and 2:1"),
    (("40", "48"), "multiples of 16"),
])
def test_bad_sizes_are_clear_errors(exported, tmp_path, capsys, size, msg):
    rc = main(["sample", str(exported), "x", "--height", size[0], "--width", size[1], "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err


def test_no_prompts_is_a_clear_error(exported, tmp_path, capsys):
    assert main(["sample", str(exported), "--out", str(tmp_path)]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_shape_probe_tool(checkpoint, exported, tmp_path, capsys):
    """tools/shape_probe.py reads a checkpoint or an export and prints finite spreads for both words."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("shape_probe", REPO / "tools" / "shape_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    for src in (checkpoint, exported):
        assert probe.main([str(src), "--draws", "1"]) == 0
        lines = [l for l in capsys.readouterr().out.splitlines() if "ratio" in l]
        assert len(lines) == 6 and sum("shape" in l for l in lines) == 3
        assert all(float(re.search(r"ratio ([0-9.]+)", l).group(1)) >= 0 for l in lines)
    assert probe.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_run_tool(checkpoint, exported, tmp_path, capsys):
    """tools/eval_run.py scores held-out prompts of the run's world and writes images + results.json."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("eval_run", REPO / "tools" / "eval_run.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "eval"
    assert tool.main([str(checkpoint), "--prompts", "3", "--steps", "2", "--size", "32x48", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    means = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([0-9.]+)(?=\s|$)", text.splitlines()[1]))
    assert {"color", "shape", "size", "position", "overall"} <= set(means)
    assert all(0.0 <= v <= 1.0 for v in means.values())
    assert "shape confusion" in text and "32x48" in text
    results = json.loads((out / "results.json").read_text())
    assert len(results["samples"]) == 3 and sorted(p.name for p in out.glob("0*.png")) == ["00.png", "01.png", "02.png"]
    # an export carries no training recipe: a clear error, as is a missing path
    assert tool.main([str(exported)]) == 2
    assert "no training recipe" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
