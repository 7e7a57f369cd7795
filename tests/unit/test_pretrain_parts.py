"""Pieces of the pretrain stage: LR schedule, EMA, per-sample loss, checkpoint discovery, preflight."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lensforge.errors import LensforgeError
from lensforge.interfaces import PackedBatch, TextFeatures
from lensforge.stages.checkpointing import checkpoint_name, latest_checkpoint, resolve_resume
from lensforge.stages.ema import ema_decay_at, ema_update_
from lensforge.stages.pretrain import PretrainStage, lr_lambda


def test_lr_schedules():
    kw = dict(total=100, warmup=10, min_ratio=0.1)
    assert lr_lambda(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_lambda(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_lambda(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_lambda(55, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_lambda(100, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_lambda(55, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_lambda(99, schedule="constant", **kw) == 1.0
    with pytest.raises(LensforgeError):
        lr_lambda(50, schedule="step", **kw)


def test_ema_update():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = a.weight.detach().clone()
    ema_update_(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight.detach())
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999, True) == 0.999 and ema_decay_at(0, 0.99, False) == 0.99


class _EchoDiT(nn.Module):
    """Predicts zeros: the loss is then the mean squared target."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, pb: PackedBatch) -> torch.Tensor:
        return torch.zeros_like(pb.img_tokens) + self.p


def test_loss_is_mean_of_per_sample_means():
    stage = PretrainStage(PretrainStage.Config(ema_decay=0.0), dit=_EchoDiT())
    lat = [torch.randn(4, 2, 2), torch.randn(4, 6, 6)]
    text = TextFeatures(layers=[torch.randn(5, 8)], lengths=torch.tensor([2, 3]))
    state = stage.generator.get_state()
    loss, extras = stage.flow_matching_loss(lat, text)
    # recompute with the same draws: per-sample MSE of target = noise - x0, then mean over samples
    g = torch.Generator()
    g.set_state(state)
    _ = torch.randn(2, generator=g)  # sigmas
    x0 = torch.cat([l.flatten(1).T for l in lat])
    noise = torch.randn(x0.shape, generator=g)
    err = (noise - x0).pow(2).mean(-1)
    per = torch.stack([err[:4].mean(), err[4:].mean()])
    torch.testing.assert_close(extras["per_sample"], per)
    torch.testing.assert_close(loss, per.mean())
    assert extras["sigmas"].shape == (2,) and bool(((extras["sigmas"] > 0) & (extras["sigmas"] < 1)).all())


def test_dropped_captions_train_the_empty_negative_branch():
    """A dropped caption ("") reaches the DiT with zero text tokens, as Lens's empty negative does."""
    from lensforge.interfaces import DataBatch

    stage = PretrainStage(PretrainStage.Config(ema_decay=0.0), dit=_EchoDiT())
    text = TextFeatures(layers=[torch.arange(12.0).view(6, 2)], lengths=torch.tensor([2, 3, 1]))
    batch = DataBatch(images=[], prompts=["a red circle", "", "  "], keys=["a", "b", "c"],
                      latents=[torch.zeros(4, 1, 1)] * 3, text=text)
    _, out = stage.encode_batch(batch)
    assert out.lengths.tolist() == [2, 0, 0]
    torch.testing.assert_close(out.sample(0)[0], text.sample(0)[0])
    assert out.layers[0].shape == (2, 2)


class _CountingEncoder(nn.Module):
    """Text encoder stand-in: one token per word, records every prompt it is asked to encode."""

    feature_dims = (3, 5)

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def encode(self, prompts: list[str]) -> TextFeatures:
        self.seen += prompts
        n = [len(p.split()) or 1 for p in prompts]  # "" would cost a token (a template, [CLS] [SEP] …)
        rows = [torch.full((k, 1), float(i)) for i, k in enumerate(n)]
        return TextFeatures(layers=[torch.cat(rows).expand(-1, d) for d in self.feature_dims], lengths=torch.tensor(n))


class _PixelVAE(nn.Module):
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images


def test_dropped_captions_are_never_encoded():
    """Without a memo or cache the encoder runs on the kept prompts only; rows stay in sample order."""
    from lensforge.interfaces import DataBatch

    enc = _CountingEncoder()
    stage = PretrainStage(PretrainStage.Config(ema_decay=0.0, memo_features=0), dit=_EchoDiT(), vae=_PixelVAE(),
                          text_encoder=enc)
    prompts = ["", "a red circle", "", "two blue squares here"]
    out = stage.conditioner.encode_prompts(prompts, device="cpu")
    assert enc.seen == ["a red circle", "two blue squares here"]
    assert out.lengths.tolist() == [0, 3, 0, 4] and out.dims == [3, 5]
    assert out.sample(1)[0][:, 0].tolist() == [0.0] * 3 and out.sample(3)[1][:, 0].tolist() == [1.0] * 4
    none = stage.conditioner.encode_prompts(["", " "], device="cpu")
    assert none.lengths.tolist() == [0, 0] and [t.shape for t in none.layers] == [(0, 3), (0, 5)]
    assert enc.seen == ["a red circle", "two blue squares here"]  # still nothing for the dropped ones
    stage.conditioner.encode_prompts(["a", "b c"], device="cpu")  # nothing dropped: one call with all prompts
    assert enc.seen[-2:] == ["a", "b c"]
    batch = DataBatch(images=[torch.zeros(3, 4, 4)] * 2, prompts=["", "a green square"], keys=["x", "y"])
    _, text = stage.encode_batch(batch)
    assert text.lengths.tolist() == [0, 3] and enc.seen[-1] == "a green square"


def test_resume_discovery(tmp_path):
    d = tmp_path / "checkpoints"
    assert resolve_resume("auto", d) is None and resolve_resume("never", d) is None
    d.mkdir()
    for s in (5, 20, 10):
        (d / checkpoint_name(s)).write_bytes(b"x")
    (d / ".step-0000030.ckpt.tmp").write_bytes(b"partial")  # a crash mid-write is never picked
    assert latest_checkpoint(d).name == "step-0000020.ckpt"
    assert resolve_resume("auto", d).name == "step-0000020.ckpt"
    assert resolve_resume("never", d) is None
    assert resolve_resume(str(d / checkpoint_name(5)), d).name == "step-0000005.ckpt"
    with pytest.raises(LensforgeError):
        resolve_resume(str(d / "missing.ckpt"), d)


def test_preflight_reasons(fakes, tmp_path):
    from lensforge.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(
        "model:\n  dit: {name: fake_dit, in_channels: 12, text_dims: [16]}\n  vae: {name: fake_vae}\n"
        "  text_encoder: {name: fake_text}\ndata: {source: {name: fake_source}}\n"
    )
    assert PretrainStage.preflight(load_recipe(p, ["trainer.accelerator=cpu"])) == []
    if not torch.cuda.is_available():
        reasons = PretrainStage.preflight(load_recipe(p, ["trainer.strategy=fsdp2", f"init_from={tmp_path}/nope"]))
        assert any("fsdp2" in r and "CUDA" in r for r in reasons)
        assert any("init_from" in r for r in reasons)


def test_stage_config_checks():
    bad = dataclasses.replace(PretrainStage.Config(), ema_decay=1.0, logit_std=0.0)
    keys = {k for k, _ in PretrainStage.check_config(bad)}
    assert keys == {"ema_decay", "logit_std"}
