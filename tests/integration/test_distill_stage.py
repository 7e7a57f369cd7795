"""The `distill` stage end to end on CPU: roles in checkpoints, MLflow terms, exact resume, the Turbo export
(sampling the folder == sampling the checkpoint, byte for byte, at 4 steps without CFG) and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lensforge.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")
DISTILL_SMOKE = str(REPO / "recipes" / "tiny" / "distill_smoke.yaml")
QUIET = ["tracking.enabled=false", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill_teacher") / "pre"
    assert main(["fit", SMOKE, f"output_dir={out}", "trainer.max_steps=2", "sampling.num_prompts=0",
                 "tracking.enabled=false"]) == 0
    return out


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill_run") / "d"
    assert main(["fit", DISTILL_SMOKE, f"init_from={teacher}", f"output_dir={out}", "trainer.max_steps=4"]) == 0
    return out


def test_distill_run_saves_student_critic_and_head_logs_every_term(distilled):
    ckpt = torch.load(distilled / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"]}
    assert {"dit", "ema_dit", "critic", "disc_head"} <= prefixes
    assert "teacher" not in prefixes, "the frozen teacher is rebuilt from init_from, never saved"
    assert ckpt["lensforge"]["distill"] == {"critic": 2, "student": 2}
    summary = json.loads((distilled / "summary.json").read_text())
    assert summary["stage"] == "distill" and summary["distill"]["student_sampling_steps"] == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{distilled / 'mlflow.db'}")
    run_id = (distilled / "mlflow_run_id").read_text().strip()
    keys = set(client.get_run(run_id).data.metrics)
    assert {"distill/dm_loss", "distill/ca_loss", "distill/gan_gen_loss", "distill/critic_fm_loss", "distill/disc_loss",
            "distill/r1", "distill/grad_norm_student", "distill/grad_norm_critic", "val/verifier_score"} <= keys
    arts = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert "samples/step_0000004.png" in arts, "the 4-step student's grid"
    results = json.loads((distilled / "samples" / "step_0000004" / "results.json").read_text())
    assert results["steps"] == 4 and results["guidance_scale"] == 1.0


def test_turbo_export_samples_at_4_steps_without_cfg_exactly_as_the_checkpoint(distilled, tmp_path):
    folder = tmp_path / "tiny_turbo"
    assert main(["export", str(distilled), str(folder), "--no-progress"]) == 0
    record = json.loads((folder / "lensforge.json").read_text())
    assert record["inference"] == {"steps": 4, "guidance_scale": 1.0, "variant": "turbo"}
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["use_dynamic_shifting"] is True and sched["time_shift_type"] == "exponential"
    assert "--steps 4 --guidance-scale 1" in (folder / "README.md").read_text()
    prompts = ["a huge red circle in the centre on a plain cream background.", "a huge blue square"]
    outs = {}
    for name, src in (("folder", folder), ("ckpt", distilled)):
        outs[name] = tmp_path / f"samples_{name}"
        assert main(["sample", str(src), *prompts, "--out", str(outs[name]), "--height", "64", "--width", "96",
                     "--no-progress"]) == 0
    a = json.loads((outs["folder"] / "samples.json").read_text())
    b = json.loads((outs["ckpt"] / "samples.json").read_text())
    assert (a["steps"], a["guidance_scale"]) == (b["steps"], b["guidance_scale"]) == (4, 1.0)
    files = sorted(p.name for p in outs["folder"].glob("0*.png"))
    assert len(files) == 2
    for f in files:
        assert (outs["folder"] / f).read_bytes() == (outs["ckpt"] / f).read_bytes(), f


def test_resumed_distillation_equals_an_uninterrupted_one(teacher, tmp_path):
    common = ["fit", DISTILL_SMOKE, f"init_from={teacher}", *QUIET]
    ref = tmp_path / "ref"
    assert main([*common, f"output_dir={ref}", "trainer.max_steps=4"]) == 0
    run = tmp_path / "two_parts"
    assert main([*common, f"output_dir={run}", "trainer.max_steps=2"]) == 0
    assert main([*common, f"output_dir={run}", "trainer.max_steps=4"]) == 0  # resumes from step 2
    a = torch.load(ref / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_bad_input_exits_2(teacher, tmp_path, capsys):
    base = ["fit", DISTILL_SMOKE, f"init_from={teacher}", *QUIET]
    # a teacher whose architecture differs from the student's (its run's recipe says so: caught before building)
    assert main([*base, f"output_dir={tmp_path / 'a'}", "model.dit.num_layers=2"]) == 2
    err = capsys.readouterr().err
    assert "init_from: the teacher" in err and "num_layers=4" in err and "model.dit must be the teacher's architecture" in err
    # … the same checkpoint out of its run folder (no recipe next to it): caught when its weights load
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(teacher / "checkpoints" / "step-0000002.ckpt", alone / "teacher.ckpt")
    assert main(["fit", DISTILL_SMOKE, f"init_from={alone / 'teacher.ckpt'}", *QUIET, f"output_dir={tmp_path / 'b'}",
                 "model.dit.num_heads=2", "model.dit.axes_dims_rope=[4,14,14]"]) == 2
    err = capsys.readouterr().err
    assert "is not the architecture of the 'teacher' role's DiT" in err and "model.dit must describe the teacher's DiT" in err
    # a different DiT named for the teacher role
    assert main(["validate", DISTILL_SMOKE, "model.roles.teacher.dit={name: lens_mmdit, flavor: tiny, num_layers: 2}"]) == 2
    assert "model.roles.teacher.dit: the teacher's DiT (lens_mmdit) differs from the student's" in capsys.readouterr().err
    # a student step count the Lens scheduler cannot give, and sampling that is not the student's
    for steps in ("0", "1001"):
        assert main(["validate", DISTILL_SMOKE, f"stage.student_steps={steps}", f"sampling.steps={steps}"]) == 2
        assert "stage.student_steps" in capsys.readouterr().err
    assert main(["validate", DISTILL_SMOKE, "sampling.steps=20", "sampling.guidance_scale=4"]) == 2
    err = capsys.readouterr().err
    assert "sampling.steps: the student samples in stage.student_steps = 4 steps" in err
    assert "sampling.guidance_scale: the distilled student is CFG-free" in err
    # no teacher at all
    assert main(["validate", DISTILL_SMOKE, "init_from=null"]) == 2
    assert "needs weights for its 'teacher' role" in capsys.readouterr().err
