"""``kill -9`` mid-run, re-run the same command: it resumes, and the final weights equal an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from _procs import kill9_when

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")
STEPS = 10


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "lensforge.cli", "fit", SMOKE, f"output_dir={out}", f"trainer.max_steps={STEPS}",
            "trainer.deterministic=true", "checkpoint.every_n_steps=2", "checkpoint.keep_last=2",
            "sampling.num_prompts=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / "checkpoints" / f"step-{STEPS:07d}.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("dit.", "ema_dit."))}


def test_kill9_then_rerun_resumes_exactly(tmp_path):
    ref = tmp_path / "uninterrupted"
    subprocess.run(_cmd(ref), env=_env(), check=True, capture_output=True, timeout=600)

    run = tmp_path / "crashed"
    first_ckpt = run / "checkpoints" / "step-0000002.ckpt"
    assert kill9_when(_cmd(run), first_ckpt, env=_env(), timeout=600) == -signal.SIGKILL
    assert not (run / "checkpoints" / f"step-{STEPS:07d}.ckpt").exists(), "killed before the end"
    run_id = (run / "mlflow_run_id").read_text().strip()

    res = subprocess.run(_cmd(run), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stderr
    assert (run / "mlflow_run_id").read_text().strip() == run_id, "the resumed run continues the same MLflow run"

    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys() and any(k.startswith("ema_dit.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
