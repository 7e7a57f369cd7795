"""The light halves of the stages: each stage's ``Config``, roles and recipe checks (no torch).

``lensforge validate`` checks recipes against these classes without importing torch or Lightning
(see :mod:`lensforge.interfaces.schema`); each stage class subclasses its schema, e.g.
``PretrainStage(PretrainSchema, StageSystem)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lensforge.interfaces.schema import StageSchema
from lensforge.recipe.plugin_config import (
    Decay, Fraction, NonNegativeFloat, NonNegativeInt, PluginRef, PositiveFloat, PositiveInt, plugin_field,
)
from lensforge.stages.roles import DEFAULT_ROLES, RoleSpec, check_roles


@dataclass(kw_only=True)
class SystemConfig:
    """Settings of the trunk shared by every stage (a stage's ``Config`` extends this)."""

    ema_decay: Decay = 0.999
    """EMA decay of the EMA'd roles' weights (0 = no EMA)."""
    ema_warmup: bool = True
    """Use ``min(decay, (1+t)/(10+t))`` early in training."""
    sample_with_ema: bool = True
    """Validation samples (and exports) use the EMA weights."""
    vae_sample_posterior: bool = False
    """Encode images with a posterior sample instead of the mode (VAEs that have one)."""
    save_frozen: Literal["auto", "always", "never"] = "auto"
    """Store the frozen VAE/text-encoder weights in checkpoints (``auto``: each one ≤ ``frozen_save_max_params``)."""
    frozen_save_max_params: NonNegativeInt = 10_000_000
    """Size limit for ``save_frozen: auto``."""
    memo_features: NonNegativeInt = 0
    """Keep up to this many encoded prompts and latents in memory (0 = off); see the conditioner."""


class TrunkSchema(StageSchema):
    """What validation needs of every trunk stage: its roles and the role checks."""

    Config: ClassVar[type] = SystemConfig
    #: The DiT roles this stage holds and how each is treated (see :mod:`lensforge.stages.roles`).
    roles: ClassVar[dict[str, RoleSpec]] = DEFAULT_ROLES

    @classmethod
    def active_roles(cls, config: Any) -> dict[str, RoleSpec]:
        """The roles a run with stage config ``config`` holds (default: every declared role); a stage whose
        roles depend on its settings (RL's reference only with a KL term) overrides this."""
        return dict(cls.roles)

    @classmethod
    def check_recipe(cls, config: Any) -> list[tuple[str, str]]:
        """Recipe checks of the trunk (roles); stages extend it with their own."""
        return check_roles(cls.active_roles(config.stage.config), config, cls.plugin_name or cls.__name__)


class PretrainSchema(TrunkSchema):
    """Config and validation checks of the ``pretrain`` stage."""

    @dataclass(kw_only=True)
    class Config(SystemConfig):
        logit_mean: float = 0.0
        """Mean of the logit-normal σ distribution (before the resolution shift)."""
        logit_std: PositiveFloat = 1.0
        """Standard deviation of the logit-normal σ distribution."""
        resolution_shift: bool = True
        """Shift each sample's σ by its token count (more tokens → noisier), as SD3/FLUX."""
        shift_base_seq_len: PositiveInt = 256
        """Token count where the shift is ``shift_base``."""
        shift_max_seq_len: PositiveInt = 4096
        """Token count where the shift is ``shift_max``."""
        shift_base: float = 0.5
        """Shift (added to logit σ) at ``shift_base_seq_len`` tokens."""
        shift_max: float = 1.15
        """Shift at ``shift_max_seq_len`` tokens (linear in between and beyond)."""

    @classmethod
    def tiny_config(cls) -> Any:
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


class RLSchema(TrunkSchema):
    """Config, roles and validation checks of the ``rl`` stage (DiffusionNFT / Flow-GRPO)."""

    roles: ClassVar[dict[str, RoleSpec]] = {
        "dit": RoleSpec(trained=True, ema=True, saved=True, init="init_from", required=True),
        "old": RoleSpec(trained=False, ema=False, saved=True, init="role:dit"),
        "reference": RoleSpec(trained=False, ema=False, saved=False, init="init_from", required=True),
    }

    @dataclass(kw_only=True)
    class Config(SystemConfig):
        algorithm: Literal["nft", "grpo"] = "nft"
        """``nft`` = DiffusionNFT (Lens's choice: CFG-free deterministic rollouts from an EMA "old" policy, a
        reward-weighted positive/negative flow-matching loss, no log-probabilities); ``grpo`` = Flow-GRPO (SDE
        rollouts with log-probabilities, group-relative advantages, clipped ratio, KL to the reference)."""
        prompts: str = "???"
        """The prompt set: a ``.jsonl`` file (``lensforge data prompts`` / ``data rubrics``), or ``synthetic:N``
        (N taxonomy prompts drawn from ``prompt_world``, written into the run folder)."""
        prompt_world: dict[str, Any] = field(default_factory=dict)
        """``synthetic:N``: synthetic-world options (``SyntheticWorld.Config`` fields; default the default world)."""
        prompt_categories: list[str] = field(default_factory=list)
        """``synthetic:N``: taxonomy categories to draw (empty = all)."""
        prompt_seed: int = 0
        """``synthetic:N``: seed of the prompts."""
        held_out_fraction: Fraction = 0.2
        """Share of the prompt set held out (seeded hash of each row id): RL never trains on these; validation
        and ``lensforge eval`` score them (``<run>/prompts/held_out.jsonl``)."""
        split_seed: int = 0
        """Seed of the train / held-out split."""
        reward: PluginRef = plugin_field("reward", {"name": "verifier"})
        """Reward plugin (``verifier``, ``rubric_judge``, ``mix`` …)."""
        prompts_per_step: PositiveInt = 8
        """Prompt groups per optimizer step (Lens: 48)."""
        group_size: PositiveInt = 8
        """Images per prompt, each at its own size drawn from ``data.resolution`` (Lens: 24 at different resolutions)."""
        rollout_steps: PositiveInt = 10
        """Sampler steps of a rollout (the Lens scheduler's σ at each image's own size)."""
        rollout_guidance: NonNegativeFloat = 1.0
        """CFG scale of the rollouts (DiffusionNFT: 1.0, CFG-free; Flow-GRPO: 4.5)."""
        train_timesteps: PositiveInt = 2
        """NFT: noise levels per image per step, drawn from the rollout schedule's first ``timestep_fraction``."""
        timestep_fraction: Fraction = 0.99
        """Share of the rollout schedule's steps that are trained (the last, sharpest steps are left out)."""
        micro_batch: PositiveInt = 32
        """Images per training forward (gradients accumulate over the whole rollout batch)."""
        adv_clip: PositiveFloat = 5.0
        """Advantages are clipped to ±this (NFT maps them to r ∈ [0, 1] through it)."""
        global_std: bool = True
        """Normalise advantages by the std of the whole batch (flow_grpo's default) instead of each group's."""
        nft_beta: PositiveFloat = 1.0
        """NFT: mixing of trained and old velocity in the implicit positive/negative policies (0.1 for multi-reward)."""
        old_decay_flat: NonNegativeInt = 0
        """NFT: steps before the old policy starts lagging the trained one (its EMA decay is 0 before)."""
        old_decay_rate: NonNegativeFloat = 0.001
        """NFT: increase of the old policy's decay per step after ``old_decay_flat``."""
        old_decay_max: Decay = 0.5
        """NFT: cap of the old policy's decay: ``decay = min(max(step − flat, 0)·rate, max)``."""
        kl_beta: NonNegativeFloat = 0.0001
        """Weight of the pull to the frozen reference (NFT: ‖v_θ − v_ref‖²; GRPO: the step-mean KL); 0 = no reference."""
        noise_level: PositiveFloat = 0.7
        """GRPO: SDE noise level ``a`` of ``σ_t = a·sqrt(σ/(1 − σ))``."""
        sde_window_size: NonNegativeInt = 2
        """GRPO: SDE (and trained) steps per rollout, a window at a random start (0 = every step but the last)."""
        sde_window_range: tuple[NonNegativeInt, NonNegativeInt] = (0, 5)
        """GRPO: the window starts in ``[range[0], range[1] − size]``."""
        clip_range: PositiveFloat = 0.0001
        """GRPO: PPO clip range ε of the importance ratio."""
        val_prompts: NonNegativeInt = 16
        """Held-out prompts generated and scored before training and every ``sampling.every_n_steps`` (0 = off)."""
        ema_decay: Decay = 0.0
        """EMA of the trained policy for sampling/export (0 = sample the trained weights)."""

    @classmethod
    def tiny_config(cls) -> Any:
        return cls.Config(prompts="synthetic:16", prompts_per_step=2, group_size=2, rollout_steps=2)

    @classmethod
    def active_roles(cls, config: Any) -> dict[str, RoleSpec]:
        roles = {"dit": cls.roles["dit"]}
        if config.algorithm == "nft":
            roles["old"] = cls.roles["old"]
        if config.kl_beta > 0:
            roles["reference"] = cls.roles["reference"]
        return roles

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        if not (config.prompts.endswith((".jsonl", ".json")) or config.prompts.startswith("synthetic:")):
            out.append(("prompts", f"give a prompt-set .jsonl file or synthetic:N, got '{config.prompts}'"))
        elif config.prompts.startswith("synthetic:"):
            n = config.prompts.partition(":")[2]
            if not n.isdigit() or int(n) < 2:
                out.append(("prompts", f"synthetic:N needs an integer N >= 2, got '{config.prompts}'"))
        if config.algorithm == "grpo":
            lo, hi = config.sde_window_range
            if hi < lo + config.sde_window_size:
                out.append(("sde_window_range", f"must span at least sde_window_size ({config.sde_window_size}) steps"))
            if hi > config.rollout_steps - 1 and config.sde_window_size:
                out.append(("sde_window_range", f"ends after the last trainable step ({config.rollout_steps - 1})"))
        if config.group_size < 2:
            out.append(("group_size", "group-relative advantages need at least 2 images per prompt"))
        return out

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        """The prompt-set file must exist on this machine (skipped by ``validate --portable``)."""
        import os

        p = config.prompts
        if p.endswith((".jsonl", ".json")) and not os.path.isfile(os.path.expanduser(p)):
            return [("prompts", f"prompt set '{p}' does not exist")]
        return []


__all__ = ["PretrainSchema", "RLSchema", "SystemConfig", "TrunkSchema"]
