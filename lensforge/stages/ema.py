"""Exponential moving average of the DiT's weights.

The EMA copy is a second instance of the DiT (``ema_dit``) with gradients off, updated in place
after every optimizer step: ``ema ← ema + (1 − d)·(θ − ema)``. Keeping it a real module means its
weights save/load under the ``ema_dit.`` state-dict prefix, sample with the same code, and shard
exactly like the DiT under FSDP2 (parameters are then DTensors; the update runs on local shards).

``warmup`` uses ``d_t = min(decay, (1 + t)/(10 + t))`` so that short runs (the tiny recipe) get a
useful average instead of one dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay used after optimizer step ``step`` (1-based)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@torch.no_grad()
def ema_update_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """In-place EMA update of ``ema``'s parameters (and a copy of buffers) from ``model``.

    One ``torch._foreach_lerp_`` per dtype group instead of a kernel launch per parameter.
    """
    ema_params = dict(ema.named_parameters())
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        e = ema_params.get(name)
        if e is None:
            raise KeyError(f"EMA has no parameter '{name}'")
        el, pl = _local(e), _local(p.detach())
        dst, src = groups.setdefault((el.dtype, el.device), ([], []))
        dst.append(el)
        src.append(pl.to(el.dtype))
    for dst, src in groups.values():
        torch._foreach_lerp_(dst, src, 1.0 - decay)
    ema_bufs = dict(ema.named_buffers())
    for name, b in model.named_buffers():
        if name in ema_bufs:
            _local(ema_bufs[name]).copy_(_local(b))


@torch.no_grad()
def copy_weights_(dst: nn.Module, src: nn.Module) -> None:
    """``dst ← src`` parameter by parameter (used to (re)initialise the EMA)."""
    ema_update_(dst, src, 0.0)


__all__ = ["copy_weights_", "ema_decay_at", "ema_update_"]
