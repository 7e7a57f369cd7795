"""The run harness: opening a run and fitting a stage — the same for every stage.

:func:`open_run` (also used by loops without a Trainer: evaluation, the reasoner search)

1. creates the output folder and sets up logging (stderr + ``<output_dir>/train.log``);
2. discovers what to resume from (``resume: auto|never|PATH``) and writes the resolved
   ``recipe.yaml`` (rank 0);
3. seeds everything (``seed``) and switches deterministic algorithms on when asked;
4. creates the MLflow tracker (embedded SQLite store under the run folder by default; created
   lazily on rank 0, continued on resume) with the recipe, plugin provenance and git SHA;
5. returns a :class:`Run` that writes ``summary.json`` atomically at the end.

:func:`fit` then asks the stage class for its system (``build``), its data (``datamodule``) and its
callbacks, adds the atomic keep-last-k checkpoint callback and a progress bar, builds the Trainer
(strategy, precision, clipping, accumulation from ``trainer``) and fits. Order matters for crash
safety: nothing is trained before the resume point is known, checkpoints are atomic, and a crash at
any point leaves the previous checkpoint intact, so re-running the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from lensforge.distributed.env import global_rank
from lensforge.fileio import atomic_write_text
from lensforge.stages.checkpoint_io import UnsafeCheckpointError, resolve_resume

log = logging.getLogger("lensforge.run")

#: MLflow tags of every run opened inside :func:`nested_under` (a pipeline's stages are children of its run).
_PARENT_TAGS: dict[str, str] = {}


@contextlib.contextmanager
def nested_under(parent_run_id: str | None, **tags: str) -> Iterator[None]:
    """Runs opened inside this block are MLflow children of ``parent_run_id`` (tag ``mlflow.parentRunId``),
    with ``tags`` added — how :mod:`lensforge.stages.pipeline` nests one run per stage under its own."""
    old = dict(_PARENT_TAGS)
    if parent_run_id:
        _PARENT_TAGS["mlflow.parentRunId"] = str(parent_run_id)
    _PARENT_TAGS.update({k: str(v) for k, v in tags.items()})
    try:
        yield
    finally:
        _PARENT_TAGS.clear()
        _PARENT_TAGS.update(old)


def setup_logging(output_dir: Path) -> None:
    """INFO logs of ``lensforge.*`` to stderr and ``<output_dir>/train.log`` (rank 0; others WARNING)."""
    logger = logging.getLogger("lensforge")
    rank = global_rank()
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


@dataclass
class Run:
    """An opened run: where it writes, what it resumes from, where it logs."""

    name: str
    out: Path
    ckpt_dir: Path
    resume_path: Path | None
    tracker: Any = None
    rank: int = 0
    started: float = field(default_factory=time.time)

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def elapsed(self) -> float:
        return time.time() - self.started

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """``<out>/summary.json`` (rank 0, atomically)."""
        path = self.out / "summary.json"
        if self.is_rank_zero:
            atomic_write_text(path, json.dumps(summary, indent=1, default=str))
        return path

    def finish(self, status: str = "success") -> None:
        """End the MLflow run of a loop without a Trainer (the Trainer finalizes its own)."""
        if self.tracker is not None and self.is_rank_zero:
            self.tracker.finalize(status)


def open_run(recipe: Any, *, tracking: bool | None = None) -> Run:
    """Open the run of ``recipe`` (see the module docstring); ``tracking`` overrides ``tracking.enabled``."""
    import lightning as L

    cfg = recipe.config
    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    rank = global_rank()
    ckpt_dir = Path(cfg.checkpoint.dir).expanduser().resolve() if cfg.checkpoint.dir else out / "checkpoints"
    resume_path = resolve_resume(cfg.resume, ckpt_dir)
    if rank == 0:
        atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    log.info("run '%s' (stage %s) -> %s (%s)", cfg.name, cfg.stage.name, out,
             f"resuming from {resume_path}" if resume_path else "fresh start")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    tracker = None
    if cfg.tracking.enabled if tracking is None else tracking:
        from lensforge.tracking.mlflow_logger import MLflowTracker
        from lensforge.tracking.records import tracking_records

        params, tags, artifacts = tracking_records(recipe)
        tags["lensforge.stage"] = str(cfg.stage.name)
        tags.update(_PARENT_TAGS)
        tracker = MLflowTracker(output_dir=out, experiment=cfg.tracking.experiment, run_name=cfg.name,
                                tracking_uri=cfg.tracking.tracking_uri, resume=resume_path is not None,
                                params=params, tags=tags, artifacts=artifacts)
    return Run(name=cfg.name, out=out, ckpt_dir=ckpt_dir, resume_path=resume_path, tracker=tracker, rank=rank)


def build_trainer(cfg: Any, *, callbacks: list[Any], logger: Any, out: Path, manual_optimization: bool = False) -> Any:
    """The Lightning Trainer of a recipe's ``trainer`` section."""
    import lightning as L

    from lensforge.distributed.strategy import build_strategy

    tc = cfg.trainer
    accelerator = "gpu" if tc.accelerator == "cuda" else tc.accelerator
    return L.Trainer(
        accelerator=accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=build_strategy(tc),
        precision=tc.precision,
        max_steps=tc.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        # manual optimization clips in the stage (StageSystem.step_role); Lightning refuses both
        gradient_clip_val=None if manual_optimization else tc.gradient_clip_val,
        log_every_n_steps=tc.log_every_n_steps,
        deterministic=tc.deterministic,
        enable_checkpointing=False,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(out),
    )


def fit(stage_cls: type, recipe: Any) -> dict[str, Any]:
    """Open the run, build the stage's system, data and callbacks, and train (see the module docstring)."""
    from lensforge.stages.checkpointing import AtomicCheckpoint

    cfg = recipe.config
    run = open_run(recipe)
    system = stage_cls.build(recipe, run)
    dm = stage_cls.datamodule(recipe, system)
    ckpt_cb = AtomicCheckpoint(run.ckpt_dir, every_n_steps=cfg.checkpoint.every_n_steps, keep_last=cfg.checkpoint.keep_last,
                               tracker=run.tracker if cfg.tracking.log_checkpoints else None, log_files=False)
    callbacks: list[Any] = [ckpt_cb, *system.callbacks(recipe, run)]
    if cfg.trainer.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=1))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=run.tracker, out=run.out,
                            manual_optimization=not system.automatic_optimization)
    try:
        trainer.fit(system, datamodule=dm, ckpt_path=str(run.resume_path) if run.resume_path else None, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(
            f"refusing to resume from '{run.resume_path}': its pickle references code or classes that are not "
            "tensors or plain data; lensforge never runs a checkpoint's pickle") from None
    if run.tracker is not None and trainer.is_global_zero:
        run.tracker.log_metrics({"run/wall_seconds": run.elapsed()}, step=trainer.global_step)
        run.tracker.flush()  # logged after the Trainer finalized the run: write it before the process ends
    summary: dict[str, Any] = {
        "output_dir": str(run.out),
        "stage": str(cfg.stage.name),
        "global_step": int(trainer.global_step),
        "checkpoint": str(ckpt_cb.saved[-1]) if ckpt_cb.saved else (str(run.resume_path) if run.resume_path else None),
        "mlflow_run_id": run.tracker.run_id if run.tracker is not None else None,
        "tracking_uri": run.tracker.tracking_uri if run.tracker is not None else None,
    }
    for cb in callbacks:
        if callable(getattr(cb, "summary", None)):
            summary.update(cb.summary())
    summary.update(system.summary())
    summary["wall_seconds"] = run.elapsed()
    if trainer.is_global_zero:
        run.write_summary(summary)
        scored = ""  # the stage's last validation figure: pretraining's verifier score, RL's held-out reward …
        for key in ("verifier_score", "held_out_reward"):
            if isinstance(summary.get(key), (int, float)):
                scored = f"; {key.replace('_', ' ')} {summary[key]:.3f}"
                break
        log.info("done: step %d in %.0fs; checkpoint %s%s; MLflow run %s (%s)", summary["global_step"],
                 summary["wall_seconds"], summary["checkpoint"], scored, summary["mlflow_run_id"], summary["tracking_uri"])
    return summary


__all__ = ["Run", "build_trainer", "fit", "nested_under", "open_run", "setup_logging"]
