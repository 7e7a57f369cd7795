"""The light halves of the stages: each stage's ``Config``, roles and recipe checks (no torch).

``lensforge validate`` checks recipes against these classes without importing torch or Lightning
(see :mod:`lensforge.interfaces.schema`); each stage class subclasses its schema, e.g.
``PretrainStage(PretrainSchema, StageSystem)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from lensforge.interfaces.schema import StageSchema
from lensforge.recipe.plugin_config import (
    Decay, Fraction, NonNegativeFloat, NonNegativeInt, PluginRef, PositiveFloat, PositiveInt, Range, plugin_field,
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

    @classmethod
    def inference_defaults(cls, config: Any) -> dict[str, Any]:
        """How a model this stage trained samples by default (recorded in exports, read by ``lensforge sample``):
        ``steps``, ``guidance_scale`` and, for a distilled model, ``variant``. Default: the recipe's ``sampling``."""
        return {"steps": int(config.sampling.steps), "guidance_scale": float(config.sampling.guidance_scale)}


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
        """CFG scale of the rollouts and of the policy the loss trains (DiffusionNFT: 1.0, CFG-free; Flow-GRPO: 4.5).
        Above 1, both algorithms train the norm-rescaled CFG velocity (Flow-GRPO's ``train.cfg``): a model RL'd at
        guidance g is meant to be sampled at g; CFG-free RL followed by CFG sampling amplifies every change to the
        conditional branch by the guidance scale (measured in docs/rl.md)."""
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


#: ``num_train_timesteps`` of Lens's ``FlowMatchEulerDiscreteScheduler`` (``lensforge.sampling.schedule``): the most
#: distinct sampler steps its scheduler gives.
SCHEDULER_TRAIN_TIMESTEPS = 1000

#: DiT config fields that change how a model runs, not its weights (allowed to differ between teacher and student).
RUNTIME_DIT_FIELDS = frozenset({"attention", "activation_checkpointing", "zero_init", "compile"})


def dit_architecture(ref: Any, node: dict[str, Any] | None = None) -> tuple[str, Any]:
    """``(plugin name, architecture)`` of a DiT plugin node — what must match for one DiT's weights to load into
    another. The architecture is the schema's ``resolve(config)`` when it has one (``lens_mmdit``: flavor defaults
    filled in), else the config without runtime-only fields. ``node`` (a recipe mapping, e.g. from another run's
    ``recipe.yaml``) is read with ``ref``'s schema when it names the same plugin."""
    from lensforge.recipe.plugin_config import build_config, config_to_dict

    schema, name, cfg = ref.schema, str(ref.name), ref.config
    if node is not None:
        name = str(node.get("name"))
        if name != ref.name:
            return name, None
        cfg = build_config(schema, {k: v for k, v in node.items() if k != "name"})
    resolve = getattr(schema, "resolve", None)
    if callable(resolve):
        try:
            return name, resolve(cfg)
        except Exception:  # noqa: BLE001 - an unresolvable config is compared field by field
            pass
    return name, {k: v for k, v in config_to_dict(cfg).items() if k not in RUNTIME_DIT_FIELDS}


class DistillSchema(TrunkSchema):
    """Config, roles and validation checks of the ``distill`` stage (Lens-Turbo: DMD2 + Decoupled-DMD +
    SenseFlow IDA + an adversarial head with R1)."""

    roles: ClassVar[dict[str, RoleSpec]] = {
        "teacher": RoleSpec(trained=False, ema=False, saved=False, init="init_from", required=True),
        "dit": RoleSpec(trained=True, ema=True, saved=True, init="role:teacher"),
        "critic": RoleSpec(trained=True, ema=False, saved=True, init="role:teacher"),
    }

    @dataclass(kw_only=True)
    class Config(SystemConfig):
        student_steps: Annotated[int, Range(ge=1, le=SCHEDULER_TRAIN_TIMESTEPS)] = 4
        """Sampler steps of the student (Lens-Turbo: 4). Its input noise levels are the Lens scheduler's σ at this
        step count for each sample's own token count (resolution-dependent mu), so ``lensforge sample`` with this
        many steps runs exactly the levels the student was trained on."""
        teacher_guidance: Annotated[float, Range(ge=1)] = 5.0
        """CFG scale α of the frozen teacher (Lens-RL samples at 5.0), norm-rescaled per token as Lens's sampler."""
        dm_weight: NonNegativeFloat = 1.0
        """Weight of the distribution-matching term ``x0_fake − x0_cond`` (Decoupled-DMD's regulariser; 0 = off)."""
        ca_weight: NonNegativeFloat = 1.0
        """Weight of the CFG-augmentation term ``(x0_cond − x0_cfg)/(α − 1)``, applied with the factor ``α − 1`` (the
        engine; 0 = off). ``dm_weight = ca_weight = 1`` is DMD2's gradient towards the CFG teacher."""
        dm_t_range: tuple[Fraction, Fraction] = (0.02, 0.98)
        """Range of the re-noising level t of the student's prediction for the DM/CA terms (uniform, per sample) …"""
        dm_t_shift: bool = True
        """… shifted by each sample's token count as pre-training's σ (larger images at higher noise)."""
        critic_updates_per_student: PositiveInt = 4
        """Two time-scale: optimizer steps of the fake-score critic between two student steps (DMD2: 4; SenseFlow: 9).
        Each optimizer step is one ``trainer.max_steps`` step."""
        critic_logit_mean: float = 0.0
        """Mean of the logit-normal σ of the critic's flow-matching loss on the student's samples (shifted as ``dm_t_shift``)."""
        critic_logit_std: PositiveFloat = 1.0
        """Standard deviation of that logit-normal σ."""
        backsim_prob: Fraction = 0.5
        """Probability that the student's input at a level below σ = 1 comes from backward simulation (its own Euler
        steps from noise, as at inference) instead of the noised real latents of the batch (DMD2 multi-step)."""
        ida: bool = True
        """SenseFlow's implicit distribution alignment: after each student step the critic moves towards the student's
        parameters, ``critic ← ida_decay·critic + (1 − ida_decay)·student``."""
        ida_decay: Decay = 0.98
        """Share of the critic kept by each IDA step (SenseFlow: 0.98)."""
        adversarial: bool = False
        """An adversarial head on the critic's features (one block's image tokens), trained with the critic on the
        batch's real latents vs the student's samples (non-saturating loss), with approximate R1."""
        gan_gen_weight: NonNegativeFloat = 0.03
        """Weight of the student's adversarial loss ``softplus(−D(x̂0 noised))`` (FastGen Flux/Qwen: 0.03)."""
        gan_disc_weight: NonNegativeFloat = 1.0
        """Weight of the head's loss ``softplus(D(fake)) + softplus(−D(real))`` in the critic step."""
        r1_weight: NonNegativeFloat = 100.0
        """Approximate R1 on real latents (FastGen): ``weight · mean (D(x) − D(x + α·ε))²`` (0 = off; FastGen 100–1000)."""
        r1_alpha: PositiveFloat = 0.1
        """Perturbation scale α of the approximate R1."""
        disc_feature_layer: int = -1
        """Index of the critic block (its ``fsdp_units()``) whose image-token output feeds the head (−1 = the middle one)."""
        ema_decay: Decay = 0.99
        """EMA decay of the student (sampled, exported)."""

    @classmethod
    def tiny_config(cls) -> Any:
        return cls.Config(ema_decay=0.9, critic_updates_per_student=1)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        lo, hi = config.dm_t_range
        if not 0.0 < lo < hi < 1.0:
            out.append(("dm_t_range", f"needs 0 < low < high < 1, got [{lo}, {hi}]"))
        if config.dm_weight == 0 and config.ca_weight == 0 and not (config.adversarial and config.gan_gen_weight > 0):
            out.append(("dm_weight", "every generator term is off (dm_weight, ca_weight and the adversarial loss): the student "
                                      "would not learn"))
        return out

    @classmethod
    def inference_defaults(cls, config: Any) -> dict[str, Any]:
        """Lens-Turbo's release: ``student_steps`` Euler steps of the Lens scheduler, no CFG (one forward per step)."""
        return {"steps": int(config.stage.config.student_steps), "guidance_scale": 1.0, "variant": "turbo"}

    @classmethod
    def check_recipe(cls, config: Any) -> list[tuple[str, str]]:
        out = super().check_recipe(config)
        sc = config.stage.config
        s = config.sampling
        if s.steps != sc.student_steps:
            out.append(("sampling.steps", f"the student samples in stage.student_steps = {sc.student_steps} steps (the "
                                          f"schedule it was trained on), but sampling.steps is {s.steps}: set "
                                          f"sampling.steps: {sc.student_steps} (validation grids, sample/export defaults)"))
        if s.guidance_scale != 1.0:
            out.append(("sampling.guidance_scale", f"the distilled student is CFG-free: set 1.0 (got {s.guidance_scale})"))
        student = dit_architecture(config.model.dit)
        for role in ("teacher", "critic"):
            rc = (getattr(config.model, "roles", None) or {}).get(role)
            if rc is not None and rc.dit is not None and dit_architecture(rc.dit) != student:
                out.append((f"model.roles.{role}.dit", f"the {role}'s DiT ({rc.dit.name}) differs from the student's "
                                                       f"(model.dit, {config.model.dit.name}): the student and the critic "
                                                       "start from the teacher's weights, so all three share one architecture"))
        return out


__all__ = ["DistillSchema", "PretrainSchema", "RLSchema", "SystemConfig", "TrunkSchema", "dit_architecture"]
