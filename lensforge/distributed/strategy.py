"""Lightning strategy construction from a recipe's ``trainer`` section.

``trainer.strategy``:

* ``auto`` — one device: Lightning's single-device strategy; several devices or nodes: ``ddp``.
* ``single`` — one device, error if more are asked for.
* ``ddp`` — DistributedDataParallel (gloo on CPU, NCCL on CUDA). Lightning re-launches the
  command (``lensforge fit …``) once per extra local device.
* ``fsdp2`` — FSDP2 ``fully_shard`` through Lightning's ``ModelParallelStrategy`` (data-parallel
  size = every device of every node, tensor-parallel size 1). The stage's ``configure_model``
  calls :func:`lensforge.distributed.fsdp.parallelize` on the DiT (and its EMA copy) over the
  strategy's ``data_parallel`` mesh. Checkpoints are then sharded folders (distributed checkpoint).
"""

from __future__ import annotations

import logging
from typing import Any

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.distributed")


def world_size(trainer_cfg: Any) -> int | None:
    """Devices × nodes when ``devices`` is an int (None for ``auto``)."""
    from lensforge.distributed.env import planned_world_size

    return planned_world_size(trainer_cfg, auto_counts_cuda=False)[0]


def build_strategy(trainer_cfg: Any) -> Any:
    """The Lightning strategy object (or name) for ``trainer_cfg``; logs the choice."""
    name = trainer_cfg.strategy
    n = world_size(trainer_cfg)
    if name == "auto":
        chosen: Any = "ddp" if n is not None and n > 1 else "auto"
        log.info("strategy: auto -> %s (world size %s)", chosen, n if n is not None else "auto")
        return chosen
    if name == "single":
        if n is not None and n > 1:
            raise LensforgeError(f"trainer.strategy=single but trainer.devices × num_nodes = {n}")
        log.info("strategy: single device")
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        log.info("strategy: ddp (world size %s)", n)
        return DDPStrategy(find_unused_parameters=False)
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        log.info("strategy: fsdp2 via ModelParallelStrategy (data parallel over %s ranks, sharded checkpoints)", n)
        # "auto" would mean one data-parallel group per node; FSDP2 here shards over every rank
        return ModelParallelStrategy(data_parallel_size=n if n is not None else "auto", tensor_parallel_size=1,
                                     save_distributed_checkpoint=True)
    raise LensforgeError(f"unknown trainer.strategy '{name}' (auto, single, ddp, fsdp2)")


__all__ = ["build_strategy", "world_size"]
