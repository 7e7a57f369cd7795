"""A new stage written from lensforge/stages/README.md alone, registered by entry point, trained by `lensforge fit`.

The stage's code is the README's ``ema_regress.py`` block, put in a temporary package whose
distribution metadata (a ``.dist-info`` folder with ``entry_points.txt``) declares it in the
``lensforge.stage`` group — the registry finds it exactly as it finds a pip-installed third party.
It trains 3 steps with checkpoints and MLflow, then resumes to step 5 in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_example(name: str) -> str:
    text = (REPO / "lensforge" / "stages" / "README.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S))
    return blocks[name]


def _package(root: Path) -> dict[str, str]:
    pkg = root / "toy_stage_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ema_regress.py").write_text(readme_example("ema_regress.py"))
    info = root / "toy_stage_pkg-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-stage-pkg\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[lensforge.stage]\nema_regress = toy_stage_pkg.ema_regress:EmaRegressStage\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                OMP_NUM_THREADS="1")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lensforge.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)


def test_readme_stage_trains_checkpoints_resumes_and_tracks(tmp_path):
    code = readme_example("ema_regress.py")
    for trunk_hook in ("configure_optimizers", "on_save_checkpoint", "on_load_checkpoint", "def run", "Trainer("):
        assert trunk_hook not in code, f"the README's stage should not need {trunk_hook}"
    env = _package(tmp_path / "site")
    r = _cli(["plugins", "stage"], env)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "ema_regress" in ln)
    assert "toy-stage-pkg 0.3.0" in line

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        extends: [{REPO / 'recipes' / 'tiny' / 'smoke.yaml'}]
        name: toy_stage
        stage: {{name: ema_regress, weight: 0.5, ema_decay: 0.9}}
        output_dir: {tmp_path / 'run'}
    """))
    r = _cli(["validate", str(recipe), "-q"], env)
    assert r.returncode == 0, r.stderr
    r = _cli(["validate", str(recipe), "stage.weight=-1"], env)
    assert r.returncode == 2 and "stage.weight: must be >= 0" in r.stderr

    r = _cli(["fit", str(recipe), "trainer.max_steps=3"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.ckpt")) == ["step-0000002.ckpt", "step-0000003.ckpt"]
    run_id = (run / "mlflow_run_id").read_text().strip()

    r = _cli(["fit", str(recipe), "trainer.max_steps=5"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr and "step-0000003.ckpt" in r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 5 and summary["stage"] == "ema_regress"
    assert (run / "mlflow_run_id").read_text().strip() == run_id, "the resumed run continues the same MLflow run"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/pull")})
    assert steps[-1] == 4 and 0 in steps
    assert client.get_run(run_id).data.tags["lensforge.stage"] == "ema_regress"
    import torch

    ckpt = torch.load(run / "checkpoints" / "step-0000005.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("ema_dit.") for k in ckpt["state_dict"]) and ckpt["hyper_parameters"]["stage"]["weight"] == 0.5
