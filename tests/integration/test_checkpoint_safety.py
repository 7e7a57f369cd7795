"""Checkpoints from someone else: a pickle payload never runs; messages name the run's own files."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from lensforge.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")


class _Payload:
    """Pickles as ``pathlib.Path.touch(path)``: loading it with ``weights_only=False`` creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["fit", SMOKE, f"output_dir={out}", "trainer.max_steps=2", "sampling.every_n_steps=0",
                 "sampling.num_prompts=0", "trainer.progress_bar=false"]) == 0
    return out


@pytest.fixture
def evil(run_dir, tmp_path):
    """A real checkpoint with one extra entry whose unpickling would create ``marker``."""
    ckpt = torch.load(run_dir / "checkpoints" / "step-0000002.ckpt", map_location="cpu", weights_only=True)
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt["lensforge"]["note"] = _Payload(marker)
    path = tmp_path / "step-0000002.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_sample_export_and_init_from_refuse_a_pickle_payload(evil, tmp_path, capsys):
    path, marker = evil
    assert main(["sample", str(path), "a red circle", "--out", str(tmp_path / "s"), "--steps", "1"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert main(["export", str(path), str(tmp_path / "exp")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    rc = main(["fit", SMOKE, f"output_dir={tmp_path / 'init'}", f"init_from={path}", "trainer.max_steps=1",
               "trainer.progress_bar=false"])
    assert rc == 2 and "refusing to load" in capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's pickle payload ran"


def test_resume_refuses_a_pickle_payload(evil, run_dir, tmp_path, capsys):
    path, marker = evil
    rc = main(["fit", SMOKE, f"output_dir={tmp_path / 'resumed'}", f"resume={path}", "trainer.max_steps=3",
               "trainer.progress_bar=false", "tracking.enabled=false"])
    assert rc == 2 and "refusing to resume" in capsys.readouterr().err
    assert not marker.exists()


def test_a_normal_checkpoint_loads_and_samples(run_dir, tmp_path):
    assert main(["sample", str(run_dir), "a red circle", "--out", str(tmp_path / "ok"), "--steps", "1",
                 "--height", "32", "--width", "32"]) == 0
    assert (tmp_path / "ok" / "grid.png").is_file()


def test_missing_plugin_names_the_runs_own_recipe(run_dir, tmp_path, capsys):
    """A checkpoint whose recipe names a plugin that is not installed (any more): the error points at the
    run's recipe.yaml, not at a temporary file."""
    import shutil

    run = tmp_path / "run_copy"
    shutil.copytree(run_dir, run)
    ck = run / "checkpoints" / "step-0000002.ckpt"
    ckpt = torch.load(ck, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["recipe"]["model"]["vae"]["name"] = "uninstalled_vae"
    ckpt["hyper_parameters"]["recipe"]["output_dir"] = str(run)
    torch.save(ckpt, ck)
    assert main(["sample", str(run), "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "uninstalled_vae" in err and str(run / "recipe.yaml") in err
    assert "/tmp" not in err.replace(str(tmp_path), "<tmp>"), err
