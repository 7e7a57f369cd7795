"""Recipes: extends, overrides, plugin-node replacement, and every kind of broken recipe."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lensforge.errors import RecipeError
from lensforge.recipe import load_recipe

BASE = """
name: base_run
stage: {name: fake_stage}
model:
  dit: {name: fake_dit, in_channels: 12, text_dims: [16]}
  vae: {name: fake_vae, factor: 2}
  text_encoder: {name: fake_text, dim: 16}
data: {source: {name: fake_source}}
trainer: {max_steps: 5}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def base(tmp_path, fakes):
    write(tmp_path, "_base/base.yaml", BASE)
    return tmp_path


def problems_of(path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    return [str(p) for p in e.value.problems]


def test_extends_merge_order_and_overrides(base):
    write(base, "_base/more.yaml", "trainer: {max_steps: 7, log_every_n_steps: 3}\noptim: {lr: 0.5}\n")
    p = write(base, "r.yaml", "extends: [_base/base.yaml, _base/more.yaml]\noptim: {lr: 0.25}\n")
    r = load_recipe(p, ["trainer.max_steps=11"])
    c = r.config
    assert c.trainer.max_steps == 11  # CLI wins
    assert c.trainer.log_every_n_steps == 3  # second extends layer
    assert c.optim.lr == 0.25  # the file beats its extends
    assert c.model.dit.config.in_channels == 12
    assert c.output_dir == "runs/base_run"  # interpolation resolved
    assert [Path(f).name for f in r.files] == ["r.yaml", "base.yaml", "more.yaml"]


def test_plugin_node_replaced_not_merged_when_name_changes(base, tmp_path):
    # fake_text has 'dim'; switching to another text encoder must not inherit dim
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\nmodel: {vae: {factor: 4}, dit: {in_channels: 48}}\n")
    r = load_recipe(p)
    assert r.config.model.vae.config.factor == 4  # same name: deep merge
    assert r.config.model.dit.config.text_dims == [16]  # kept from the base node
    r2 = load_recipe(p, ["model.text_encoder.name=_fakes:FakeText"])
    assert r2.config.model.text_encoder.name == "_fakes:FakeText"
    assert r2.config.model.text_encoder.config.dim == 16  # default, replaced node
    p3 = write(base, "r3.yaml", "extends: [_base/base.yaml]\nmodel:\n  dit: {name: _fakes:FakeDiT, depth: 2}\n")
    with pytest.raises(RecipeError, match="gives 12 channels per token but DiT '_fakes:FakeDiT' expects 8"):
        load_recipe(p3)  # in_channels was NOT inherited from the replaced fake_dit node
    r3 = load_recipe(p3, ["model.vae.name=_fakes:FakeVAE", "model.vae.factor=1", "model.dit.in_channels=3"])
    assert r3.config.model.dit.config.depth == 2
    assert r3.config.model.vae.config.factor == 1


def test_invalid_yaml(base):
    p = write(base, "bad.yaml", "extends: [_base/base.yaml]\nname: [unclosed\nseed: 1\n")
    msgs = problems_of(p)
    assert any("bad.yaml -> <yaml>: invalid YAML at line" in m for m in msgs), msgs
    assert not any("missing required value" in m for m in msgs), msgs  # no noise from the unreadable layer


def test_misspelled_key_with_suggestion(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\ntrainer: {max_step: 3}\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> trainer.max_step: unknown key (did you mean 'max_steps'?)" in msg


def test_wrong_type(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\noptim: {lr: fast}\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> optim.lr: expected float, got 'fast'" in msg


def test_unknown_plugin_name_with_suggestion(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\nmodel: {vae: {name: fake_vea}}\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> model.vae.name: unknown vae plugin 'fake_vea' (did you mean 'fake_vae'?)" in msg


def test_unknown_plugin_parameter(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\nmodel: {vae: {factr: 4}}\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> model.vae.factr: unknown key (did you mean 'factor'?)" in msg


def test_plugin_parameter_wrong_type_reported_in_base_file(base):
    write(base, "_base/bad_base.yaml", BASE.replace("factor: 2", "factor: two"))
    p = write(base, "r.yaml", "extends: [_base/bad_base.yaml]\n")
    (msg,) = problems_of(p)
    assert msg.startswith(str(Path("_base/bad_base.yaml"))) or "bad_base.yaml -> model.vae.factor" in msg
    assert "model.vae.factor: expected int, got 'two'" in msg


def test_missing_extends_file(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml, _base/nope.yaml]\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> extends[1]: file '_base/nope.yaml' not found" in msg


def test_extends_cycle(base):
    write(base, "a.yaml", "extends: [b.yaml]\n")
    write(base, "b.yaml", "extends: [a.yaml]\n")
    msgs = problems_of(base / "a.yaml")
    assert any("extends cycle: " in m and "a.yaml -> " in m and "b.yaml" in m for m in msgs), msgs


def test_missing_required_value(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\nmodel:\n  text_encoder: {name: fake_text, path: '???'}\n")
    (msg,) = problems_of(p)
    assert "r.yaml -> model.text_encoder.path: missing required value (???)" in msg
    # a required schema field that is absent altogether
    p2 = write(base, "r2.yaml", "stage: {name: fake_stage}\ndata: {source: {name: fake_source}}\n")
    msgs = problems_of(p2)
    assert any("r2.yaml -> model.dit: missing required value" in m for m in msgs), msgs


def test_plugin_check_config_runs_at_validate_time(base, tmp_path):
    p = write(base, "r.yaml", f"extends: [_base/base.yaml]\nmodel: {{text_encoder: {{path: {tmp_path / 'missing'}}}}}\n")
    (msg,) = problems_of(p)
    assert "model.text_encoder.path: folder" in msg and "does not exist" in msg


def test_cross_field_check(base):
    p = write(base, "r.yaml", "extends: [_base/base.yaml]\nmodel: {vae: {factor: 4}}\n")  # 48 channels vs dit 12
    (msg,) = problems_of(p)
    assert "model.vae: VAE 'fake_vae' gives 48 channels per token but DiT 'fake_dit' expects 12" in msg


def test_several_problems_all_listed(base):
    p = write(base, "r.yaml", """
        extends: [_base/base.yaml]
        trainer: {max_step: 3, precision: 16}
        optim: {lr: fast}
        model:
          vae: {name: fake_vea}
          dit: {depht: 2}
          text_encoder:
            path: ???
        """)
    msgs = problems_of(p)
    joined = "\n".join(msgs)
    for needle in ["trainer.max_step", "trainer.precision", "optim.lr", "model.vae.name", "model.dit.depht",
                   "model.text_encoder.path"]:
        assert needle in joined, (needle, joined)
    assert len(msgs) == 6


def test_bad_override(base):
    msgs = problems_of(base / "_base/base.yaml", ["trainer.max_steps"])
    assert any("<command line> -> trainer.max_steps: override must look like key=value" in m for m in msgs)
    msgs = problems_of(base / "_base/base.yaml", ["trainer.max_stepz=3"])
    assert any("<command line> -> trainer.max_stepz: unknown key (did you mean 'max_steps'?)" in m for m in msgs)


def test_missing_recipe_file(tmp_path):
    msgs = problems_of(tmp_path / "nope.yaml")
    assert msgs == [f"{tmp_path / 'nope.yaml'} -> <root>: recipe file not found"]
