"""`lensforge fit recipes/tiny/lens.yaml`: pre-training → RL → distillation as one pipeline (cut down with
overrides), one parent MLflow run with a nested run per stage, finished stages skipped on re-run, every stage
validated before the first starts, bad pipelines refused; (slow) killed during RL and re-run = uninterrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lensforge.cli import main

from _procs import kill9_when

REPO = Path(__file__).resolve().parents[2]
LENS = str(REPO / "recipes" / "tiny" / "lens.yaml")

#: lens.yaml cut down to seconds per stage: to every stage, then to one stage (`<id>.key=value`)
SHORT = [
    "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=2",
    "data.source.num_samples=64", "data.packing.token_budget=256", "data.packing.max_samples=4",
    "sampling.num_prompts=2", "sampling.every_n_steps=0", "stage.memo_features=0",
    "pretrain.sampling.steps=2", "rl.sampling.steps=2", "rl.stage.prompts=synthetic:40", "rl.stage.prompts_per_step=2",
    "rl.stage.group_size=2", "rl.stage.rollout_steps=3", "rl.stage.micro_batch=8", "rl.stage.val_prompts=2",
    "rl.stage.train_timesteps=2",
    "distill.stage.critic_updates_per_student=1",
]


def test_lens_pipeline_runs_three_stages_nests_mlflow_runs_and_skips_finished_stages(tmp_path):
    out = tmp_path / "lens"
    assert main(["fit", LENS, f"output_dir={out}", *SHORT]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["id"] for s in summary["stages"]] == ["pretrain", "rl", "distill"]
    assert summary["final_checkpoint"] == str(out / "distill" / "checkpoints" / "step-0000002.ckpt")
    recipes = {sid: json.loads(json.dumps(__import__("yaml").safe_load((out / sid / "recipe.yaml").read_text())))
               for sid in ("pretrain", "rl", "distill")}
    assert recipes["pretrain"]["init_from"] is None
    assert recipes["rl"]["init_from"] == str(out / "pretrain") and recipes["distill"]["init_from"] == str(out / "rl")
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert all(state[s]["status"] == "finished" for s in ("pretrain", "rl", "distill"))
    assert state["distill"]["init_checkpoint"] == str(out / "rl" / "checkpoints" / "step-0000002.ckpt")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent = (out / "mlflow_run_id").read_text().strip()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = {r.data.tags.get("lensforge.pipeline_stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert set(children) == {"pretrain", "rl", "distill"} and all(r.info.status == "FINISHED" for r in children.values())
    assert "distill/dm_loss" in children["distill"].data.metrics and "train/reward" in children["rl"].data.metrics
    assert {"pretrain/global_step", "rl/global_step", "distill/global_step"} <= set(client.get_run(parent).data.metrics)
    # re-running skips every finished stage (nothing is trained or rewritten)
    stamps = {sid: (out / sid / "summary.json").stat().st_mtime_ns for sid in ("pretrain", "rl", "distill")}
    assert main(["fit", LENS, f"output_dir={out}", *SHORT]) == 0
    assert stamps == {sid: (out / sid / "summary.json").stat().st_mtime_ns for sid in ("pretrain", "rl", "distill")}
    # a finished stage whose input changed since is refused, not silently kept
    assert main(["fit", LENS, f"output_dir={out}", *SHORT, "pretrain.trainer.max_steps=4"]) == 2


def test_validate_checks_every_stage_before_the_first_starts(tmp_path, capsys):
    assert main(["validate", LENS, "-q"]) == 0
    assert "pretrain -> rl -> distill" in capsys.readouterr().out
    # problems of several stages at once, each against its stage; nothing is run
    out = tmp_path / "never"
    assert main(["fit", LENS, f"output_dir={out}", "rl.stage.group_size=1", "distill.sampling.steps=20"]) == 2
    err = capsys.readouterr().err
    assert "stage.group_size: group-relative advantages need at least 2 images per prompt [stage rl]" in err
    assert "sampling.steps: the student samples in stage.student_steps = 4 steps" in err and "[stage distill]" in err
    assert not (out / "pretrain").exists(), "a broken later stage stops the pipeline before the first stage"


def test_a_pipeline_stage_naming_a_missing_recipe_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\npipeline:\n  - recipe: {REPO / 'recipes' / 'tiny' / 'pretrain.yaml'}\n"
                   "  - recipe: no_such_stage.yaml\n  - {id: twice, recipe: " + str(REPO / "recipes/tiny/rl.yaml") + "}\n"
                   "  - {id: twice, recipe: " + str(REPO / "recipes/tiny/distill.yaml") + "}\n")
    assert main(["fit", str(bad), f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "pipeline[1].recipe: recipe 'no_such_stage.yaml' not found" in err
    assert "two stages are called 'twice'" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: e\npipeline: []\n")
    assert main(["validate", str(empty)]) == 2
    assert "pipeline: must be a non-empty list" in capsys.readouterr().err


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "lensforge.cli", "fit", LENS, f"output_dir={out}", *SHORT, "trainer.max_steps=4",
            "trainer.deterministic=true", "rl.stage.val_prompts=0", "tracking.enabled=false"]


@pytest.mark.slow
def test_pipeline_killed_during_rl_and_rerun_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    ref = tmp_path / "uninterrupted"
    subprocess.run(_cmd(ref), env=env, check=True, capture_output=True, timeout=1800)
    run = tmp_path / "crashed"
    first_rl = run / "rl" / "checkpoints" / "step-0000002.ckpt"
    kill9_when(_cmd(run), first_rl, env=env, timeout=1800)  # during RL: its first checkpoint is written
    assert not (run / "rl" / "summary.json").exists() and not (run / "distill").exists(), "killed during RL"
    res = subprocess.run(_cmd(run), env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage pretrain finished earlier" in res.stderr and "resuming from" in res.stderr
    for sid in ("pretrain", "rl", "distill"):
        a = torch.load(ref / sid / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(run / sid / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{sid}: {k} differs after the crash and re-run"
