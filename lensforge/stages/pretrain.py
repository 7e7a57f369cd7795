"""The ``pretrain`` stage: flow-matching pre-training of a DiT on VAE latents and text features.

Conventions (LENS_SPEC §1.4, §1.10, §4): ``x_σ = (1 − σ)·x0 + σ·ε``, target ``ε − x0``, the DiT
receives ``σ ∈ [0, 1]``. Per sample, σ is logit-normal (``Config.logit_mean/logit_std``) and
shifted by the sample's own token count (SD3/FLUX interpolation through Lens's scheduler anchors
256 → 0.5, 4096 → 1.15; see :mod:`lensforge.sampling.schedule`). The loss is the per-sample mean
of the squared error, then the mean over samples (:func:`lensforge.stages.objectives.flow_matching_loss`).
Caption dropout (an empty prompt, from the data pipeline) trains Lens's empty-negative branch
(the conditioner gives it zero text tokens). An EMA of the DiT is kept and used for sampling/export.

Everything else — the run, roles, encoding, EMA, optimizer, checkpoints, validation sampling,
resume — is the stage trunk (:mod:`lensforge.stages.system`, :mod:`lensforge.stages.harness`);
this file is the worked example of ``lensforge/stages/README.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lensforge.interfaces import DataBatch, TextFeatures
from lensforge.sampling.schedule import sample_training_sigmas
from lensforge.stages.objectives import flow_matching_loss
from lensforge.stages.schemas import PretrainSchema
from lensforge.stages.system import StageSystem, lr_lambda


class PretrainStage(PretrainSchema, StageSystem):
    """Flow-matching pre-training (Lens conventions), EMA, validation sampling, exact resume.

    Its ``Config`` and checks are :class:`~lensforge.stages.schemas.PretrainSchema`.
    """

    # ------------------------------------------------------------------ the objective

    def draw_sigmas(self, lens: Tensor) -> Tensor:
        """One training σ per sample (logit-normal, shifted by the sample's token count)."""
        c = self.config
        return sample_training_sigmas(
            lens, generator=self.generator, logit_mean=c.logit_mean, logit_std=c.logit_std,
            shift=c.resolution_shift, base_seq_len=c.shift_base_seq_len, max_seq_len=c.shift_max_seq_len,
            base_shift=c.shift_base, max_shift=c.shift_max,
        )

    def flow_matching_loss(self, latents: list[Tensor], text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample-mean flow-matching loss of a packed batch; returns (loss, extras for logging)."""
        lens = torch.tensor([int(l.shape[1]) * int(l.shape[2]) for l in latents], dtype=torch.long)
        sigmas = self.draw_sigmas(lens)
        noise = torch.randn(int(lens.sum()), int(latents[0].shape[0]), generator=self.generator, dtype=torch.float32)
        return flow_matching_loss(self.dit, latents, text, sigmas, noise)

    def training_step(self, batch: DataBatch, batch_idx: int) -> Tensor:
        latents, text = self.encode_batch(batch)
        loss, extras = self.flow_matching_loss(latents, text)
        step_seconds = self.step_seconds()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(latents))
        if self.should_log_details():
            logs = self.common_metrics(batch, text, step_seconds)
            logs["train/img_tokens"] = float(extras["lens"].sum())
            logs["train/sigma_mean"] = float(extras["sigmas"].mean())
            # loss by noise level (low / high σ halves): the curve the flow-matching literature tracks
            lo = extras["sigmas"] < 0.5
            for name, mask in (("train/loss_sigma_lt_0.5", lo), ("train/loss_sigma_ge_0.5", ~lo)):
                if bool(mask.any()):
                    logs[name] = extras["per_sample"][mask.to(loss.device)].mean()
            self.log_dict(logs, batch_size=len(latents))
        return loss


def load_models_from_checkpoint(path: Any, *, ema: bool = True, map_location: Any = "cpu") -> tuple[Any, Any, Any, Any]:
    """``(dit, vae, text_encoder, recipe_config)`` of a checkpoint (:mod:`lensforge.stages.checkpoint_io`)."""
    from lensforge.stages.checkpoint_io import load_models_from_checkpoint as _load

    return _load(path, ema=ema, map_location=map_location)


__all__ = ["PretrainStage", "load_models_from_checkpoint", "lr_lambda"]
