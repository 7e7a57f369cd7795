"""The ``pretrain`` stage: flow-matching pre-training of a DiT on VAE latents and text features.

Conventions (LENS_SPEC §1.4, §1.10, §4): ``x_σ = (1 − σ)·x0 + σ·ε``, target ``ε − x0``, the DiT
receives ``σ ∈ [0, 1]``. Per sample, σ is logit-normal (``Config.logit_mean/logit_std``) and
shifted by the sample's own token count (SD3/FLUX interpolation through Lens's scheduler anchors
256 → 0.5, 4096 → 1.15; see :mod:`lensforge.sampling.schedule`). The loss is the per-sample mean
of the squared error over its tokens and channels, then the mean over samples — so a big image
does not outweigh a small one packed in the same batch. Caption dropout for CFG happens in the
data pipeline (empty prompt). An EMA of the DiT is kept and used for sampling/export.

What one ``lensforge fit`` does (:meth:`PretrainStage.run`):

1. output folder, resolved ``recipe.yaml``, resume discovery (``resume: auto|never|PATH``);
2. builds the DiT (optionally ``init_from`` weights), the frozen VAE and text encoder;
3. the data module (mixed-resolution packed batches, StatefulDataLoader);
4. an MLflow run (embedded SQLite store by default), atomic keep-last-k checkpoints, periodic
   validation sampling with the synthetic world's verifier;
5. ``Trainer.fit`` (step-based, AdamW + warmup + cosine/linear/constant, clipping, accumulation,
   bf16-mixed on GPU, optional compile and activation checkpointing, DDP or FSDP2).

Checkpoint format (a Lightning checkpoint): ``state_dict`` with prefixes ``dit.``, ``ema_dit.``
and — when small (``Config.save_frozen``) — ``vae.`` and ``text_encoder.``;
``hyper_parameters["recipe"]`` = the resolved recipe dict; ``lensforge`` = RNG states and
metadata. :func:`load_models_from_checkpoint` rebuilds the models from it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, PackedBatch, Stage, TextFeatures
from lensforge.sampling.schedule import sample_training_sigmas
from lensforge.stages.ema import copy_weights_, ema_decay_at, ema_update_

log = logging.getLogger("lensforge.stages.pretrain")

CKPT_VERSION = 1


def _num_params(m: torch.nn.Module | None) -> int:
    return 0 if m is None else sum(p.numel() for p in m.parameters())


def lr_lambda(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup, then cosine/linear decay or constant."""
    if warmup > 0 and step < warmup:
        return float(step + 1) / float(warmup)
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    t = min(1.0, max(0.0, (step - warmup) / span))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * t
    raise LensforgeError(f"unknown optim.schedule '{schedule}'")


class PretrainStage(Stage):
    """Flow-matching pre-training (Lens conventions), EMA, validation sampling, exact resume."""

    @dataclass(kw_only=True)
    class Config:
        logit_mean: float = 0.0
        """Mean of the logit-normal σ distribution (before the resolution shift)."""
        logit_std: float = 1.0
        """Standard deviation of the logit-normal σ distribution."""
        resolution_shift: bool = True
        """Shift each sample's σ by its token count (more tokens → noisier), as SD3/FLUX."""
        shift_base_seq_len: int = 256
        """Token count where the shift is ``shift_base``."""
        shift_max_seq_len: int = 4096
        """Token count where the shift is ``shift_max``."""
        shift_base: float = 0.5
        """Shift (added to logit σ) at ``shift_base_seq_len`` tokens."""
        shift_max: float = 1.15
        """Shift at ``shift_max_seq_len`` tokens (linear in between and beyond)."""
        ema_decay: float = 0.999
        """EMA decay of the DiT weights (0 = no EMA)."""
        ema_warmup: bool = True
        """Use ``min(decay, (1+t)/(10+t))`` early in training."""
        sample_with_ema: bool = True
        """Validation samples (and exports) use the EMA weights."""
        vae_sample_posterior: bool = False
        """Encode images with a posterior sample instead of the mode (VAEs that have one)."""
        save_frozen: Literal["auto", "always", "never"] = "auto"
        """Store the frozen VAE/text-encoder weights in checkpoints (``auto``: each one ≤ ``frozen_save_max_params``)."""
        frozen_save_max_params: int = 10_000_000
        """Size limit for ``save_frozen: auto``."""
        memo_features: int = 0
        """Keep up to this many encoded prompts and latents in memory (0 = off); see ``encode_batch``."""

    @classmethod
    def tiny_config(cls) -> "PretrainStage.Config":
        return cls.Config(ema_decay=0.9)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        if not 0.0 <= config.ema_decay < 1.0:
            out.append(("ema_decay", f"must be in [0, 1), got {config.ema_decay}"))
        if config.logit_std <= 0:
            out.append(("logit_std", f"must be positive, got {config.logit_std}"))
        if config.shift_max_seq_len <= config.shift_base_seq_len:
            out.append(("shift_max_seq_len", "must be larger than shift_base_seq_len"))
        return out

    # ------------------------------------------------------------------ construction

    def __init__(
        self,
        config: Config,
        *,
        recipe: Any = None,
        dit: torch.nn.Module | None = None,
        vae: torch.nn.Module | None = None,
        text_encoder: torch.nn.Module | None = None,
        feature_cache: Any = None,
    ):
        super().__init__()
        self.config = config
        self.recipe = recipe
        self.recipe_dict = dict(recipe.data) if recipe is not None else {}
        self.dit = dit
        self.feature_cache = feature_cache
        self._saved_frozen = {"vae": self._decide_save_frozen(vae), "text_encoder": self._decide_save_frozen(text_encoder)}
        for name, m in (("vae", vae), ("text_encoder", text_encoder)):
            if self._saved_frozen[name]:  # a registered child: saved in checkpoints, moved by Lightning
                setattr(self, name, m)
            else:
                # Not registered as a child: no state-dict entries (a 20B GPT-OSS is never copied
                # into checkpoints, sharded ones included); ``setup`` moves it to the device.
                object.__setattr__(self, name, m)
        for m in (self.vae, self.text_encoder):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        self.ema_dit = None
        if dit is not None and config.ema_decay > 0:
            self.ema_dit = copy.deepcopy(dit)
            self.ema_dit.requires_grad_(False)
            self.ema_dit.eval()
        self.seed = int(recipe.config.seed) if recipe is not None else 0
        self._gen = torch.Generator()
        self._gen.manual_seed(self.seed)
        self._gen_states_to_load: Tensor | None = None
        self._t_last = None
        self._text_memo: OrderedDict[str, list[Tensor]] = OrderedDict()
        self._latent_memo: OrderedDict[tuple[str, int, int], Tensor] = OrderedDict()

    def _decide_save_frozen(self, module: Any) -> bool:
        mode = self.config.save_frozen
        if module is None:
            return False
        if mode != "auto":
            return mode == "always"
        return _num_params(module) <= self.config.frozen_save_max_params

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            dev = self.trainer.strategy.root_device
            for name, m in (("vae", self.vae), ("text_encoder", self.text_encoder)):
                if m is not None and not self._saved_frozen[name]:
                    m.to(dev)
        rank = self.global_rank
        # one noise stream per rank: the same seed on every rank would correlate the noise
        self._gen.manual_seed(self.seed * 1_000_003 + 7919 * rank + 1)
        log.info("noise generator seeded for rank %d", rank)

    def configure_model(self) -> None:
        """FSDP2 (ModelParallelStrategy) and torch.compile are applied here, once devices exist."""
        if self.dit is None or getattr(self, "_configured", False):
            return
        self._configured = True
        trainer_cfg = self.recipe.config.trainer if self.recipe is not None else None
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None:
            from lensforge.distributed.fsdp import ParallelizeConfig, parallelize

            pcfg = ParallelizeConfig.from_trainer(trainer_cfg)
            dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
            parallelize(self.dit, dp_mesh, pcfg)
            if self.ema_dit is not None:
                parallelize(self.ema_dit, dp_mesh, dataclasses.replace(pcfg, compile=False, activation_checkpointing=False))
        elif trainer_cfg is not None and trainer_cfg.compile:
            units = self.dit.fsdp_units() if hasattr(self.dit, "fsdp_units") else [self.dit]
            for u in units:
                u.compile(dynamic=True)
            log.info("torch.compile: %d DiT unit(s) (dynamic shapes)", len(units))

    def configure_optimizers(self) -> Any:
        oc = self.recipe.config.optim
        max_steps = self.recipe.config.trainer.max_steps
        params = [p for p in self.dit.parameters() if p.requires_grad]
        # torch picks the multi-tensor (foreach) AdamW only for CUDA parameters; on the CPU the per-tensor
        # loop costs ~5% of a tiny-recipe step, so ask for foreach there too (same update, fewer kernels).
        foreach = True if params and all(p.device.type == "cpu" for p in params) else None
        opt = torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay,
                                foreach=foreach)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: lr_lambda(s, total=max_steps, warmup=oc.warmup_steps, schedule=oc.schedule, min_ratio=oc.min_lr_ratio),
        )
        log.info("optimizer: AdamW lr=%g betas=%s wd=%g, warmup=%d, schedule=%s (min ratio %g), %d trainable params",
                 oc.lr, tuple(oc.betas), oc.weight_decay, oc.warmup_steps, oc.schedule, oc.min_lr_ratio,
                 sum(p.numel() for p in params))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if not isinstance(batch, DataBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return dataclasses.replace(
            batch,
            images=[im.to(device, non_blocking=True) for im in batch.images],
            latents=None if batch.latents is None else [l.to(device) for l in batch.latents],
            text=None if batch.text is None else batch.text.to(device),
        )

    # ------------------------------------------------------------------ encoding

    @torch.no_grad()
    def encode_batch(self, batch: DataBatch) -> tuple[list[Tensor], TextFeatures]:
        """Latents (per sample ``[C, h, w]``) and text features of a batch.

        A dropped caption (empty prompt) gets **zero text tokens**: that is Lens's unconditional
        branch at sampling time (an empty negative prompt = zero features under an all-False mask,
        LENS_SPEC §4), so caption dropout trains exactly the branch CFG uses. Encoding ``""`` instead
        would train a different input (GPT-OSS's chat template, MiniLM's ``[CLS] [SEP]``).
        """
        latents, text = self._encode_features(batch)
        lengths = text.lengths.tolist()  # the encoder path already gives dropped prompts zero tokens
        empty = [i for i, p in enumerate(batch.prompts) if not str(p).strip() and lengths[i]]
        return latents, (text.emptied(empty) if empty else text)

    def _encode_features(self, batch: DataBatch) -> tuple[list[Tensor], TextFeatures]:
        """Latents and text features as the encoders (or cache, or batch) give them.

        Uses, in order: features the batch already carries, the feature cache
        (``data.cache_dir``), or the frozen VAE / text encoder (images grouped by size).

        With ``Config.memo_features > 0`` the frozen encoders' outputs are memoised in memory, keyed
        by prompt and by ``(sample key, H, W)`` — for sources whose image of a key at a size is
        deterministic (all shipped ones; the VAE must encode the posterior mode). Misses are encoded
        one sample at a time, so a feature never depends on which batch first asked for it: a run
        gives the same numbers with or without the memo and after a resume.
        """
        if batch.latents is not None and batch.text is not None:
            return list(batch.latents), batch.text
        if self.feature_cache is not None:
            sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in batch.images]
            # images= lets the cache verify each image's pixel hash (a changed source is an error, not stale latents)
            latents = self.feature_cache.latents(list(batch.keys), sizes, images=list(batch.images) or None)
            text = self.feature_cache.text(list(batch.prompts))
            return [l.to(self.device) for l in latents], text.to(self.device)
        if self.vae is None or self.text_encoder is None:
            raise LensforgeError("pretrain: no VAE/text encoder and no feature cache to encode the batch")
        if self.config.memo_features > 0 and not self.config.vae_sample_posterior:
            return self._encode_memo(batch)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(batch.images):
            groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        latents: list[Tensor | None] = [None] * len(batch.images)
        for _, idx in groups.items():
            z = self._vae_encode(torch.stack([batch.images[i] for i in idx]))
            for j, i in enumerate(idx):
                latents[i] = z[j]
        return latents, self._encode_prompts(list(batch.prompts))  # type: ignore[return-value]

    def _encode_prompts(self, prompts: list[str]) -> TextFeatures:
        """Text features of ``prompts``; dropped (empty) ones get zero tokens without running the encoder.

        With caption dropout ``p``, that saves ``p`` of the text encoder's work on every batch (a
        GPT-OSS forward over its chat template, for a result :meth:`encode_batch` discards).
        """
        keep = [i for i, p in enumerate(prompts) if str(p).strip()]
        if len(keep) == len(prompts):
            return self.text_encoder.encode(prompts).to(self.device)
        lengths = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        if not keep:
            layers = [torch.zeros(0, d, device=self.device) for d in self.text_encoder.feature_dims]
            return TextFeatures(layers=layers, lengths=lengths)
        enc = self.text_encoder.encode([prompts[i] for i in keep]).to(self.device)
        lengths[torch.tensor(keep, device=self.device)] = enc.lengths.to(self.device)
        return TextFeatures(layers=enc.layers, lengths=lengths)  # rows stay in sample order

    def _vae_encode(self, images: Tensor) -> Tensor:
        params = list(self.vae.parameters())
        x = images.to(device=self.device, dtype=params[0].dtype if params else torch.float32)
        if self.config.vae_sample_posterior:
            return self.vae.encode(x, sample=True, generator=self._gen).float()
        return self.vae.encode(x).float()

    def _encode_memo(self, batch: DataBatch) -> tuple[list[Tensor], TextFeatures]:
        cap = self.config.memo_features
        latents = []
        for key, im in zip(batch.keys, batch.images):
            mk = (str(key), int(im.shape[-2]), int(im.shape[-1]))
            z = self._latent_memo.get(mk)
            if z is None:
                z = self._vae_encode(im[None])[0]
                self._latent_memo[mk] = z
                if len(self._latent_memo) > cap:
                    self._latent_memo.popitem(last=False)
            else:
                self._latent_memo.move_to_end(mk)
            latents.append(z)
        per_sample = []
        for p in batch.prompts:
            f = self._text_memo.get(p)
            if f is None:
                enc = self.text_encoder.encode([p])
                f = [t.to(self.device) for t in enc.sample(0)]
                self._text_memo[p] = f
                if len(self._text_memo) > cap:
                    self._text_memo.popitem(last=False)
            else:
                self._text_memo.move_to_end(p)
            per_sample.append(f)
        n_layers = len(per_sample[0])
        text = TextFeatures(
            layers=[torch.cat([f[l] for f in per_sample], 0) for l in range(n_layers)],
            lengths=torch.tensor([int(f[0].shape[0]) for f in per_sample], device=self.device),
        )
        return latents, text

    # ------------------------------------------------------------------ training

    def flow_matching_loss(self, latents: list[Tensor], text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample-mean flow-matching loss of a packed batch; returns (loss, extras for logging)."""
        c = self.config
        tokens = [l.flatten(1).T for l in latents]  # [h*w, C] row-major
        shapes = [(int(l.shape[1]), int(l.shape[2])) for l in latents]
        lens_cpu = torch.tensor([h * w for h, w in shapes], dtype=torch.long)
        sigmas = sample_training_sigmas(
            lens_cpu, generator=self._gen, logit_mean=c.logit_mean, logit_std=c.logit_std,
            shift=c.resolution_shift, base_seq_len=c.shift_base_seq_len, max_seq_len=c.shift_max_seq_len,
            base_shift=c.shift_base, max_shift=c.shift_max,
        )
        x0 = torch.cat(tokens, 0).float()
        noise = torch.randn(x0.shape, generator=self._gen, dtype=torch.float32).to(x0.device)
        sig = sigmas.to(x0.device)
        lens = lens_cpu.to(x0.device)
        s_tok = torch.repeat_interleave(sig, lens)[:, None]
        x_t = (1.0 - s_tok) * x0 + s_tok * noise
        target = noise - x0
        dit_dtype = next(self.dit.parameters()).dtype
        pb = PackedBatch(img_tokens=x_t.to(dit_dtype), img_shapes=torch.as_tensor(shapes), sigmas=sig.to(dit_dtype),
                         text=text.to(device=x0.device, dtype=dit_dtype))
        pred = self.dit(pb)
        err = (pred.float() - target).pow(2).mean(-1)  # [N_img]
        sample_idx = torch.repeat_interleave(torch.arange(len(shapes), device=x0.device), lens)
        per_sample = torch.zeros(len(shapes), device=x0.device).index_add_(0, sample_idx, err) / lens.float()
        return per_sample.mean(), {"sigmas": sigmas, "per_sample": per_sample.detach(), "lens": lens_cpu}

    def training_step(self, batch: DataBatch, batch_idx: int) -> Tensor:
        latents, text = self.encode_batch(batch)
        loss, extras = self.flow_matching_loss(latents, text)
        B = len(latents)
        now = time.perf_counter()
        step_seconds = None if self._t_last is None else now - self._t_last
        self._t_last = now
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=B)
        if self._should_log_details():
            self.log_dict(self._detail_metrics(batch, text, extras, loss.device, step_seconds), batch_size=B)
        return loss

    def _should_log_details(self) -> bool:
        """Whether this step's metrics reach the logger (Lightning forwards on-step values only
        every ``log_every_n_steps``). Each ``self.log`` costs ~1 ms on CPU, so the ~20 detail
        metrics are computed and logged only on those steps (measured: tools/bench.py framework)."""
        if self._trainer is None:
            return True
        connector = getattr(self.trainer, "_logger_connector", None)
        should = getattr(connector, "should_update_logs", None)
        return True if should is None else bool(should)

    def _detail_metrics(self, batch: DataBatch, text: TextFeatures, extras: dict[str, Any], device: torch.device,
                        step_seconds: float | None) -> dict[str, Any]:
        logs: dict[str, Any] = {
            "train/num_samples": float(len(batch)),
            "train/img_tokens": float(extras["lens"].sum()),
            "train/txt_tokens": float(text.lengths.sum()),
            "train/sigma_mean": float(extras["sigmas"].mean()),
        }
        # loss by noise level (low / high σ halves): the curve the flow-matching literature tracks
        lo = extras["sigmas"] < 0.5
        if bool(lo.any()):
            logs["train/loss_sigma_lt_0.5"] = extras["per_sample"][lo.to(device)].mean()
        if bool((~lo).any()):
            logs["train/loss_sigma_ge_0.5"] = extras["per_sample"][(~lo).to(device)].mean()
        for k, v in (batch.stats or {}).items():
            try:
                logs[f"data/{k}"] = float(v)
            except (TypeError, ValueError):
                pass
        if step_seconds is not None:
            logs["perf/step_seconds"] = step_seconds
        if self.trainer.optimizers:
            logs["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        return logs

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema_dit is not None:
            d = ema_decay_at(int(self.global_step), self.config.ema_decay, self.config.ema_warmup)
            ema_update_(self.ema_dit, self.dit, d)

    def sampling_dit(self) -> torch.nn.Module:
        """The DiT used for sampling: the EMA copy when there is one and ``sample_with_ema``."""
        if self.ema_dit is not None and self.config.sample_with_ema:
            return self.ema_dit
        return self.dit

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = {"recipe": self.recipe_dict, "stage": dataclasses.asdict(self.config)}
        states = self._gen.get_state()
        if self.trainer is not None and self.trainer.world_size > 1:
            states = self.trainer.strategy.all_gather(states.clone()).cpu()
            states = states.reshape(self.trainer.world_size, -1)
        else:
            states = states[None]
        checkpoint["lensforge"] = {
            "version": CKPT_VERSION,
            "generator_states": states,
            "frozen_saved": dict(self._saved_frozen),
            "global_step": int(self.global_step),
        }
        if self.trainer is not None and self.trainer.world_size > 1:
            # Lightning stores rank 0's data-loader state only; every rank's position is kept here
            dl = self.trainer.train_dataloader
            own = dl.state_dict() if hasattr(dl, "state_dict") else None
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, own)
            checkpoint["lensforge"]["loader_states"] = gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lensforge", {})
        loader_states = meta.get("loader_states")
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        if loader_states is not None and self._trainer is not None and fit_state.get("combined_loader"):
            rank, ws = self.global_rank, self.trainer.world_size
            if len(loader_states) == ws and loader_states[rank] is not None:
                fit_state["combined_loader"] = [loader_states[rank]]
                log.info("resume: data position of rank %d restored", rank)
            else:
                log.warning("resume: checkpoint has data positions of %d ranks for %d; the loader decides",
                            len(loader_states), ws)
        states = meta.get("generator_states")
        if states is not None:
            self._gen_states_to_load = states
        sd = checkpoint.get("state_dict", {})
        missing = [p for p in ("dit.",) if not any(k.startswith(p) for k in sd)]
        if missing and sd:
            raise LensforgeError(f"checkpoint has no weights under {missing}")

    def on_train_start(self) -> None:
        states = self._gen_states_to_load
        if states is not None:
            rank, ws = self.global_rank, self.trainer.world_size
            if states.shape[0] == ws:
                # a fresh tensor: set_state reads the storage from offset 0 (a row view of rank > 0 crashes)
                self._gen.set_state(states[rank].to(torch.uint8).cpu().clone())
                log.info("resume: restored the noise generator of rank %d", rank)
            else:
                log.warning("resume: checkpoint has %d noise-generator states for %d ranks; reseeding (not exact)",
                            states.shape[0], ws)
            self._gen_states_to_load = None
        if self.ema_dit is not None and self.global_step == 0 and not getattr(self, "_ema_initialised", False):
            copy_weights_(self.ema_dit, self.dit)
            self._ema_initialised = True

    # ------------------------------------------------------------------ entry points

    @classmethod
    def preflight(cls, recipe: Any) -> list[str]:
        from lensforge.stages.preflight import preflight_reasons

        return preflight_reasons(recipe)

    @classmethod
    def run(cls, recipe: Any) -> dict[str, Any]:
        from lensforge.stages.runner import run_pretrain

        return run_pretrain(cls, recipe)


# ---------------------------------------------------------------------- loading


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    if path.is_dir():  # sharded (distributed checkpoint) folder written by FSDP2 runs
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as td:
            out = Path(td) / "full.ckpt"
            dcp_to_torch_save(str(path), str(out))
            ckpt = torch.load(out, map_location=map_location, weights_only=False)
        meta = path / "meta.pt"
        if meta.exists():
            ckpt.update({k: v for k, v in torch.load(meta, map_location=map_location, weights_only=False).items() if k not in ckpt})
        return ckpt
    return torch.load(path, map_location=map_location, weights_only=False)


def recipe_from_dict(data: dict[str, Any]) -> Any:
    """Validate a resolved recipe dict (as stored in checkpoints) back into a :class:`Recipe`."""
    import yaml

    from lensforge.recipe import load_recipe

    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "recipe.yaml"
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return load_recipe(p)


def load_models_from_checkpoint(path: str | os.PathLike, *, ema: bool = True, map_location: Any = "cpu") -> tuple[Any, Any, Any, Any]:
    """Rebuild ``(dit, vae, text_encoder, recipe_config)`` from a checkpoint written by this stage.

    ``path`` may be a ``step-*.ckpt`` file, a sharded checkpoint folder, the checkpoints folder's
    ``latest`` pointer, or a run's output folder (its newest checkpoint). With ``ema`` the DiT gets
    the EMA weights when the checkpoint has them. The frozen VAE/text encoder are built from the
    recipe (their own pretrained weights) and then get the checkpoint's copy when it stored one.
    """
    from lensforge.stages.checkpointing import latest_checkpoint, resolve_resume

    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        found = latest_checkpoint(p / "checkpoints")
        if found is None:
            raise LensforgeError(f"no checkpoints in {p / 'checkpoints'}")
        p = found
    elif p.is_dir() and not (p / ".metadata").exists() and latest_checkpoint(p) is not None:
        p = latest_checkpoint(p)  # type: ignore[assignment]
    else:
        p = resolve_resume(str(p), p.parent)  # type: ignore[assignment]
    ckpt = _read_checkpoint(p, map_location)
    hp = ckpt.get("hyper_parameters") or {}
    if "recipe" not in hp:
        raise LensforgeError(f"{p} is not a lensforge pretrain checkpoint (no hyper_parameters.recipe)")
    recipe = recipe_from_dict(hp["recipe"])
    cfg = recipe.config
    sd = ckpt["state_dict"]

    def sub(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    dit = cfg.model.dit.build()
    use_ema = ema and any(k.startswith("ema_dit.") for k in sd)
    dit_sd = sub("ema_dit.") if use_ema else sub("dit.")
    if not dit_sd:
        raise LensforgeError(f"{p} has no DiT weights")
    dit.load_state_dict(dit_sd, strict=True)
    vae = cfg.model.vae.build()
    te = cfg.model.text_encoder.build()
    for m, prefix in ((vae, "vae."), (te, "text_encoder.")):
        part = sub(prefix)
        if part:
            m.load_state_dict(part, strict=True)
        m.requires_grad_(False)
        m.eval()
    dit.eval()
    log.info("loaded %s DiT weights from %s (step %s)", "EMA" if use_ema else "raw", p, ckpt.get("global_step"))
    return dit, vae, te, cfg


__all__ = ["PretrainStage", "load_models_from_checkpoint", "lr_lambda", "recipe_from_dict"]
