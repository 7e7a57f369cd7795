"""The light halves of the stages: each stage's ``Config``, roles and recipe checks (no torch).

``lensforge validate`` checks recipes against these classes without importing torch or Lightning
(see :mod:`lensforge.interfaces.schema`); each stage class subclasses its schema, e.g.
``PretrainStage(PretrainSchema, StageSystem)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from lensforge.interfaces.schema import StageSchema
from lensforge.recipe.plugin_config import Decay, NonNegativeInt, PositiveFloat, PositiveInt
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
    def check_recipe(cls, config: Any) -> list[tuple[str, str]]:
        """Recipe checks of the trunk (roles); stages extend it with their own."""
        return check_roles(cls.roles, config, cls.plugin_name or cls.__name__)


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


__all__ = ["PretrainSchema", "SystemConfig", "TrunkSchema"]
