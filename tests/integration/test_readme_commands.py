"""The README's "After the main job" commands, exactly as written, against a short main-job run.

Runs in a scratch folder holding the repository's ``recipes/`` (so whatever the commands write goes
where it would in a checkout, and the checkout stays clean). ``.venv/bin/lensforge`` becomes this
interpreter's ``lensforge``; recipe commands that train or cache get ``trainer.max_steps`` lowered so
the walk takes seconds instead of the main job's minutes. Every command must exit 0 and everything
written must land under ``runs/``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHORT = ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "sampling.every_n_steps=0", "sampling.num_prompts=2",
         "trainer.progress_bar=false"]


def readme_block(title: str) -> list[str]:
    """The commands of the first ```bash block after the heading ``title`` (continuations joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _lensforge_argv(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    assert argv[0] == ".venv/bin/lensforge", cmd
    argv = [sys.executable, "-m", "lensforge.cli"] + argv[1:]
    if argv[3] in ("fit", "cache"):
        argv += SHORT
    return argv


@pytest.mark.slow
def test_after_the_main_job_commands_run_and_write_only_under_runs(tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(REPO / "recipes", work / "recipes")
    env = dict(os.environ, OMP_NUM_THREADS="1", LENSFORGE_QUIET_XFORMERS="1")
    main_job = [sys.executable, "-m", "lensforge.cli", "fit", "recipes/tiny/pretrain.yaml", *SHORT]
    r = subprocess.run(main_job, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {p.name for p in work.iterdir()}
    commands = readme_block("After the main job")
    assert any(" sample " in c for c in commands) and any(" cache " in c for c in commands)
    for cmd in commands:
        r = subprocess.run(_lensforge_argv(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    new = {p.name for p in work.iterdir()} - before
    assert new == set(), f"the README's commands wrote outside runs/: {sorted(new)}"
    runs = work / "runs"
    for expected in ("samples/grid.png", "exported/tiny/model_index.json", "samples_from_export/grid.png",
                     "cache/manifest.json", "cached/summary.json", "shards", "data_stats"):
        assert (runs / expected).exists(), expected
