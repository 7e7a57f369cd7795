"""The CLI: exit status 2 with one clear message (never a traceback) for every broken recipe."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lensforge.cli import main

BASE = """
name: cli_run
stage: {name: fake_stage}
model:
  dit: {name: fake_dit, in_channels: 12, text_dims: [16]}
  vae: {name: fake_vae, factor: 2}
  text_encoder: {name: fake_text, dim: 16}
data: {source: {name: fake_source}}
trainer: {max_steps: 5}
"""

BROKEN = {
    "invalid_yaml": ("name: [oops\n", "<yaml>: invalid YAML at line"),
    "misspelled_key": ("trainer: {max_step: 3}\n", "trainer.max_step: unknown key (did you mean 'max_steps'?)"),
    "wrong_type": ("optim: {lr: fast}\n", "optim.lr: expected float, got 'fast'"),
    "unknown_plugin": ("model: {vae: {name: fake_vea}}\n", "model.vae.name: unknown vae plugin 'fake_vea' (did you mean 'fake_vae'?)"),
    "unknown_param": ("model: {vae: {factr: 2}}\n", "model.vae.factr: unknown key (did you mean 'factor'?)"),
    "missing_extends": ("extends: [nope.yaml]\n", "extends[0]: file 'nope.yaml' not found"),
    "cycle": ("extends: [cycle.yaml]\n", "extends cycle"),
    "missing_value": ("model:\n  text_encoder:\n    path: ???\n", "model.text_encoder.path: missing required value (???)"),
}


@pytest.fixture
def recipes(tmp_path, fakes):
    (tmp_path / "base.yaml").write_text(BASE)
    out = {}
    for name, (body, _) in BROKEN.items():
        extends = "" if body.startswith("extends") else "extends: [base.yaml]\n"
        p = tmp_path / f"{name}.yaml"
        p.write_text(extends + body)
        out[name] = p
    return out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_recipe_exit_2_names_file_and_key(case, recipes, capsys):
    rc = main(["validate", str(recipes[case])])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert f"{case}.yaml -> " in err
    assert BROKEN[case][1] in err, err


def test_several_problems_listed_at_once(tmp_path, fakes, capsys):
    (tmp_path / "base.yaml").write_text(BASE)
    p = tmp_path / "many.yaml"
    p.write_text("extends: [base.yaml]\ntrainer: {max_step: 3}\noptim: {lr: fast}\nmodel: {vae: {factr: 2}}\n")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "recipe has 3 problems" in err
    assert err.count("many.yaml -> ") == 3


def test_validate_prints_resolved_recipe(tmp_path, fakes, capsys):
    p = tmp_path / "ok.yaml"
    p.write_text(BASE)
    assert main(["validate", str(p), "trainer.max_steps=9"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 9" in out and "output_dir: runs/cli_run" in out and "name: fake_dit" in out


def test_fit_runs_the_stage(tmp_path, fakes, capsys):
    p = tmp_path / "ok.yaml"
    p.write_text(BASE)
    assert main(["fit", str(p), "model.dit.depth=2"]) == 0
    assert "fake stage built dit with 312 parameters" in capsys.readouterr().out


def test_plugins_lists_kinds_and_shows_config(fakes, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "lens_mmdit" in out and "lensforge 0.1.0" in out and "fake_vae" in out
    assert main(["plugins", "vae", "fake_vae"]) == 0
    out = capsys.readouterr().out
    assert "factor" in out and "Pixels per latent token side." in out
    assert main(["plugins", "vea"]) == 2


def test_help_on_every_verb(capsys):
    from lensforge.cli import _available_verbs

    for verb in _available_verbs():
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert "usage: lensforge" in capsys.readouterr().out


def test_real_process_exit_code_and_debug_traceback(recipes, env_with_fakes):
    cmd = [sys.executable, "-m", "lensforge.cli", "validate", str(recipes["wrong_type"])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_fakes, timeout=120)
    assert r.returncode == 2
    assert "optim.lr: expected float" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env_with_fakes, timeout=120)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_validate_reports_missing_dataset_path_unless_portable(tmp_path, fakes, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(BASE.replace("data: {source: {name: fake_source}}", f"data: {{source: {{name: folder, path: {tmp_path / 'nope'}}}}}"))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml -> data.source.path:" in err and "nope" in err and "Traceback" not in err
    assert main(["validate", "--portable", "-q", str(p)]) == 0
    assert main(["fit", str(p)]) == 2
    assert "this machine cannot run" in capsys.readouterr().err


def test_validate_reports_out_of_range_values_all_at_once(capsys):
    """Ranges live in the schema: negative LR / steps / workers / budget, an EMA decay outside [0, 1) …"""
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "pretrain.yaml")
    rc = main(["validate", recipe, "optim.lr=-1", "data.loader.num_workers=-2", "trainer.max_steps=0",
               "data.packing.token_budget=0", "stage.ema_decay=1.5", "checkpoint.keep_last=0", "optim.betas=[0.9,1.0]",
               "data.captions.dropout=1.5", "trainer.gradient_clip_val=-1"])
    err = capsys.readouterr().err
    assert rc == 2
    for key, why in (("optim.lr", "must be > 0, got -1.0"), ("data.loader.num_workers", "must be >= 0, got -2"),
                     ("trainer.max_steps", "must be > 0, got 0"), ("data.packing.token_budget", "must be > 0"),
                     ("stage.ema_decay", "must be >= 0 and < 1, got 1.5"), ("checkpoint.keep_last", "must be > 0"),
                     ("optim.betas[1]", "must be >= 0 and < 1, got 1.0"), ("data.captions.dropout", "<= 1"),
                     ("trainer.gradient_clip_val", "must be > 0")):
        assert f"{key}: {why}" in err or (key in err and why in err), (key, err)
    assert "Traceback" not in err
