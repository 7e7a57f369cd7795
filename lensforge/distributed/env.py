"""Where this process stands in a multi-process run: rank and world size, in one place.

* :func:`rank_world` — ``(rank, world_size)`` of the initialised ``torch.distributed`` group, else
  what the launcher's environment says (torchrun, SLURM, Lightning's re-launch), else ``(0, 1)``.
  Works before the process group exists (logging is set up before Lightning launches ranks).
* :func:`planned_world_size` — the world size a recipe's ``trainer`` section asks for
  (``devices × num_nodes``); ``devices: auto`` counts the CUDA devices visible here.

No import of torch at module load: the recipe tools use this too.
"""

from __future__ import annotations

import os
from typing import Any


def _env_int(*names: str) -> int | None:
    for k in names:
        v = os.environ.get(k, "")
        if v.isdigit():
            return int(v)
    return None


def rank_world() -> tuple[int, int]:
    """``(global rank, world size)`` of this process."""
    import sys

    torch = sys.modules.get("torch")  # only consult torch.distributed when torch is already in use
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
    rank = _env_int("RANK", "GLOBAL_RANK", "SLURM_PROCID")
    if rank is None and os.environ.get("NODE_RANK", "0") == "0":
        rank = _env_int("LOCAL_RANK")
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    return (rank or 0), (world or 1)


def global_rank() -> int:
    """This process's global rank (0 outside a distributed run)."""
    return rank_world()[0]


def planned_world_size(trainer_cfg: Any, *, auto_counts_cuda: bool = True) -> tuple[int | None, str]:
    """``(devices × num_nodes, note)`` for a recipe's ``trainer`` section.

    ``devices: auto`` (or another non-integer string) is taken as the number of CUDA devices visible
    here when ``auto_counts_cuda`` (with a note saying so), else the world size is ``None``.
    """
    devices = trainer_cfg.devices
    nodes = int(trainer_cfg.num_nodes)
    if isinstance(devices, str):
        if devices.isdigit():
            devices = int(devices)
        elif not auto_counts_cuda:
            return None, ""
        else:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 1
            return n * nodes, f"devices={trainer_cfg.devices!r} taken as {n} (devices visible here)"
    return int(devices) * nodes, ""


__all__ = ["global_rank", "planned_world_size", "rank_world"]
