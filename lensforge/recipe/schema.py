"""The typed core schema of a recipe (struct mode: unknown keys are errors).

A recipe is one stage run::

    name: tiny_pretrain
    stage: {name: pretrain, ...}          # stage plugin + its Config
    model: {dit: {name: lens_mmdit, ...}, vae: {...}, text_encoder: {...}}
    data: {source: {name: synthetic, ...}, captions: ..., resolution: ..., packing: ..., loader: ...}
    optim: ...; trainer: ...; checkpoint: ...; tracking: ...; sampling: ...

Section dataclasses live next to the code that uses them where that code owns them
(``lensforge.data.config``); the rest are here. Field docstrings are the documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from lensforge.data.config import DataConfig
from lensforge.recipe.plugin_config import (
    Decay, Fraction, NonNegativeFloat, NonNegativeInt, PluginRef, PositiveFloat, PositiveInt, Range, plugin_field,
)


@dataclass(kw_only=True)
class RoleConfig:
    """Where an extra DiT role of a stage (``reference``, ``teacher``, ``critic`` …) comes from."""

    init_from: str | None = None
    """Weights for this role: a checkpoint, a run folder, an exported or official Lens folder (None = the
    stage's default for the role, usually the run's ``init_from``)."""
    dit: PluginRef | None = plugin_field("dit", optional=True)
    """A different DiT plugin node for this role (None = the same as ``model.dit``)."""


@dataclass(kw_only=True)
class ModelConfig:
    """The model plugins a stage composes."""

    dit: PluginRef = plugin_field("dit")
    """The denoiser (``lens_mmdit`` …)."""
    vae: PluginRef = plugin_field("vae")
    """Image ↔ latent autoencoder (``flux2``, ``tiny_ae`` …)."""
    text_encoder: PluginRef = plugin_field("text_encoder")
    """Frozen prompt encoder (``gpt_oss``, ``hf_encoder`` …)."""
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    """Extra DiT roles the stage uses besides ``dit`` (e.g. ``reference`` for RL, ``teacher``/``critic`` for
    distillation), each optionally with its own ``init_from`` or DiT node; which roles exist and whether each
    is trained, frozen, EMA'd or saved is the stage's declaration (``lensforge plugins stage NAME``)."""


@dataclass(kw_only=True)
class RoleOptimConfig:
    """Optimizer settings of one trained role that differ from the ``optim`` section's."""

    lr: PositiveFloat | None = None
    """Peak learning rate of this role (None = ``optim.lr``)."""
    weight_decay: NonNegativeFloat | None = None
    """Weight decay of this role (None = ``optim.weight_decay``)."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warmup and a decay schedule."""

    lr: PositiveFloat = 1e-4
    """Peak learning rate."""
    betas: tuple[Decay, Decay] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW decoupled weight decay."""
    eps: PositiveFloat = 1e-8
    """AdamW epsilon."""
    warmup_steps: NonNegativeInt = 0
    """Linear warmup steps."""
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: Fraction = 0.1
    """Final LR as a fraction of ``lr`` (cosine/linear)."""
    roles: dict[str, RoleOptimConfig] = field(default_factory=dict)
    """Per trained role overrides (``critic: {lr: 2e-5}``); roles not listed use the values above."""


@dataclass(kw_only=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    max_steps: PositiveInt = 1000
    """Optimizer steps to train for."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """Device type."""
    devices: PositiveInt | str = 1
    """Devices per node (an int or ``auto``)."""
    num_nodes: PositiveInt = 1
    """Nodes (multi-node runs through torchrun/SLURM)."""
    strategy: Literal["auto", "single", "ddp", "fsdp2"] = "auto"
    """``fsdp2`` = FSDP2 ``fully_shard`` through Lightning's ModelParallelStrategy."""
    precision: str = "32-true"
    """Lightning precision (``bf16-mixed`` on GPU)."""
    accumulate_grad_batches: PositiveInt = 1
    """Gradient accumulation."""
    gradient_clip_val: PositiveFloat | None = 1.0
    """Clip the global gradient norm (None = off)."""
    log_every_n_steps: PositiveInt = 10
    """Metric logging interval."""
    activation_checkpointing: bool = False
    """Recompute each DiT block in the backward pass."""
    compile: bool = False
    """``torch.compile`` the DiT blocks."""
    deterministic: bool = False
    """Deterministic algorithms (slower; for exact-resume tests)."""
    progress_bar: bool = True
    """Show a progress bar."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Periodic, atomic checkpoints with keep-last-k."""

    every_n_steps: NonNegativeInt = 500
    """Save every N optimizer steps (and at the end)."""
    keep_last: PositiveInt = 3
    """How many recent checkpoints to keep."""
    dir: str | None = None
    """Folder (default ``<output_dir>/checkpoints``)."""


@dataclass(kw_only=True)
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    """Log to MLflow."""
    tracking_uri: str | None = None
    """MLflow URI; None = SQLite file under the run's output folder."""
    experiment: str = "lensforge"
    """MLflow experiment name."""
    log_checkpoints: bool = True
    """Record checkpoint locations (and log single-file checkpoints as artifacts)."""


@dataclass(kw_only=True)
class SamplingConfig:
    """Validation sampling during training (and the defaults of ``lensforge sample``)."""

    every_n_steps: NonNegativeInt = 0
    """Sample a grid every N steps (0 = only at the end)."""
    prompts: list[str] = field(default_factory=list)
    """Prompts to sample (empty = the data source's evaluation prompts)."""
    num_prompts: NonNegativeInt = 8
    """How many evaluation prompts to take when ``prompts`` is empty."""
    steps: PositiveInt = 20
    """Sampler steps."""
    guidance_scale: NonNegativeFloat = 4.0
    """Classifier-free guidance scale (norm-rescaled, as Lens)."""
    height: PositiveInt = 256
    """Sample height in pixels."""
    width: PositiveInt = 256
    """Sample width in pixels."""
    seed: int = 0
    """Sampling seed."""
    reward: PluginRef = plugin_field("reward", {"name": "verifier"})
    """Reward plugin scoring the validation samples (registry kind ``reward``; the synthetic world's ``verifier``)."""
    reasoner: PluginRef | None = plugin_field("reasoner", optional=True)
    """Prompt rewriter in front of the DiT for ``lensforge sample`` from this run's checkpoints and exports (registry
    kind ``reasoner``, e.g. ``{name: synthetic_world}``); None = prompts unchanged. Validation samples are not rewritten."""


@dataclass(kw_only=True)
class RecipeConfig:
    """A whole recipe: one stage run."""

    name: str = "run"
    """Run name (used in the output folder and MLflow)."""
    seed: int = 0
    """Global seed."""
    output_dir: str = "runs/${name}"
    """Where checkpoints, samples and the MLflow store go."""
    stage: PluginRef = plugin_field("stage", {"name": "pretrain"})
    """The stage plugin node (``pretrain``; later ``rl``, ``distill``)."""
    model: ModelConfig
    """The DiT, VAE and text-encoder plugin nodes."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    init_from: str | None = None
    """Initialise weights from a checkpoint, an exported folder or an official Lens folder."""
    resume: str = "auto"
    """``auto`` = resume from the newest checkpoint in the run folder if any; ``never``; or a path."""
