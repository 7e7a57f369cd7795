"""`lensforge eval`: suites, several targets side by side on the same prompts and seeds, outputs, MLflow, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lensforge.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")
QUICK = ["--num-prompts", "3", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    for name, steps in (("a", 2), ("b", 4)):
        assert main(["fit", SMOKE, f"output_dir={root / name}", f"trainer.max_steps={steps}", "sampling.every_n_steps=0",
                     "sampling.num_prompts=0", "trainer.progress_bar=false"]) == 0
    return root


def test_two_runs_side_by_side_on_the_same_prompts(runs, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(runs / "a"), str(runs / "b"), "--suite", "validation", "--out", str(out), *QUICK]) == 0
    text = capsys.readouterr().out
    header = next(ln for ln in text.splitlines() if ln.startswith("| |"))
    assert "| a |" in header.replace(" | ", " |  | ") or " a " in header
    for col in ("a", "b", "untrained (baseline)", "blank (baseline)", "uniform noise (baseline)"):
        assert col in header
    res = json.loads((out / "results.json").read_text())
    by = {}
    for rec in res["images"]:
        by.setdefault(rec["target"], []).append((rec["prompt"], rec["seed"], tuple(rec["size"])))
    assert by["a"] == by["b"] == by["untrained"] and len(by["a"]) == 3
    assert all(0.0 <= rec["reward"] <= 1.0 for rec in res["images"] if rec["reward"] is not None)
    assert set(res["summary"]) == {"a", "b", "untrained", "blank", "uniform noise"}
    for f in ("summary.md", "categories.png", "grid_a.png", "grid_b.png", "images/a/0000.png"):
        assert (out / f).is_file(), f
    # logged to each run's own MLflow run
    from mlflow.tracking import MlflowClient

    for name in ("a", "b"):
        client = MlflowClient(f"sqlite:///{runs / name / 'mlflow.db'}")
        run_id = (runs / name / "mlflow_run_id").read_text().strip()
        assert client.get_metric_history(run_id, "eval/validation/reward")
        assert "eval" in {a.path for a in client.list_artifacts(run_id)}


def test_geneval_and_ar_sweep_suites(runs, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["eval", str(runs / "b"), "--suite", "geneval_synth", "--out", str(out), "--num-prompts", "6",
                 "--steps", "2", "--no-progress", "--no-baseline", "--no-images"]) == 0
    text = capsys.readouterr().out
    assert "GenEval overall (strict)" in text
    summary = json.loads((out / "results.json").read_text())["summary"]["b"]
    assert set(summary["geneval"]["tags"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    out = tmp_path / "ar"
    assert main(["eval", str(runs / "b"), "--suite", "ar_sweep", "--out", str(out), "--num-prompts", "1",
                 "--steps", "1", "--no-progress", "--no-baseline", "--no-images"]) == 0
    text = capsys.readouterr().out
    assert "reward on unseen sizes" in text and "(64x64*)" in text and "1:2" in text and "2:1" in text
    assert (out / "ar_heatmap_b.png").is_file()
    s = json.loads((out / "results.json").read_text())["summary"]["b"]
    assert "64x64" in s["sizes"] and s["trained_sizes_reward"] is not None and s["unseen_sizes_reward"] is not None


def test_prompt_set_file_and_exported_folder(runs, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    assert main(["data", "prompts", "synthetic:8", str(prompts), "--seed", "3"]) == 0
    capsys.readouterr()
    exported = tmp_path / "exp"
    assert main(["export", str(runs / "b"), str(exported), "--no-progress"]) == 0
    capsys.readouterr()
    # an exported folder carries no recipe: it needs a suite
    assert main(["eval", str(exported), *QUICK]) == 2
    assert "choose --suite" in capsys.readouterr().err
    out = tmp_path / "ps"
    assert main(["eval", str(exported), "--suite", str(prompts), "--out", str(out), "--size", "64x64",
                 "--no-baseline", *QUICK]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["images"]) == 3 and all(rec["items"] for rec in res["images"])
    assert (out / "mlflow.db").is_file(), "targets without a run of their own log to a new eval run"
    # without --steps / --cfg each target samples as it is meant to: the run by its recipe's sampling (2 steps, the
    # recipe's CFG), a folder by its recorded inference defaults (here as a Turbo export records them: 1 step, CFG 1)
    record = json.loads((exported / "lensforge.json").read_text())
    record["inference"] = {"steps": 1, "guidance_scale": 1.0, "variant": "turbo"}
    (exported / "lensforge.json").write_text(json.dumps(record))
    out = tmp_path / "own"
    assert main(["eval", str(runs / "b"), str(exported), "--suite", str(prompts), "--out", str(out), "--size", "64x64",
                 "--num-prompts", "2", "--no-baseline", "--no-images", "--no-mlflow", "--no-progress"]) == 0
    text = capsys.readouterr().out
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["sampling"] == {"b": {"steps": 2, "guidance_scale": 4.0}, "exp": {"steps": 1, "guidance_scale": 1.0}}
    assert settings["steps"] is None and "| sampling | 2 steps, CFG 4 | 1 step" in text.replace("1 steps", "1 step")


def test_bad_input_exits_2_with_one_clear_message(runs, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "a", "category": "c", "rubric": []}\nnot json\n')
    assert main(["eval", str(runs / "b"), "--suite", str(bad), *QUICK]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and f"{bad}:2:" in err and "Traceback" not in err
    assert main(["eval", str(runs / "b"), "--suite", "geneval_real", *QUICK]) == 2
    assert "unknown suite 'geneval_real'" in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["eval", str(empty), *QUICK]) == 2
    assert "no checkpoints" in capsys.readouterr().err or "model_index.json" in capsys.readouterr().err
    assert main(["eval", str(runs / "b"), "--reward", "no_such_reward", *QUICK]) == 2
    assert "unknown reward plugin 'no_such_reward'" in capsys.readouterr().err
    # rows the verifier cannot score (no checks, no scene) are refused before generating anything
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"id": "q", "prompt": "a cat", "category": "animals", "rubric": [{"id": "r1", "question": "Is there a cat?", "weight": 1}]}\n')
    assert main(["eval", str(runs / "b"), "--suite", str(plain), *QUICK]) == 2
    assert "cannot score" in capsys.readouterr().err
