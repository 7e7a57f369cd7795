"""The base system every training stage subclasses: a LightningModule holding the stage's roles.

A stage is **its Config and its objective** (``training_step``); this class does the rest:

* **roles** (:mod:`lensforge.stages.roles`): the DiTs the stage declares in ``roles``, registered as
  children when saved (state-dict prefix = role name), kept outside the state dict otherwise;
  EMA copies (``ema_<role>``) of EMA'd roles; the frozen VAE / text encoder (in checkpoints only
  when small);
* **the conditioner** (:mod:`lensforge.stages.conditioner`): ``self.encode_batch(batch)``;
* ``configure_model``: FSDP2, ``torch.compile`` and activation checkpointing for every role through
  :mod:`lensforge.distributed` (frozen roles and EMA copies are sharded but not compiled);
* ``configure_optimizers``: AdamW + warmup/decay from ``optim``, one parameter group per trained
  role (``optim.roles.<role>`` overrides lr / weight decay); with ``manual_optimization = True``
  one optimizer per trained role instead, stepped by :meth:`step_role`;
* EMA after every optimizer step; one noise generator per rank (``self.generator``), its state and
  every rank's data-loader position saved in checkpoints and restored on resume.

It receives the recipe sections it needs (:class:`Sections`), never the whole recipe, and uses no
private Lightning attribute. See ``lensforge/stages/README.md`` for how to write a stage.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, Stage, TextFeatures
from lensforge.stages.conditioner import Conditioner
from lensforge.stages.ema import copy_weights_, ema_decay_at, ema_update_
from lensforge.stages.roles import MAIN_ROLE, save_frozen_decision
from lensforge.stages.schemas import SystemConfig, TrunkSchema

log = logging.getLogger("lensforge.stages")

CKPT_VERSION = 1


@dataclass
class Sections:
    """The recipe sections a system reads (given by the harness; defaults for tests and notebooks)."""

    optim: Any = None
    """The ``optim`` section (:class:`lensforge.recipe.schema.OptimConfig`)."""
    trainer: Any = None
    """The ``trainer`` section (max_steps, precision, compile, clipping, logging interval …)."""
    seed: int = 0
    """The run's seed (the noise generator of rank r is seeded from it)."""
    record: dict[str, Any] = field(default_factory=dict)
    """The resolved recipe as plain data: stored in checkpoints so they can be rebuilt, never read here."""
    data: Any = None
    """The ``data`` section (stages that draw sizes from its resolution policy, e.g. RL rollouts)."""
    sampling: Any = None
    """The ``sampling`` section (validation settings)."""


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


def _num_params(m: torch.nn.Module | None) -> int:
    return 0 if m is None else sum(p.numel() for p in m.parameters())


class StageSystem(TrunkSchema, Stage):
    """Base LightningModule of the training stages (see the module docstring).

    Its validation half (``Config``, ``roles``, ``check_recipe``) is :class:`~lensforge.stages.schemas.TrunkSchema`.
    """

    #: ``True``: one optimizer per trained role, stepped by the stage through :meth:`step_role`.
    manual_optimization: ClassVar[bool] = False

    def __init__(self, config: Any, *, dits: dict[str, torch.nn.Module] | None = None,
                 dit: torch.nn.Module | None = None, vae: Any = None, text_encoder: Any = None,
                 feature_cache: Any = None, sections: Sections | None = None):
        super().__init__()
        self.config = config
        self.sections = sections or Sections()
        self.automatic_optimization = not self.manual_optimization
        self.roles = type(self).active_roles(config)  # this run's roles (may depend on the config)
        dits = dict(dits or {})
        if dit is not None:
            dits.setdefault(MAIN_ROLE, dit)
        unknown = sorted(set(dits) - set(self.roles))
        if unknown:
            raise LensforgeError(f"{type(self).__name__}: unknown role(s) {unknown}; its roles are {sorted(self.roles)}")
        self._role_names = [r for r in self.roles if r in dits]
        for name in self._role_names:
            if self.roles[name].saved:
                setattr(self, name, dits[name])  # a child: saved under "<role>.", moved by Lightning
            else:
                object.__setattr__(self, name, dits[name])  # not in the state dict; moved in ``setup``
            if not self.roles[name].trained:
                dits[name].requires_grad_(False)
                dits[name].eval()
        self._ema_names: list[str] = []
        if getattr(config, "ema_decay", 0) > 0:
            for name in self._role_names:
                if self.roles[name].ema and self.roles[name].trained:
                    e = copy.deepcopy(dits[name])
                    e.requires_grad_(False)
                    e.eval()
                    setattr(self, f"ema_{name}", e)
                    self._ema_names.append(name)
        mode = getattr(config, "save_frozen", "auto")
        limit = getattr(config, "frozen_save_max_params", 10_000_000)
        self._saved_frozen = {n: save_frozen_decision(mode, m, limit) for n, m in (("vae", vae), ("text_encoder", text_encoder))}
        for name, m in (("vae", vae), ("text_encoder", text_encoder)):
            if self._saved_frozen[name]:
                setattr(self, name, m)
            else:  # a 20B GPT-OSS is never copied into checkpoints (sharded ones included)
                object.__setattr__(self, name, m)
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        self.conditioner = Conditioner(vae, text_encoder, feature_cache=feature_cache,
                                       memo_features=getattr(config, "memo_features", 0),
                                       sample_posterior=getattr(config, "vae_sample_posterior", False))
        self.seed = int(self.sections.seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self._gen_states_to_load: Tensor | None = None
        self._t_last: float | None = None
        self._configured = False
        self._ema_initialised = False

    # ------------------------------------------------------------------ the harness's entry points

    @classmethod
    def run(cls, recipe: Any) -> dict[str, Any]:
        """Train this stage on ``recipe`` (:func:`lensforge.stages.harness.fit`)."""
        from lensforge.stages.harness import fit

        return fit(cls, recipe)

    @classmethod
    def preflight(cls, recipe: Any) -> list[str]:
        from lensforge.stages.preflight import preflight_reasons

        return preflight_reasons(recipe)

    @classmethod
    def build(cls, recipe: Any, run: Any = None) -> "StageSystem":
        """The system for ``recipe``: roles (with their initial weights), frozen encoders, conditioner.

        ``run`` (from :func:`lensforge.stages.harness.open_run`) tells whether a checkpoint will be
        resumed; without one (benchmarks, notebooks) every role gets its initial weights.
        """
        from lensforge.stages.roles import build_roles

        cfg = recipe.config
        resuming = run is not None and run.resume_path is not None
        dits = build_roles(cls.active_roles(cfg.stage.config), cfg.model, run_init_from=cfg.init_from, resuming=resuming,
                           activation_checkpointing=cfg.trainer.activation_checkpointing)
        vae = cfg.model.vae.build()
        text_encoder = cfg.model.text_encoder.build()
        cache = Conditioner.open_cache(cfg.data.cache_dir, cfg.model.vae, cfg.model.text_encoder)
        sections = Sections(optim=cfg.optim, trainer=cfg.trainer, seed=cfg.seed, record=dict(recipe.data), data=cfg.data,
                            sampling=cfg.sampling)
        system = cls(cfg.stage.config, dits=dits, vae=vae, text_encoder=text_encoder, feature_cache=cache, sections=sections)
        log.info("models: %s; vae=%s, text_encoder=%s (frozen; stored in checkpoints: %s)",
                 ", ".join(system.describe_roles()), cfg.model.vae.name, cfg.model.text_encoder.name,
                 ", ".join(k for k, v in system._saved_frozen.items() if v) or "neither")
        return system

    @classmethod
    def datamodule(cls, recipe: Any, system: "StageSystem") -> Any:
        """The training data: packed mixed-resolution batches of the recipe's ``data`` section."""
        from lensforge.data import build_datamodule

        return build_datamodule(recipe.config.data, downsample=int(system.vae.downsample_factor), seed=recipe.config.seed)

    def callbacks(self, recipe: Any, run: Any) -> list[Any]:
        """Extra callbacks of this stage (default: validation sampling of ``sampling``)."""
        from lensforge.stages.callbacks import ValidationSampling

        return [ValidationSampling(recipe.config, run.out / "samples", tracker=run.tracker,
                                   all_ranks=recipe.config.trainer.strategy == "fsdp2")]

    def summary(self) -> dict[str, Any]:
        """Stage-specific entries for ``summary.json``."""
        return {}

    # ------------------------------------------------------------------ roles

    def role(self, name: str) -> torch.nn.Module:
        """The module of role ``name``."""
        if name not in self._role_names:
            raise LensforgeError(f"{type(self).__name__} has no '{name}' role (it has {self._role_names})")
        return getattr(self, name)

    def trained_roles(self) -> list[str]:
        return [n for n in self._role_names if self.roles[n].trained]

    def extra_role_parameters(self, name: str) -> list[torch.nn.Parameter]:
        """Parameters of stage-owned modules trained with role ``name`` by its optimizer (default none; the
        distillation stage's adversarial head trains with the critic)."""
        return []

    def describe_roles(self) -> list[str]:
        out = []
        for n in self._role_names:
            s = self.roles[n]
            what = "trained" if s.trained else "frozen"
            extras = [x for x, on in (("EMA", n in self._ema_names), ("saved", s.saved)) if on]
            out.append(f"{n} ({_num_params(getattr(self, n)) / 1e6:.2f}M params, {what}{', ' + ', '.join(extras) if extras else ''})")
        return out

    def sampling_dit(self, name: str = MAIN_ROLE) -> torch.nn.Module:
        """The DiT used for sampling: the EMA copy when there is one and ``sample_with_ema``."""
        if name in self._ema_names and getattr(self.config, "sample_with_ema", True):
            return getattr(self, f"ema_{name}")
        return getattr(self, name)

    def encode_batch(self, batch: DataBatch) -> tuple[list[Tensor], TextFeatures]:
        """Latents (per sample ``[C, h, w]``) and text features of a batch (:class:`Conditioner`)."""
        return self.conditioner.encode(batch, device=self.device, generator=self.generator)

    def _attached(self) -> Any:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a Trainer (unit tests, notebooks)
            return None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        trainer = self._attached()
        if trainer is not None:
            dev = trainer.strategy.root_device
            for name in self._role_names:
                if not self.roles[name].saved:
                    getattr(self, name).to(dev)
            for name, m in (("vae", self.vae), ("text_encoder", self.text_encoder)):
                if m is not None and not self._saved_frozen[name]:
                    m.to(dev)
        rank = self.global_rank
        # one noise stream per rank: the same seed on every rank would correlate the noise
        self.generator.manual_seed(self.seed * 1_000_003 + 7919 * rank + 1)
        log.info("noise generator seeded for rank %d", rank)

    def configure_model(self) -> None:
        """FSDP2 (ModelParallelStrategy) and torch.compile are applied here, once devices exist."""
        if self._configured or not self._role_names:
            return
        self._configured = True
        trainer_cfg = self.sections.trainer
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None:
            from lensforge.distributed.fsdp import ParallelizeConfig, parallelize

            pcfg = ParallelizeConfig.from_trainer(trainer_cfg)
            frozen_cfg = dataclasses.replace(pcfg, compile=False, activation_checkpointing=False)
            dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
            for name in self._role_names:
                parallelize(getattr(self, name), dp_mesh, pcfg if self.roles[name].trained else frozen_cfg)
            for name in self._ema_names:
                parallelize(getattr(self, f"ema_{name}"), dp_mesh, frozen_cfg)
        elif trainer_cfg is not None and trainer_cfg.compile:
            for name in self.trained_roles():
                m = getattr(self, name)
                units = m.fsdp_units() if hasattr(m, "fsdp_units") else [m]
                for u in units:
                    u.compile(dynamic=True)
                log.info("torch.compile: %d unit(s) of role %s (dynamic shapes)", len(units), name)

    def _role_hparams(self, name: str) -> dict[str, Any]:
        oc = self.sections.optim
        over = (getattr(oc, "roles", None) or {}).get(name)
        lr = over.lr if over is not None and over.lr is not None else oc.lr
        wd = over.weight_decay if over is not None and over.weight_decay is not None else oc.weight_decay
        return {"lr": lr, "weight_decay": wd}

    def _adamw(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        oc = self.sections.optim
        params = [p for g in groups for p in g["params"]]
        # torch picks the multi-tensor (foreach) AdamW only for CUDA parameters; on the CPU the per-tensor
        # loop costs ~5% of a tiny-recipe step, so ask for foreach there too (same update, fewer kernels).
        foreach = True if params and all(p.device.type == "cpu" for p in params) else None
        return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay,
                                 foreach=foreach)

    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        oc = self.sections.optim
        total = self.sections.trainer.max_steps
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, total=total, warmup=oc.warmup_steps, schedule=oc.schedule, min_ratio=oc.min_lr_ratio))

    def configure_optimizers(self) -> Any:
        oc = self.sections.optim
        if oc is None:
            raise LensforgeError(f"{type(self).__name__}: no optim section (build the system through the harness)")
        groups = []
        for name in self.trained_roles():
            params = [p for p in getattr(self, name).parameters() if p.requires_grad]
            params += [p for p in self.extra_role_parameters(name) if p.requires_grad]
            if params:
                groups.append({"params": params, "role": name, **self._role_hparams(name)})
        if not groups:
            raise LensforgeError(f"{type(self).__name__}: no trainable parameters in roles {self._role_names}")
        log.info("optimizer: AdamW betas=%s, warmup=%d, schedule=%s (min ratio %g); %s", tuple(oc.betas),
                 oc.warmup_steps, oc.schedule, oc.min_lr_ratio,
                 "; ".join(f"{g['role']}: lr={g['lr']:g} wd={g['weight_decay']:g} {sum(p.numel() for p in g['params'])} params"
                           for g in groups))
        if self.manual_optimization:
            out = []
            for g in groups:
                opt = self._adamw([g])
                out.append({"optimizer": opt, "lr_scheduler": {"scheduler": self._scheduler(opt), "interval": "step"}})
            return out
        opt = self._adamw(groups)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self._scheduler(opt), "interval": "step", "frequency": 1}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if not isinstance(batch, DataBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return dataclasses.replace(
            batch,
            images=[im.to(device, non_blocking=True) for im in batch.images],
            latents=None if batch.latents is None else [l.to(device) for l in batch.latents],
            text=None if batch.text is None else batch.text.to(device),
        )

    # ------------------------------------------------------------------ optimisation and EMA

    def update_ema(self, roles: list[str] | None = None) -> None:
        """EMA step of the EMA'd roles (after their optimizer stepped)."""
        d = ema_decay_at(int(self.global_step), self.config.ema_decay, self.config.ema_warmup)
        for name in self._ema_names if roles is None else [r for r in roles if r in self._ema_names]:
            ema_update_(getattr(self, f"ema_{name}"), getattr(self, name), d)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._ema_names:
            self.update_ema()

    def role_optimizer(self, name: str) -> tuple[Any, Any]:
        """Manual optimization: ``(optimizer, LR scheduler)`` of trained role ``name``."""
        if not self.manual_optimization:
            raise LensforgeError(f"{type(self).__name__}: per-role optimizers need manual_optimization = True")
        trained = self.trained_roles()
        opts = self.optimizers()
        scheds = self.lr_schedulers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = scheds if isinstance(scheds, list) else [scheds]
        i = trained.index(name)
        return opts[i], scheds[i]

    def step_role(self, name: str, loss: Tensor | None = None) -> float | None:
        """Manual optimization: backward ``loss`` (or use the gradients already accumulated with
        ``manual_backward`` when None), clip, step role ``name``'s optimizer and LR schedule, update its EMA.
        Returns the gradient norm before clipping (None when clipping is off)."""
        opt, sched = self.role_optimizer(name)
        if loss is not None:
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
        norm = None
        clip = getattr(self.sections.trainer, "gradient_clip_val", None)
        if clip:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        if name in self._ema_names:
            self.update_ema([name])
        return norm

    # ------------------------------------------------------------------ logging

    def should_log_details(self) -> bool:
        """Whether this step's metrics reach the logger (Lightning forwards on-step values every
        ``log_every_n_steps`` optimizer steps). Each ``self.log`` costs ~1 ms on CPU, so detail metrics
        are computed and logged only on those steps (measured: tools/bench.py framework)."""
        trainer = self._attached()
        if trainer is None:
            return True
        n = max(1, int(trainer.log_every_n_steps))
        return (int(trainer.global_step) + 1) % n == 0

    def step_seconds(self) -> float | None:
        """Seconds since the previous call (the previous step), None the first time."""
        now = time.perf_counter()
        out = None if self._t_last is None else now - self._t_last
        self._t_last = now
        return out

    def common_metrics(self, batch: DataBatch, text: TextFeatures, step_seconds: float | None) -> dict[str, float]:
        """Batch composition, data statistics, step time and learning rate (detail metrics of every stage)."""
        logs: dict[str, Any] = {"train/num_samples": float(len(batch)), "train/txt_tokens": float(text.lengths.sum())}
        for k, v in (batch.stats or {}).items():
            try:
                logs[f"data/{k}"] = float(v)
            except (TypeError, ValueError):
                pass
        if step_seconds is not None:
            logs["perf/step_seconds"] = step_seconds
        trainer = self._attached()
        if trainer is not None and trainer.optimizers:
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    key = "train/lr" if len(trainer.optimizers) == 1 and len(opt.param_groups) == 1 else f"train/lr_{g.get('role', 'group')}"
                    logs[key] = g["lr"]
        return logs

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from lensforge.recipe.plugin_config import config_to_dict

        # plain data only (plugin nodes as {name: …}): checkpoints load with weights_only=True
        checkpoint["hyper_parameters"] = {"recipe": self.sections.record, "stage": config_to_dict(self.config)}
        trainer = self._attached()
        world = trainer.world_size if trainer is not None else 1
        states = self.generator.get_state()
        if world > 1:
            states = trainer.strategy.all_gather(states.clone()).cpu().reshape(world, -1)
        else:
            states = states[None]
        checkpoint["lensforge"] = {
            "version": CKPT_VERSION,
            "generator_states": states,
            "frozen_saved": dict(self._saved_frozen),
            "roles": {n: dataclasses.asdict(self.roles[n]) for n in self._role_names},
            "global_step": int(self.global_step),
        }
        if world > 1:
            # Lightning stores rank 0's data-loader state only; every rank's position is kept here
            dl = trainer.train_dataloader
            own = dl.state_dict() if hasattr(dl, "state_dict") else None
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, own)
            checkpoint["lensforge"]["loader_states"] = gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lensforge", {})
        loader_states = meta.get("loader_states")
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        trainer = self._attached()
        if loader_states is not None and trainer is not None and fit_state.get("combined_loader"):
            rank, ws = self.global_rank, trainer.world_size
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
        missing = [f"{n}." for n in self._role_names if self.roles[n].saved and not any(k.startswith(f"{n}.") for k in sd)]
        if missing and sd:
            raise LensforgeError(f"checkpoint has no weights under {missing}")

    def on_train_start(self) -> None:
        states = self._gen_states_to_load
        if states is not None:
            rank, ws = self.global_rank, self.trainer.world_size
            if states.shape[0] == ws:
                # a fresh tensor: set_state reads the storage from offset 0 (a row view of rank > 0 crashes)
                self.generator.set_state(states[rank].to(torch.uint8).cpu().clone())
                log.info("resume: restored the noise generator of rank %d", rank)
            else:
                log.warning("resume: checkpoint has %d noise-generator states for %d ranks; reseeding (not exact)",
                            states.shape[0], ws)
            self._gen_states_to_load = None
        if self._ema_names and self.global_step == 0 and not self._ema_initialised:
            for name in self._ema_names:
                copy_weights_(getattr(self, f"ema_{name}"), getattr(self, name))
            self._ema_initialised = True


__all__ = ["CKPT_VERSION", "Sections", "StageSystem", "SystemConfig", "lr_lambda"]
