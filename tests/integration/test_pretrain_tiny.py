"""The tiny pretrain recipe end to end on CPU: checkpoints, MLflow run, samples, reload, preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lensforge.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    rc = main(["fit", SMOKE, f"output_dir={out}", "trainer.max_steps=4", "sampling.every_n_steps=2"])
    assert rc == 0
    return out


def test_checkpoints_atomic_keep_last(smoke_run):
    ckpts = sorted(p.name for p in (smoke_run / "checkpoints").glob("step-*.ckpt"))
    assert ckpts == ["step-0000002.ckpt", "step-0000004.ckpt"]
    assert (smoke_run / "checkpoints" / "latest").read_text().strip() == "step-0000004.ckpt"
    assert not list((smoke_run / "checkpoints").glob(".*tmp")), "no temporary files left behind"
    ckpt = torch.load(smoke_run / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["recipe"]["name"] == "tiny_smoke"
    sd = ckpt["state_dict"]
    assert any(k.startswith("dit.") for k in sd) and any(k.startswith("ema_dit.") for k in sd)
    assert not any(k.startswith("text_encoder.") for k in sd), "the 22M-parameter MiniLM is not stored"
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["lensforge"]["generator_states"].shape[0] == 1
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"], "the data position is saved"
    # EMA differs from the raw weights after a few steps
    k = next(k for k in sd if k.startswith("dit.") and sd[k].dtype.is_floating_point and sd[k].abs().sum() > 0)
    assert not torch.equal(sd[k], sd["ema_" + k])


def test_summary_and_samples(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["mlflow_run_id"]
    assert (smoke_run / "samples" / "step_0000002.png").is_file()
    assert (smoke_run / "samples" / "step_0000004.png").is_file()
    res = json.loads((smoke_run / "samples" / "step_0000004" / "results.json").read_text())
    assert res["ema"] is True and len(res["samples"]) == 2
    assert all(0.0 <= s["score"]["overall"] <= 1.0 for s in res["samples"])
    assert (smoke_run / "recipe.yaml").is_file() and (smoke_run / "train.log").is_file()


def test_mlflow_run_records(smoke_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smoke_run / 'mlflow.db'}")
    run_id = (smoke_run / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dit.name"] == "lens_mmdit"
    assert run.data.params["trainer.max_steps"] == "4"
    tags = run.data.tags
    assert "lensforge" in tags["plugin.model.dit"] and "git.revision" in tags
    assert tags["lensforge.last_checkpoint"].endswith("step-0000004.ckpt")
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")][-1] >= 3
    assert client.get_metric_history(run_id, "val/verifier_score")
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"recipe.yaml", "checkpoints.json", "samples"} <= arts
    records = json.loads(Path(run.info.artifact_uri.removeprefix("file://"), "checkpoints.json").read_text())
    assert [r["step"] for r in records] == [2, 4]


def test_load_models_and_sample(smoke_run):
    from lensforge.sampling.sampler import generate
    from lensforge.stages.pretrain import load_models_from_checkpoint

    dit, vae, te, cfg = load_models_from_checkpoint(smoke_run)
    raw, *_ = load_models_from_checkpoint(smoke_run / "checkpoints" / "step-0000004.ckpt", ema=False)
    ckpt = torch.load(smoke_run / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=False)
    name, val = next((k, v) for k, v in ckpt["state_dict"].items() if k.startswith("ema_dit."))
    assert torch.equal(dit.state_dict()[name.removeprefix("ema_dit.")], val)
    assert cfg.name == "tiny_smoke"
    imgs = generate(dit, vae, te, ["a red circle"], [(48, 64)], steps=2)
    assert imgs[0].shape == (3, 48, 64) and imgs[0].abs().max() <= 1


def test_preflight_refuses_gpu_recipe_on_cpu(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main(["fit", SMOKE, f"output_dir={tmp_path / 'x'}", "trainer.accelerator=gpu", "trainer.strategy=fsdp2"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a CUDA GPU" in err
    assert not (tmp_path / "x").exists(), "nothing is built or written before the preflight passes"


def test_lens_3b8_refused_on_this_machine(capsys, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("LENS_RUNS", str(tmp_path))
    rc = main(["fit", str(REPO / "recipes" / "lens_3b8.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot run" in err and "needs a CUDA GPU" in err
    assert not (tmp_path / "lens_3b8").exists()
