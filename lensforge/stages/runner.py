"""``PretrainStage.run``: everything between a validated recipe and ``Trainer.fit``.

Order matters for crash safety: the output folder, the resolved recipe and resume discovery come
first; models, data and the MLflow run next; then ``fit`` (checkpoints are atomic, so a crash at
any point leaves the previous checkpoint intact, and re-running the same command resumes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.stages.pretrain")


def _rank_from_env() -> int:
    for k in ("RANK", "GLOBAL_RANK", "SLURM_PROCID"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    if os.environ.get("LOCAL_RANK", "").isdigit() and os.environ.get("NODE_RANK", "0") == "0":
        return int(os.environ["LOCAL_RANK"])
    return 0


def setup_logging(output_dir: Path) -> None:
    """INFO logs of ``lensforge.*`` to stderr and ``<output_dir>/train.log`` (rank 0; others WARNING)."""
    logger = logging.getLogger("lensforge")
    rank = _rank_from_env()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [rank{rank}] %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_lensforge", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h._lensforge = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler) and getattr(h, "_lensforge", False)]:
        logger.removeHandler(old)
        old.close()
    if rank == 0:
        fh = logging.FileHandler(output_dir / "train.log")
        fh.setFormatter(fmt)
        fh._lensforge = True  # type: ignore[attr-defined]
        logger.addHandler(fh)
    logger.propagate = False


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_dit(recipe_cfg: Any) -> torch.nn.Module:
    """The DiT with the trainer's activation-checkpointing switch applied to its Config."""
    ref = recipe_cfg.model.dit
    overrides = {}
    if recipe_cfg.trainer.activation_checkpointing:
        if not any(f.name == "activation_checkpointing" for f in dataclasses.fields(ref.config)):
            raise LensforgeError(f"trainer.activation_checkpointing: DiT '{ref.name}' has no activation_checkpointing option")
        overrides["activation_checkpointing"] = True
    return ref.build(**overrides)


def _apply_init_from(dit: torch.nn.Module, path: str) -> None:
    from lensforge.export import init_from_path

    weights = init_from_path(path)
    sd = weights.get("dit") or weights.get("transformer")
    if not sd:
        raise LensforgeError(f"init_from: '{path}' has no DiT/transformer weights (found {', '.join(weights) or 'nothing'})")
    missing, unexpected = dit.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise LensforgeError(
            f"init_from: '{path}' does not match the recipe's DiT: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    log.info("init_from: DiT weights loaded from %s", path)


def build_datamodule(recipe_cfg: Any, downsample: int) -> Any:
    from lensforge.data import build_datamodule as _build

    return _build(recipe_cfg.data, downsample=downsample, seed=recipe_cfg.seed)


def tracking_records(recipe: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(params, tags, text artifacts) to log for ``recipe``: flattened recipe, provenance, git SHA."""
    from lensforge import registry
    from lensforge.tracking.mlflow_logger import flatten, git_revision

    params = flatten(recipe.data)
    tags: dict[str, str] = {"lensforge.recipe_path": str(recipe.path)}
    if recipe.overrides:
        tags["lensforge.overrides"] = " ".join(recipe.overrides)
    for path, ref in recipe.plugins().items():
        try:
            prov = registry.get_spec(ref.kind, ref.name).provenance
        except Exception as e:  # escape-hatch names may have no spec
            prov = f"unknown ({e})"
        tags[f"plugin.{path}"] = f"{ref.kind}:{ref.name} [{prov}]"
    rev = git_revision(Path(__file__).resolve().parent)
    tags["git.revision"] = rev or "not a git checkout (or no commits)"
    from lensforge import __version__

    tags["lensforge.version"] = __version__
    return params, tags, {"recipe.yaml": recipe.to_yaml()}


def run_pretrain(stage_cls: type, recipe: Any) -> dict[str, Any]:
    import lightning as L

    from lensforge.distributed.strategy import build_strategy
    from lensforge.stages.callbacks import ValidationSampling
    from lensforge.stages.checkpointing import AtomicCheckpoint, resolve_resume
    from lensforge.tracking.mlflow_logger import MLflowTracker

    cfg = recipe.config
    t0 = time.time()
    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    rank = _rank_from_env()
    ckpt_dir = Path(cfg.checkpoint.dir).expanduser().resolve() if cfg.checkpoint.dir else out / "checkpoints"
    resume_path = resolve_resume(cfg.resume, ckpt_dir)
    if rank == 0:
        _atomic_write(out / "recipe.yaml", recipe.to_yaml())
    log.info("run '%s' -> %s (%s)", cfg.name, out,
             f"resuming from {resume_path}" if resume_path else "fresh start")

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tc = cfg.trainer
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    dit = build_dit(cfg)
    if cfg.init_from and resume_path is None:
        _apply_init_from(dit, cfg.init_from)
    vae = cfg.model.vae.build()
    text_encoder = cfg.model.text_encoder.build()
    cache = None
    if cfg.data.cache_dir:
        from lensforge.data.cache import FeatureCache

        cache = FeatureCache.open(cfg.data.cache_dir, cfg.model.vae, cfg.model.text_encoder)
        log.info("feature cache: %s", cfg.data.cache_dir)
    module = stage_cls(cfg.stage.config, recipe=recipe, dit=dit, vae=vae, text_encoder=text_encoder, feature_cache=cache)
    n_train = sum(p.numel() for p in dit.parameters())
    log.info("models: dit=%s (%.2fM params, trained), vae=%s, text_encoder=%s (frozen; stored in checkpoints: %s)",
             cfg.model.dit.name, n_train / 1e6, cfg.model.vae.name, cfg.model.text_encoder.name,
             ", ".join(k for k, v in module._saved_frozen.items() if v) or "neither")
    dm = build_datamodule(cfg, downsample=int(vae.downsample_factor))

    tracker = None
    if cfg.tracking.enabled:
        params, tags, artifacts = tracking_records(recipe)
        tracker = MLflowTracker(output_dir=out, experiment=cfg.tracking.experiment, run_name=cfg.name,
                                tracking_uri=cfg.tracking.tracking_uri, resume=resume_path is not None,
                                params=params, tags=tags, artifacts=artifacts)
    ckpt_cb = AtomicCheckpoint(ckpt_dir, every_n_steps=cfg.checkpoint.every_n_steps, keep_last=cfg.checkpoint.keep_last,
                               tracker=tracker if cfg.tracking.log_checkpoints else None, log_files=False)
    sampling_cb = ValidationSampling(cfg, out / "samples", tracker=tracker, all_ranks=tc.strategy == "fsdp2")
    callbacks: list[Any] = [ckpt_cb, sampling_cb]
    if tc.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=1))
    accelerator = "gpu" if tc.accelerator == "cuda" else tc.accelerator
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=build_strategy(tc),
        precision=tc.precision,
        max_steps=tc.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val,
        log_every_n_steps=tc.log_every_n_steps,
        deterministic=tc.deterministic,
        enable_checkpointing=False,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=tracker if tracker is not None else False,
        callbacks=callbacks,
        default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume_path) if resume_path else None)
    if tracker is not None and trainer.is_global_zero:
        tracker.log_metrics({"run/wall_seconds": time.time() - t0}, step=trainer.global_step)
    summary = {
        "output_dir": str(out),
        "global_step": int(trainer.global_step),
        "checkpoint": str(ckpt_cb.saved[-1]) if ckpt_cb.saved else (str(resume_path) if resume_path else None),
        "mlflow_run_id": tracker.run_id if tracker is not None else None,
        "tracking_uri": tracker.tracking_uri if tracker is not None else None,
        "verifier_score": sampling_cb.last_score,
        "samples": sampling_cb.history,
        "wall_seconds": time.time() - t0,
    }
    if trainer.is_global_zero:
        import json

        _atomic_write(out / "summary.json", json.dumps(summary, indent=1))
        log.info("done: step %d in %.0fs; checkpoint %s; verifier score %s; MLflow run %s (%s)",
                 summary["global_step"], summary["wall_seconds"], summary["checkpoint"], summary["verifier_score"],
                 summary["mlflow_run_id"], summary["tracking_uri"])
    return summary


__all__ = ["build_dit", "run_pretrain", "setup_logging", "tracking_records"]
