"""Writing checkpoints: the atomic, keep-last-k :class:`AtomicCheckpoint` callback.

A checkpoint is first written under a hidden temporary name (``.step-0000200.ckpt.tmp``) and
then renamed with :func:`os.replace`, so a crash (even ``kill -9``) mid-write never leaves a
truncated checkpoint under a real name. The folder layout, resume discovery and reading live in
:mod:`lensforge.stages.checkpoint_io` (re-exported here for convenience).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_write_text, temp_path
from lensforge.stages.checkpoint_io import (
    LATEST, checkpoint_name, latest_checkpoint, list_checkpoints, resolve_resume,
)

log = logging.getLogger("lensforge.checkpoint")

def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


class AtomicCheckpoint(Callback):
    """Save every ``every_n_steps`` optimizer steps and at the end; keep the last ``keep_last``.

    The saved checkpoint is Lightning's full training state (weights, optimizer, LR scheduler,
    loop counters and the StatefulDataLoader position) plus what the stage adds in
    ``on_save_checkpoint`` (EMA weights, RNG states, the resolved recipe).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, *, every_n_steps: int, keep_last: int, tracker: Any = None,
                 log_files: bool = False):
        if every_n_steps < 0:
            raise LensforgeError(f"checkpoint.every_n_steps must be ≥ 0, got {every_n_steps}")
        if keep_last < 1:
            raise LensforgeError(f"checkpoint.keep_last must be ≥ 1, got {keep_last}")
        self.dir = Path(ckpt_dir).resolve()
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.tracker = tracker
        self.log_files = log_files
        self.last_saved_step: int | None = None
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_saved_step:
            # ``global_step`` changes on the batch that stepped the optimizer; later accumulation
            # batches of the same step see ``last_saved_step == step`` and do not save again
            self.save(trainer, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step != self.last_saved_step and step > 0:
            self.save(trainer, step)

    def save(self, trainer: L.Trainer, step: int) -> Path:
        """Write ``step-XXXXXXX.ckpt`` atomically (all ranks call this; rank 0 renames)."""
        name = checkpoint_name(step)
        final = self.dir / name
        tmp = temp_path(final)
        if trainer.is_global_zero:
            self.dir.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
        trainer.strategy.barrier("lensforge_ckpt_pre")
        trainer.save_checkpoint(str(tmp))  # the full training state (Lightning saves more than weights by default)
        trainer.strategy.barrier("lensforge_ckpt_post")
        if trainer.is_global_zero:
            if final.exists():
                _remove(final)
            os.replace(tmp, final)
            atomic_write_text(self.dir / LATEST, name + "\n")
            self._prune()
            log.info("checkpoint: step %d -> %s", step, final)
            if self.tracker is not None:
                try:
                    self.tracker.record_checkpoint(final, step, log_file=self.log_files)
                except Exception as e:  # tracking trouble must not lose a checkpoint
                    log.warning("checkpoint: could not record %s in MLflow: %s", final, e)
        trainer.strategy.barrier("lensforge_ckpt_done")
        self.last_saved_step = step
        self.saved.append(final)
        return final

    def _prune(self) -> None:
        ckpts = list_checkpoints(self.dir)
        for _, p in ckpts[: max(0, len(ckpts) - self.keep_last)]:
            _remove(p)
            log.info("checkpoint: removed old %s (keep_last=%d)", p.name, self.keep_last)
        for p in self.dir.glob(".step-*.tmp"):  # leftovers of a crash mid-write
            _remove(p)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = state_dict.get("last_saved_step")


__all__ = ["AtomicCheckpoint", "checkpoint_name", "latest_checkpoint", "list_checkpoints", "resolve_resume"]
