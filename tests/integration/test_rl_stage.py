"""The `rl` stage end to end on CPU: packed rollouts, a reward that prefers one colour, GRPO, held-out
prompts, exact resume after kill -9, bad input."""

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
SMOKE = str(REPO / "recipes" / "tiny" / "smoke.yaml")
RL_SMOKE = str(REPO / "recipes" / "tiny" / "rl_smoke.yaml")


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_init") / "pre"
    assert main(["fit", SMOKE, f"output_dir={out}", "trainer.max_steps=2", "sampling.every_n_steps=0",
                 "sampling.num_prompts=0", "tracking.enabled=false"]) == 0
    return out


def _tiny_dit():
    from lensforge import registry

    cls = registry.get("dit", "lens_mmdit")
    torch.manual_seed(0)
    return cls(cls.Config(flavor="tiny", attention="sdpa_loop", zero_init=False, in_channels=8, text_dims=(6,))).eval()


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_rollouts_of_three_aspect_ratios_packed_equal_one_by_one(kind):
    from lensforge.interfaces import TextFeatures
    from lensforge.stages.rl import ode_rollout, sde_rollout

    dit = _tiny_dit()
    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5]
    text = TextFeatures(layers=[torch.randn(sum(lengths), 6, generator=g)], lengths=torch.tensor(lengths))
    shapes = [(2, 4), (3, 3), (4, 2)]  # 1:2, 1:1, 2:1 token grids
    seeds = [11, 12, 13]

    def run(idx):
        gens = [torch.Generator().manual_seed(seeds[i]) for i in idx]
        sub = text.select(idx)
        if kind == "ode":
            return ode_rollout(dit, sub, [shapes[i] for i in idx], gens, steps=4, guidance=3.0, channels=8)
        out = sde_rollout(dit, sub, [shapes[i] for i in idx], gens, steps=4, guidance=3.0, channels=8, noise_level=0.7,
                          window=(1, 3))
        return out["latents"], out["log_probs"]

    packed = run([0, 1, 2])
    for i in range(3):
        alone = run([i])
        if kind == "ode":
            torch.testing.assert_close(packed[i], alone[0], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(packed[0][i], alone[0][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(packed[1][:, i], alone[1][:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(0, 2), (1, 3), (2, 4)])
def test_grpo_log_probs_recomputed_from_the_recorded_states_equal_the_rollouts(window):
    """Before any update the policy is the one that rolled out: every window step's ratio must be exactly 1 —
    including the window's last step when ODE steps follow it (its state is the one it led to, not the image)."""
    from lensforge.interfaces import TextFeatures
    from lensforge.sampling.sampler import guided_velocity, sde_step
    from lensforge.stages.rl import sde_rollout

    dit = _tiny_dit()
    g = torch.Generator().manual_seed(1)
    lengths = [3, 4]
    text = TextFeatures(layers=[torch.randn(sum(lengths), 6, generator=g)], lengths=torch.tensor(lengths))
    shapes = [(2, 4), (3, 3)]
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    roll = sde_rollout(dit, text, shapes, gens, steps=4, guidance=3.0, channels=8, noise_level=0.7, window=window)
    assert len(roll["states"]) == window[1] - window[0] + 1
    lens = torch.tensor([h * w for h, w in shapes])
    for j, i in enumerate(range(*window)):
        s, s_next = roll["sigmas"][i], roll["sigmas"][i + 1]
        with torch.no_grad():
            v = guided_velocity(dit, roll["states"][j], shapes, s, text, guidance_scale=3.0)
            *_, logp = sde_step(roll["states"][j], v, s, s_next, lens, sigma_max=roll["sigmas"][1], noise_level=0.7,
                                prev=roll["states"][j + 1])
        torch.testing.assert_close(logp, roll["log_probs"][j], atol=1e-4, rtol=1e-5)


def _mean_reward(ckpt_dir: Path, init: Path, n: int = 8) -> float:
    """Redness of CFG-free ODE rollouts of fixed seeds and prompts, from a checkpoint's trained DiT."""
    import _fakes

    from lensforge.stages.checkpoint_io import load_models_from_checkpoint
    from lensforge.stages.rl import ode_rollout

    dit, vae, te, _ = load_models_from_checkpoint(ckpt_dir, ema=False)
    text = te.encode([f"a red circle number {i}" for i in range(n)])
    gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
    lat = ode_rollout(dit, text, [(4, 4)] * n, gens, steps=3, guidance=1.0, channels=vae.latent_channels)
    imgs = [vae.decode(l[None])[0].clamp(-1, 1) for l in lat]
    return sum(_fakes.RednessReward().score(imgs, [{}] * n).rewards) / n


def test_one_nft_update_with_a_red_preferring_reward_makes_red_more_likely(init_run, tmp_path, fakes):
    out = tmp_path / "red"
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={out}", "stage.reward.name=fake_redness",
                 "stage.group_size=4", "stage.prompts_per_step=4", "stage.val_prompts=0", "stage.kl_beta=0",
                 # prompts without a size of their own: every rollout at the data section's sizes, as measured below
                 "stage.prompt_categories=[single_object,color,shape]",
                 "trainer.max_steps=1", "optim.lr=0.003", "tracking.enabled=false"]) == 0
    before = _mean_reward(init_run, init_run)
    after = _mean_reward(out, init_run)
    assert after > before + 1e-3, (before, after)


def test_nft_run_writes_splits_validation_and_metrics(init_run, tmp_path):
    out = tmp_path / "nft"
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={out}", "trainer.max_steps=2"]) == 0
    train = [json.loads(l)["id"] for l in (out / "prompts" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(l)["id"] for l in (out / "prompts" / "held_out.jsonl").read_text().splitlines()]
    assert train and held and not set(train) & set(held), "held-out prompts are never trained on"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["prompts"]["held_out"] == len(held)
    assert [v["step"] for v in summary["validation"]] == [0, 2]
    assert (out / "samples" / "step_0000000.png").is_file() and (out / "samples" / "step_0000002" / "summary.md").is_file()
    ckpt = torch.load(out / "checkpoints" / "step-0000002.ckpt", map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    assert any(k.startswith("old.") for k in sd), "NFT's old policy is saved"
    assert not any(k.startswith("reference.") for k in sd), "the frozen reference is rebuilt, not saved"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    keys = set(client.get_run(run_id).data.metrics)
    assert {"train/reward", "nft/policy_loss", "kl/velocity_to_reference", "val/reward", "train/grad_norm"} <= keys


def test_grpo_run(init_run, tmp_path):
    out = tmp_path / "grpo"
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={out}", "stage.algorithm=grpo",
                 "stage.rollout_guidance=2.0", "stage.sde_window_size=1", "stage.sde_window_range=[0,2]",
                 "stage.kl_beta=0.04", "trainer.max_steps=2", "stage.val_prompts=0"]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    keys = set(client.get_run(run_id).data.metrics)
    assert {"grpo/clipfrac", "grpo/approx_kl", "kl/step_mean_to_reference", "train/reward"} <= keys
    sd = torch.load(out / "checkpoints" / "step-0000002.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("old.") for k in sd), "GRPO has no old-policy copy"


def test_bad_input_exits_2(init_run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x", "category": "c", "rubric": []}\n{"id": 3}\n')
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={tmp_path / 'b1'}", f"stage.prompts={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and f"{bad}:2:" in err
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={tmp_path / 'b2'}", "stage.reward.name=nope"]) == 2
    assert "unknown reward plugin 'nope'" in capsys.readouterr().err
    assert main(["fit", RL_SMOKE, f"init_from={tmp_path / 'missing'}", f"output_dir={tmp_path / 'b3'}"]) == 2
    assert "init_from" in capsys.readouterr().err
    assert main(["validate", RL_SMOKE, "stage.group_size=1", "stage.prompts=prompts.txt"]) == 2
    err = capsys.readouterr().err
    assert "stage.group_size: group-relative advantages need at least 2" in err and "stage.prompts: give a prompt-set" in err
    assert main(["validate", RL_SMOKE, f"stage.prompts={tmp_path / 'nowhere.jsonl'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"id": "q", "prompt": "a cat", "category": "animals", "rubric": [{"id": "r1", "question": "Is there a cat?", "weight": 1}]}\n' * 1)
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={tmp_path / 'b4'}", f"stage.prompts={plain}",
                 "stage.held_out_fraction=0", "stage.prompts_per_step=1"]) == 2
    assert "cannot score" in capsys.readouterr().err
    odd = tmp_path / "odd.jsonl"
    assert main(["data", "prompts", "synthetic:6", str(odd), "--categories", "aspect_ratio"]) == 0
    rows = [json.loads(line) for line in odd.read_text().splitlines()]
    rows[0]["height"] = 100
    odd.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={tmp_path / 'b5'}", f"stage.prompts={odd}",
                 "stage.held_out_fraction=0"]) == 2
    assert f"{rows[0]['id']}: 100x" in capsys.readouterr().err


def test_rollout_sizes_follow_a_rows_own_size_else_the_resolution_policy():
    from types import SimpleNamespace

    from lensforge.recipe import load_recipe
    from lensforge.stages.rl import RLStage

    cfg = load_recipe(RL_SMOKE).config
    me = SimpleNamespace(sections=SimpleNamespace(data=cfg.data), vae=SimpleNamespace(downsample_factor=16), seed=0)
    rows = [{"height": 32, "width": 64}, {}, {"aspect_ratio": "2:1"}, {}]
    sizes = RLStage.sizes_for_step(me, 5, rows)
    assert sizes[0] == (32, 64)  # "a wide 2:1 photo of …" is rolled out at the size it asks for
    drawn = RLStage.sizes_for_step(me, 5, [{}] * 4)  # the policy's draws
    assert [sizes[1], sizes[3]] == [drawn[1], drawn[3]]
    # a row with only an aspect ratio: that ratio (W:H = 2:1) at the base the policy drew for it
    from lensforge.data.resolution import resolve_resolution

    h, w = drawn[2]
    base = next(b for b in cfg.data.resolution.base_resolutions for a in cfg.data.resolution.aspect_ratios
                if resolve_resolution(int(b), a, int(cfg.data.resolution.multiple_of), bool(cfg.data.resolution.lens_table)) == (h, w))
    assert sizes[2] == resolve_resolution(int(base), "2:1", int(cfg.data.resolution.multiple_of),
                                          bool(cfg.data.resolution.lens_table))
    assert sizes[2][1] > sizes[2][0]


def _rl_cmd(init: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lensforge.cli", "fit", RL_SMOKE, f"init_from={init}", f"output_dir={out}",
            "trainer.max_steps=4", "trainer.deterministic=true", "stage.val_prompts=0"]


def test_kill9_mid_rl_then_rerun_equals_an_uninterrupted_run(init_run, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    ref = tmp_path / "uninterrupted"
    subprocess.run(_rl_cmd(init_run, ref), env=env, check=True, capture_output=True, timeout=900)
    run = tmp_path / "crashed"
    first = run / "checkpoints" / "step-0000002.ckpt"
    kill9_when(_rl_cmd(init_run, run), first, env=env, timeout=900)
    assert not (run / "checkpoints" / "step-0000004.ckpt").exists(), "killed before the end"
    res = subprocess.run(_rl_cmd(init_run, run), env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stderr
    a = torch.load(ref / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "step-0000004.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("old.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_rl_with_a_vlm_judge_never_writes_the_key_and_refuses_an_unreachable_judge(init_run, tmp_path, capsys,
                                                                                   monkeypatch):
    """RL with `rubric_judge` against a real chat-completions server on 127.0.0.1 that needs a key."""
    import re

    from lensforge.testing.chat_server import ChatServer

    secret = "sk-test-9f8e7d6c5b4a-never-written"
    monkeypatch.setenv("LF_TEST_JUDGE_KEY", secret)

    def handler(call):  # deterministic yes/no per item from the image's pixels (not a real judge)
        text = call.first_user_text()
        ids = json.loads("[" + re.search(r"The keys must be exactly: (.*)\. No other text", text).group(1) + "]")
        (image,) = call.images()
        bright = sum(image.convert("L").getdata()) / (image.width * image.height)
        return {i: ("yes" if (bright + k * 37) % 100 > 50 else "no") for k, i in enumerate(ids)}

    out = tmp_path / "judged"
    with ChatServer(handler, api_key=secret) as server:
        judge = [f"stage.reward={{name: rubric_judge, endpoint: {{base_url: '{server.base_url}', model: {server.model}, "
                 f"api_key_env: LF_TEST_JUDGE_KEY, backoff_s: 0.01, cache_dir: '{tmp_path / 'cache'}'}}}}"]
        assert main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={out}", "trainer.max_steps=2", *judge]) == 0
        assert server.num_calls > 0, "the judge was asked"
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for f in [*out.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"the API key was written to {f}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert secret not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert any(k.startswith("reward/") for k in run.data.metrics), "judge statistics are logged"
    rc = main(["fit", RL_SMOKE, f"init_from={init_run}", f"output_dir={tmp_path / 'down'}",
               "stage.reward={name: rubric_judge, endpoint: {base_url: 'http://127.0.0.1:9/v1', model: m}}"])
    assert rc == 2 and "cannot reach http://127.0.0.1:9/v1" in capsys.readouterr().err
