"""A 2-process CPU (gloo) DDP run of the tiny recipe trains, checkpoints and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")


@pytest.mark.distributed
def test_two_process_ddp_cpu_fit_and_resume(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Lightning's DDP launcher re-runs this command line once more for local rank 1
    cmd = [sys.executable, "-m", "lensforge.cli", "fit", SMOKE, f"output_dir={out}", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "sampling.num_prompts=1"]
    res = subprocess.run(cmd + ["trainer.max_steps=2"], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "strategy: ddp" in res.stderr
    # a second run continues from step 2 on both ranks (noise generator and data position per rank)
    res = subprocess.run(cmd + ["trainer.max_steps=4"], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resuming from" in res.stderr
    ckpt = torch.load(out / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    states = ckpt["lensforge"]["generator_states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1]), "one noise stream per rank, both saved"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["mlflow_run_id"]
    assert len(list((out / "checkpoints").glob("step-*.ckpt"))) == 2
