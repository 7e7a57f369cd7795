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
from typing import Literal

from lensforge.data.config import DataConfig
from lensforge.recipe.plugin_config import PluginRef, plugin_field


@dataclass(kw_only=True)
class ModelConfig:
    """The model plugins a stage composes."""

    dit: PluginRef = plugin_field("dit")
    """The denoiser (``lens_mmdit`` …)."""
    vae: PluginRef = plugin_field("vae")
    """Image ↔ latent autoencoder (``flux2``, ``tiny_ae`` …)."""
    text_encoder: PluginRef = plugin_field("text_encoder")
    """Frozen prompt encoder (``gpt_oss``, ``hf_encoder`` …)."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warmup and a decay schedule."""

    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of ``lr`` (cosine/linear)."""


@dataclass(kw_only=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    max_steps: int = 1000
    """Optimizer steps to train for."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """Device type."""
    devices: int | str = 1
    """Devices per node (an int or ``auto``)."""
    num_nodes: int = 1
    """Nodes (multi-node runs through torchrun/SLURM)."""
    strategy: Literal["auto", "single", "ddp", "fsdp2"] = "auto"
    """``fsdp2`` = FSDP2 ``fully_shard`` through Lightning's ModelParallelStrategy."""
    precision: str = "32-true"
    """Lightning precision (``bf16-mixed`` on GPU)."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation."""
    gradient_clip_val: float | None = 1.0
    """Clip the global gradient norm (None = off)."""
    log_every_n_steps: int = 10
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

    every_n_steps: int = 500
    """Save every N optimizer steps (and at the end)."""
    keep_last: int = 3
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

    every_n_steps: int = 0
    """Sample a grid every N steps (0 = only at the end)."""
    prompts: list[str] = field(default_factory=list)
    """Prompts to sample (empty = the data source's evaluation prompts)."""
    num_prompts: int = 8
    """How many evaluation prompts to take when ``prompts`` is empty."""
    steps: int = 20
    """Sampler steps."""
    guidance_scale: float = 4.0
    """Classifier-free guidance scale (norm-rescaled, as Lens)."""
    height: int = 256
    """Sample height in pixels."""
    width: int = 256
    """Sample width in pixels."""
    seed: int = 0
    """Sampling seed."""


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
