"""The ``rl`` stage: post-training a DiT with rewards on prompt sets — DiffusionNFT (Lens's) or Flow-GRPO.

Each optimizer step:

1. **Prompts**: ``prompts_per_step`` rows of the training split (a seeded permutation per epoch; the
   held-out split, ``<run>/prompts/held_out.jsonl``, is never trained on).
2. **Rollouts**: ``group_size`` images per prompt, each at its own size drawn from ``data.resolution``
   (aspect ratios and bases) — every image of every group **packed into one DiT call per sampler step**
   (no per-size buckets). Each image's noise comes from its own generator, so packing never changes an
   image. ``nft``: a deterministic ODE rollout of the "old" policy (CFG ``rollout_guidance``, 1.0 =
   DiffusionNFT's CFG-free default; above 1 the NFT policy is the guided velocity, as Flow-GRPO's
   ``train.cfg``, so the model is trained at the guidance it samples with). ``grpo``: the current policy with SDE steps (Flow-GRPO's ``sde``
   form, noise level ``noise_level``) inside a window of ``sde_window_size`` steps at a random start,
   recording each window step's state and log-probability.
3. **Rewards** from the reward plugin (the synthetic verifier, a VLM rubric judge, a mix …) per image;
   an image the reward could not score is dropped from its group and counted, never scored 0.
   Group-relative advantages (per-prompt mean, batch std), clipped to ±``adv_clip``.
4. **Update** (one optimizer step, gradients accumulated over micro-batches of the whole rollout batch):
   ``nft``: :func:`~lensforge.stages.objectives.nft_loss` at ``train_timesteps`` noise levels per image
   from the rollout schedule; then the old policy moves towards the trained one with DiffusionNFT's
   decay schedule. ``grpo``: :func:`~lensforge.stages.objectives.grpo_loss` at every window step (clipped
   importance ratio, KL to the frozen reference).

Everything else is the trunk: roles (``dit`` trained; ``old`` — NFT's lagging policy, saved; ``reference``
— the frozen initial policy for the KL term, rebuilt from ``init_from``), EMA, checkpoints, exact
resume (the noise generator, optimizer, old policy, EMA; prompts and sizes are functions of the step),
MLflow. Validation: ``val_prompts`` held-out prompts generated with the recipe's ``sampling`` settings
and scored with the same reward before training and every ``sampling.every_n_steps``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lensforge.data.prompt_sets import row_size
from lensforge.errors import LensforgeError
from lensforge.interfaces import TextFeatures
from lensforge.sampling.sampler import euler_step, guided_velocity, sample_latents, sde_step
from lensforge.sampling.schedule import lens_sigmas
from lensforge.stages.objectives import (
    add_noise, group_advantages, grpo_loss, latents_of, nft_loss, nft_reward_weight, tokens_of,
)
from lensforge.stages.schemas import RLSchema
from lensforge.stages.system import StageSystem

log = logging.getLogger("lensforge.rl")


# ------------------------------------------------------------------------------------------ rollouts


def initial_noise(shapes: Sequence[tuple[int, int]], channels: int, generators: Sequence[torch.Generator]) -> list[Tensor]:
    """Each image's initial noise ``[h·w, C]`` from its own generator."""
    return [torch.randn(int(h) * int(w), channels, generator=g) for (h, w), g in zip(shapes, generators)]


@torch.no_grad()
def ode_rollout(dit: Any, text: TextFeatures, shapes: Sequence[tuple[int, int]], generators: Sequence[torch.Generator],
                *, steps: int, guidance: float, channels: int) -> list[Tensor]:
    """Deterministic rollouts (the Lens sampler) of a packed batch; per-sample latents ``[C, h, w]``."""
    noise = initial_noise(shapes, channels, generators)
    return sample_latents(dit, text, list(shapes), steps=steps, guidance_scale=guidance, noise=noise)


@torch.no_grad()
def sde_rollout(dit: Any, text: TextFeatures, shapes: Sequence[tuple[int, int]], generators: Sequence[torch.Generator],
                *, steps: int, guidance: float, channels: int, noise_level: float, window: tuple[int, int]) -> dict[str, Any]:
    """Flow-GRPO rollouts of a packed batch: ODE steps outside ``window = (start, end)``, SDE steps inside.

    Returns ``latents`` (per sample ``[C, h, w]``), ``states`` (packed ``x`` before each window step and
    right after the last window step: ``states[j] → states[j + 1]`` is window step ``j``), ``log_probs`` (``[W, B]``), ``sigmas`` (``[steps + 1, B]``) and ``window``.
    """
    lens = torch.tensor([int(h) * int(w) for h, w in shapes], dtype=torch.long)
    x = torch.cat(initial_noise(shapes, channels, generators), 0)
    sched = torch.stack([lens_sigmas(steps, int(L)) for L in lens], 1)
    dtype = next(dit.parameters()).dtype
    device = next(dit.parameters()).device
    x = x.to(device)
    sched = sched.to(device)
    states, log_probs = [], []
    start, end = window
    was = dit.training
    dit.eval()
    try:
        for i in range(steps):
            s, s_next = sched[i], sched[i + 1]
            v = guided_velocity(dit, x.to(dtype), list(shapes), s, text, guidance_scale=guidance)
            if start <= i < end:
                states.append(x.float().cpu())
                noise = torch.cat([torch.randn(int(L), channels, generator=g) for L, g in zip(lens, generators)], 0)
                x, _, _, lp = sde_step(x, v, s, s_next, lens, sigma_max=sched[1], noise_level=noise_level,
                                       noise=noise.to(device))
                log_probs.append(lp.cpu())
                if i == end - 1:  # the state each window step led to: the last one's too (not the trajectory's end)
                    states.append(x.float().cpu())
            else:
                x = euler_step(x, v, s, s_next, lens)
    finally:
        dit.train(was)
    return {"latents": latents_of(x.float().cpu(), list(shapes)), "states": states,
            "log_probs": torch.stack(log_probs) if log_probs else torch.zeros(0, len(shapes)), "sigmas": sched.cpu(),
            "window": window}


def old_policy_decay(step: int, *, flat: int, rate: float, cap: float) -> float:
    """DiffusionNFT's old-policy EMA decay after optimizer step ``step``: ``min(max(step − flat, 0)·rate, cap)``."""
    return min(max(step - flat, 0) * rate, cap)


# ------------------------------------------------------------------------------------------ prompts


def load_rows(spec: str, *, world: dict[str, Any], categories: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """Prompt-set rows of ``spec``: a ``.jsonl`` file (validated, every bad row reported) or ``synthetic:N``."""
    if spec.startswith("synthetic:"):
        from lensforge.data.synthetic_prompts import taxonomy_rows, world_config

        n = int(spec.partition(":")[2])
        options = {k: v for k, v in dict(world).items() if k != "name"}  # a data.source node works as is
        return taxonomy_rows(n, seed=seed, categories=list(categories) or None, world=world_config(options))
    from lensforge.data.prompt_sets import load_prompt_set

    return [r.to_dict() for r in load_prompt_set(Path(spec).expanduser())]


def split_rows(rows: list[dict[str, Any]], seed: int, fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)`` by a seeded hash of each row id (stable when rows are added or reordered)."""
    from lensforge.data.prompt_sets import held_out_score

    train = [r for r in rows if held_out_score(str(r["id"]), seed) >= fraction]
    held = [r for r in rows if held_out_score(str(r["id"]), seed) < fraction]
    return train, held


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of step numbers: the RL stage draws its prompts from ``global_step`` itself, so the
    data position is the step (exact on resume)."""

    def __iter__(self):
        i = 0
        while True:
            yield i
            i += 1


# ------------------------------------------------------------------------------------------ the stage


class RLStage(RLSchema, StageSystem):
    """RL post-training on prompt sets with per-prompt rubric rewards: DiffusionNFT or Flow-GRPO.

    Its ``Config``, roles and checks are :class:`~lensforge.stages.schemas.RLSchema`.
    """

    manual_optimization = True

    @classmethod
    def build(cls, recipe: Any, run: Any = None) -> "RLStage":
        system: RLStage = super().build(recipe, run)  # type: ignore[assignment]
        sc = system.config
        rows = load_rows(sc.prompts, world=sc.prompt_world, categories=sc.prompt_categories, seed=sc.prompt_seed)
        train, held = split_rows(rows, sc.split_seed, sc.held_out_fraction)
        if len(train) < sc.prompts_per_step:
            raise LensforgeError(f"stage.prompts: the training split has {len(train)} prompts, fewer than "
                                 f"prompts_per_step ({sc.prompts_per_step}); give more prompts or lower held_out_fraction")
        system.train_rows, system.held_out_rows = train, held
        system.reward = sc.reward.build()
        problems = system.reward.check_rows(rows)
        if problems:
            more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise LensforgeError(f"stage.reward '{sc.reward.name}' cannot score prompt set '{sc.prompts}':\n  "
                                 + "\n  ".join(problems[:10]) + more)
        f = int(system.vae.downsample_factor)
        sized = [(r.get("id"), row_size(r)) for r in rows]
        bad = [f"{rid}: {hw[0]}x{hw[1]}" for rid, hw in sized if hw and (hw[0] % f or hw[1] % f)]
        if bad:
            raise LensforgeError(f"stage.prompts: {len(bad)} row(s) ask for a size that is not a multiple of the VAE's "
                                 f"{f}-pixel token (rollouts use a row's own height/width): " + ", ".join(bad[:5]))
        system.reward.preflight()
        if run is not None and run.is_rank_zero:
            from lensforge.data.prompt_sets import write_prompt_set

            folder = run.out / "prompts"
            folder.mkdir(parents=True, exist_ok=True)
            write_prompt_set(folder / "train.jsonl", train)
            if held:
                write_prompt_set(folder / "held_out.jsonl", held)
        log.info("rl: %s, %d training / %d held-out prompts (%s), reward %s, %d prompts × %d images per step",
                 sc.algorithm, len(train), len(held), sc.prompts, sc.reward.name, sc.prompts_per_step, sc.group_size)
        return system

    @classmethod
    def datamodule(cls, recipe: Any, system: "RLStage") -> Any:
        import lightning as L

        class _StepData(L.LightningDataModule):
            def train_dataloader(self):
                return torch.utils.data.DataLoader(_Steps(), batch_size=None, num_workers=0)

        return _StepData()

    def callbacks(self, recipe: Any, run: Any) -> list[Any]:
        return [RLValidation(self, recipe.config, run.out / "samples", tracker=run.tracker)]

    def summary(self) -> dict[str, Any]:
        return {"prompts": {"train": len(self.train_rows), "held_out": len(self.held_out_rows)},
                "reward_stats": self.reward.stats(), "dropped_images": int(self._dropped)}

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.train_rows: list[dict[str, Any]] = []
        self.held_out_rows: list[dict[str, Any]] = []
        self.reward: Any = None
        self._dropped = 0

    # ------------------------------------------------------------------ step pieces

    def prompts_for_step(self, step: int) -> list[dict[str, Any]]:
        """The ``prompts_per_step`` training rows of optimizer step ``step`` (a seeded permutation per epoch)."""
        n, k = len(self.train_rows), self.config.prompts_per_step
        out = []
        for j in range(step * k, step * k + k):
            epoch, pos = divmod(j, n)
            perm = np.random.default_rng([self.seed, 7_700_001, epoch]).permutation(n)
            out.append(self.train_rows[int(perm[pos])])
        return out

    def sizes_for_step(self, step: int, rows: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
        """Each rollout image's ``(H, W)``: the row's own ``height``/``width`` when it states one (an aspect-ratio
        prompt is rolled out at the size it asks for, as evaluation generates it); a row stating only
        ``aspect_ratio`` gets that ratio at the policy's drawn base resolution; else the recipe's resolution
        policy, drawn from ``(seed, step, image)``."""
        from lensforge.data.resolution import ResolutionPolicy

        rc = self.sections.data.resolution
        policy = ResolutionPolicy(rc, int(self.vae.downsample_factor))
        out = []
        for i, row in enumerate(rows):
            drawn = policy.choose(np.random.default_rng([self.seed, 7_700_003, step, i]))
            out.append(row_size(row, drawn.base, int(rc.multiple_of), bool(rc.lens_table)) or drawn.size)
        return out

    def _decode(self, latents: Sequence[Tensor]) -> list[Tensor]:
        params = list(self.vae.parameters())
        dtype = params[0].dtype if params else torch.float32
        out = []
        with torch.no_grad():
            for lat in latents:
                img = self.vae.decode(lat[None].to(device=self.device, dtype=dtype))[0]
                out.append(img.float().clamp(-1, 1).cpu())
        return out

    def _window(self) -> tuple[int, int]:
        c = self.config
        last = c.rollout_steps - 1
        if c.sde_window_size == 0:
            return 0, last
        lo, hi = c.sde_window_range
        start = int(torch.randint(lo, hi - c.sde_window_size + 1, (1,), generator=self.generator))
        return start, start + c.sde_window_size

    # ------------------------------------------------------------------ the objective

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        c = self.config
        step = int(self.global_step)
        step_seconds = self.step_seconds()
        rows = self.prompts_for_step(step)
        P, G = len(rows), c.group_size
        rep = [rows[i // G] for i in range(P * G)]
        groups = torch.tensor([i // G for i in range(P * G)])
        sizes = self.sizes_for_step(step, rep)
        f = int(self.vae.downsample_factor)
        shapes = [(h // f, w // f) for h, w in sizes]
        seeds = torch.randint(0, 2**62, (P * G,), generator=self.generator).tolist()
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        text = self.conditioner.encode_prompts([str(r["prompt"]) for r in rep], device=self.device)
        channels = int(self.vae.latent_channels)
        if c.algorithm == "nft":
            latents = ode_rollout(self.old, text, shapes, gens, steps=c.rollout_steps, guidance=c.rollout_guidance,
                                  channels=channels)
            roll = None
        else:
            roll = sde_rollout(self.dit, text, shapes, gens, steps=c.rollout_steps, guidance=c.rollout_guidance,
                               channels=channels, noise_level=c.noise_level, window=self._window())
            latents = roll["latents"]
        images = self._decode(latents)
        out = self.reward.score(images, rep)
        rewards = torch.tensor(out.rewards, dtype=torch.float32)
        adv = group_advantages(rewards, groups, global_std=c.global_std, clip=c.adv_clip)
        valid = [i for i in range(P * G) if not math.isnan(float(adv[i]))]
        self._dropped += (P * G) - int((~torch.isnan(rewards)).sum())
        opt, _ = self.role_optimizer("dit")
        opt.zero_grad(set_to_none=True)
        if not valid:
            log.warning("rl step %d: no image could be scored (%s); skipping the update", step, out.failures[0])
            metrics: dict[str, Any] = {}
        elif c.algorithm == "nft":
            metrics = self._nft_update(latents, text, shapes, adv, valid)
        else:
            metrics = self._grpo_update(roll, text, shapes, adv, valid)
        grad_norm = self.step_role("dit")
        if c.algorithm == "nft":
            decay = old_policy_decay(step + 1, flat=c.old_decay_flat, rate=c.old_decay_rate, cap=c.old_decay_max)
            from lensforge.stages.ema import ema_update_

            ema_update_(self.old, self.dit, decay)
            metrics["nft/old_decay"] = decay
        self._log_step(rows, rep, out, rewards, adv, metrics, grad_norm, step_seconds)
        return torch.tensor(float(metrics.get("loss", 0.0)))

    def _nft_update(self, latents: list[Tensor], text: TextFeatures, shapes: list[tuple[int, int]], adv: Tensor,
                    valid: list[int]) -> dict[str, Any]:
        c = self.config
        r = nft_reward_weight(adv, c.adv_clip)
        usable = max(1, int(math.floor(c.rollout_steps * c.timestep_fraction)))
        pairs: list[tuple[int, float]] = []
        for i in valid:
            sched = lens_sigmas(c.rollout_steps, int(shapes[i][0] * shapes[i][1]))[:usable]
            picks = torch.randperm(usable, generator=self.generator)[: c.train_timesteps]
            if len(picks) < c.train_timesteps:  # fewer schedule steps than timesteps asked: draw with repetition
                picks = torch.randint(0, usable, (c.train_timesteps,), generator=self.generator)
            pairs += [(i, float(sched[int(k)])) for k in picks]
        totals: dict[str, float] = {}
        n_total = len(pairs)
        for start in range(0, n_total, c.micro_batch):
            chunk = pairs[start:start + c.micro_batch]
            idx = [i for i, _ in chunk]
            x0, mb_shapes, lens = tokens_of([latents[i] for i in idx])
            x0 = x0.float().to(self.device)
            sig = torch.tensor([t for _, t in chunk], dtype=torch.float32)
            noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
            x_t = add_noise(x0, noise, sig, lens)
            mb_text = text.select(idx)
            # the policy is the velocity the rollouts followed: with rollout_guidance > 1, the norm-rescaled CFG
            # velocity (conditional and unconditional branches in one packed call), for θ, old and reference alike
            g = c.rollout_guidance
            v_theta = guided_velocity(self.dit, x_t, mb_shapes, sig, mb_text, guidance_scale=g)
            with torch.no_grad():
                v_old = guided_velocity(self.old, x_t, mb_shapes, sig, mb_text, guidance_scale=g)
                v_ref = (guided_velocity(self.reference, x_t, mb_shapes, sig, mb_text, guidance_scale=g)
                         if "reference" in self._role_names else None)
            loss, m = nft_loss(v_theta, v_old, x_t, x0, sig, lens, r[idx], beta=c.nft_beta, adv_clip=c.adv_clip,
                               v_ref=v_ref, kl_beta=c.kl_beta)
            self.manual_backward(loss * (len(chunk) / n_total))
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * len(chunk) / n_total
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(chunk) / n_total
        return totals

    def _grpo_update(self, roll: dict[str, Any], text: TextFeatures, shapes: list[tuple[int, int]], adv: Tensor,
                     valid: list[int]) -> dict[str, Any]:
        c = self.config
        start, end = roll["window"]
        steps = list(range(start, end))
        if not steps:
            return {}
        lens_all = torch.tensor([h * w for h, w in shapes], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens_all.cumsum(0)])
        totals: dict[str, float] = {}
        for j, i_step in enumerate(steps):
            x_j, x_next = roll["states"][j], roll["states"][j + 1]
            s_all, sn_all, smax_all = roll["sigmas"][i_step], roll["sigmas"][i_step + 1], roll["sigmas"][1]
            for start_mb in range(0, len(valid), c.micro_batch):
                idx = valid[start_mb:start_mb + c.micro_batch]
                rows_tok = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in idx])
                mb_shapes = [shapes[i] for i in idx]
                lens = lens_all[idx]
                sig, sig_n, smax = s_all[idx], sn_all[idx], smax_all[idx]
                xj = x_j[rows_tok].to(self.device)
                xn = x_next[rows_tok].to(self.device)
                mb_text = text.select(idx)
                v = guided_velocity(self.dit, xj, mb_shapes, sig.to(self.device), mb_text, guidance_scale=c.rollout_guidance)
                _, mean, std, logp = sde_step(xj, v, sig, sig_n, lens, sigma_max=smax, noise_level=c.noise_level, prev=xn)
                ref_mean = None
                if "reference" in self._role_names:
                    with torch.no_grad():
                        v_ref = guided_velocity(self.reference, xj, mb_shapes, sig.to(self.device), mb_text,
                                                guidance_scale=c.rollout_guidance)
                        _, ref_mean, _, _ = sde_step(xj, v_ref, sig, sig_n, lens, sigma_max=smax,
                                                     noise_level=c.noise_level, prev=xn)
                loss, m = grpo_loss(logp, roll["log_probs"][j][idx].to(self.device), adv[idx].to(self.device),
                                    clip_range=c.clip_range, mean=mean, ref_mean=ref_mean, std=std, lens=lens,
                                    kl_beta=c.kl_beta)
                share = len(idx) / len(valid) / len(steps)  # the step's loss: mean over window steps and images
                self.manual_backward(loss * share)
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * share
                for k, val in m.items():
                    totals[k] = totals.get(k, 0.0) + float(val) * share
        return totals

    def _log_step(self, rows: list[dict[str, Any]], rep: list[dict[str, Any]], out: Any, rewards: Tensor, adv: Tensor,
                  metrics: dict[str, Any], grad_norm: float | None, step_seconds: float | None) -> None:
        ok = ~torch.isnan(rewards)
        logs: dict[str, float] = {
            "train/reward": float(rewards[ok].mean()) if bool(ok.any()) else float("nan"),
            "train/reward_std": float(rewards[ok].std(unbiased=False)) if int(ok.sum()) > 1 else 0.0,
            "train/dropped_images": float((~ok).sum()),
            "train/adv_abs_mean": float(adv[~torch.isnan(adv)].abs().mean()) if bool((~torch.isnan(adv)).any()) else 0.0,
            "train/zero_std_groups": float(sum(
                1 for g in range(len(rows)) if int(ok[g * self.config.group_size:(g + 1) * self.config.group_size].sum()) > 1
                and float(rewards[g * self.config.group_size:(g + 1) * self.config.group_size][
                    ok[g * self.config.group_size:(g + 1) * self.config.group_size]].std(unbiased=False)) < 1e-6)),
        }
        logs.update({k: float(v) for k, v in metrics.items()})
        if grad_norm is not None:
            logs["train/grad_norm"] = grad_norm
        self.log("train/reward", logs["train/reward"], prog_bar=True, batch_size=len(rep))
        if self.should_log_details():
            cats: dict[str, list[float]] = {}
            for r, row in zip(rewards.tolist(), rep):
                if not math.isnan(r):
                    cats.setdefault(str(row.get("category")), []).append(r)
            logs.update({f"train/reward/{k}": float(np.mean(v)) for k, v in cats.items()})
            logs.update({f"reward/{k}": float(v) for k, v in self.reward.stats().items()})
            if step_seconds is not None:
                logs["perf/step_seconds"] = step_seconds
            trainer = self._attached()
            if trainer is not None and trainer.optimizers:
                logs["train/lr"] = trainer.optimizers[0].param_groups[0]["lr"]
            self.log_dict({k: v for k, v in logs.items() if k != "train/reward" and not math.isnan(v)}, batch_size=len(rep))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lensforge"]["rl"] = {"dropped_images": int(self._dropped)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._dropped = int((checkpoint.get("lensforge", {}).get("rl") or {}).get("dropped_images", 0))


# ------------------------------------------------------------------------------------------ validation


class RLValidation(Callback):
    """Held-out prompts generated with the recipe's sampling settings and scored with the stage's reward,
    before training and every ``sampling.every_n_steps`` (and at the end); grids, ``summary.md`` and
    ``results.json`` under ``samples/step_*``, ``val/reward`` (+ per category and check kind) in MLflow."""

    def __init__(self, system: RLStage, recipe_cfg: Any, out_dir: Path, tracker: Any = None):
        self.system, self.cfg, self.out_dir, self.tracker = system, recipe_cfg.sampling, Path(out_dir), tracker
        self.last_step: int | None = None
        self.history: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == 0:
            self.run(trainer, 0)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.cfg.every_n_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0 and trainer.global_step != self.last_step:
            self.run(trainer, trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step != self.last_step:
            self.run(trainer, trainer.global_step)

    def run(self, trainer: Any, step: int) -> None:
        from lensforge.eval.report import summary_tables
        from lensforge.eval.run import TargetResult, generate_images, score_images, summarize
        from lensforge.eval.suites import Suite, expand
        from lensforge.fileio import atomic_path, atomic_write_text
        from lensforge.sampling.sampler import make_grid

        self.last_step = step
        s = self.system
        n = s.config.val_prompts
        if not trainer.is_global_zero or n == 0 or not s.held_out_rows:
            return
        rows = s.held_out_rows[:n]
        suite = Suite("rl_held_out", expand(rows, [self.cfg.seed], (self.cfg.height, self.cfg.width)), "prompt_set")
        prompts = [str(r["prompt"]) for r in rows]
        images = generate_images(s.sampling_dit(), s.vae, s.text_encoder, suite.items, prompts, steps=self.cfg.steps,
                                 guidance_scale=self.cfg.guidance_scale, batch_size=len(rows))
        scored = score_images(s.reward, suite.items, images, prompts)
        summary = summarize(suite, scored)
        folder = self.out_dir / f"step_{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        grid = make_grid(images)
        with atomic_path(self.out_dir / f"step_{step:07d}.png") as tmp:
            grid.save(tmp, format="PNG")
        atomic_write_text(folder / "summary.md", summary_tables(suite, [TargetResult(
            "policy", scored, summary, sampling=f"{self.cfg.steps} steps, CFG {self.cfg.guidance_scale:g}")]))
        atomic_write_text(folder / "results.json", json.dumps({
            "step": step, "summary": summary,
            "images": [{"id": x.item.row["id"], "prompt": x.item.row["prompt"], "seed": x.item.seed,
                        "reward": None if math.isnan(x.reward) else x.reward, "items": x.items,
                        "failure": x.failure} for x in scored]}, indent=1, default=str))
        self.history.append({"step": step, "reward": summary["reward"], "categories": summary["categories"]})
        log.info("rl validation at step %d: held-out reward %s on %d prompts", step,
                 "n/a" if summary["reward"] is None else f"{summary['reward']:.3f}", len(rows))
        if self.tracker is not None:
            try:
                m = {"val/reward": summary["reward"]} if summary["reward"] is not None else {}
                m.update({f"val/reward/{k}": v for k, v in summary["categories"].items()})
                m.update({f"val/attribute/{k}": v for k, v in summary["attributes"].items()})
                self.tracker.log_metrics(m, step=step)
                self.tracker.log_image(grid, f"samples/step_{step:07d}.png")
            except Exception as e:  # tracking trouble must not stop training
                log.warning("could not log RL validation to MLflow: %s", e)

    def summary(self) -> dict[str, Any]:
        return {"validation": self.history, "held_out_reward": self.history[-1]["reward"] if self.history else None}


__all__ = ["RLStage", "RLValidation", "load_rows", "ode_rollout", "old_policy_decay", "sde_rollout", "split_rows"]
