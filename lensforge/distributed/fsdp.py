"""FSDP2 for DiTs: ``fully_shard`` per transformer block, then the root (torchtitan order).

Models stay single-device, readable files; :func:`parallelize` applies, from the outside and in
this order: activation checkpointing (the model's own per-block flag), ``torch.compile`` of each
block, FSDP2 ``fully_shard`` of each block and finally of the root module, with a
mixed-precision policy (bf16 parameters / fp32 gradient reduction by default).

A model tells :func:`parallelize` which modules are its sharding units through a
``fsdp_units()`` method (falling back to a ``transformer_blocks`` or ``blocks`` ModuleList).
Each unit's parameters are all-gathered just before it runs and freed after, so peak memory
is one block's full parameters plus the sharded rest.

Runs on CUDA (NCCL) and on CPU (gloo), which the tests use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.distributed")

_DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


@dataclass(kw_only=True)
class ParallelizeConfig:
    """How :func:`parallelize` wraps a model."""

    param_dtype: str | None = "bfloat16"
    """Dtype parameters are all-gathered in and compute runs in (None = keep the stored dtype)."""
    reduce_dtype: str | None = "float32"
    """Dtype gradients are reduce-scattered in (None = ``param_dtype``)."""
    output_dtype: str | None = None
    """Cast the root's outputs to this dtype (None = leave them)."""
    reshard_after_forward: bool = True
    """Free each block's gathered parameters after its forward (re-gather in backward): less memory."""
    activation_checkpointing: bool | None = None
    """Recompute blocks in backward (None = keep the model's own setting)."""
    compile: bool = False
    """``torch.compile`` each block (dynamic shapes: packed batches change length every step)."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state on the CPU."""

    @classmethod
    def from_trainer(cls, trainer: Any) -> "ParallelizeConfig":
        """Derive from a recipe's ``trainer`` section (``precision``, ``activation_checkpointing``, ``compile``)."""
        precision = str(getattr(trainer, "precision", "32-true"))
        param = "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else "float32"
        return cls(
            param_dtype=param,
            reduce_dtype="float32",
            activation_checkpointing=bool(getattr(trainer, "activation_checkpointing", False)),
            compile=bool(getattr(trainer, "compile", False)),
        )


def _dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise LensforgeError(f"parallelize: {field} '{name}' is not one of {', '.join(sorted(_DTYPES))}") from None


def sharding_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: ``model.fsdp_units()`` or its ``transformer_blocks``/``blocks``."""
    units_fn = getattr(model, "fsdp_units", None)
    if callable(units_fn):
        units = list(units_fn())
    else:
        container = getattr(model, "transformer_blocks", None) or getattr(model, "blocks", None)
        units = list(container) if container is not None else []
    if not units:
        raise LensforgeError(
            f"parallelize: {type(model).__name__} has no fsdp_units(), transformer_blocks or blocks to shard"
        )
    return units


def parallelize(model: nn.Module, device_mesh: Any, cfg: Any = None) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to ``model`` in place; return it.

    Args:
        model: a DiT (single-device, parameters on CPU, on ``meta`` or on the local device).
        device_mesh: a 1-D data-parallel :class:`~torch.distributed.device_mesh.DeviceMesh`
            (``init_device_mesh("cuda", (world,))``; ``"cpu"`` with gloo).
        cfg: a :class:`ParallelizeConfig` (default: bf16 parameters, fp32 reductions), or a recipe's
            ``trainer`` section, read through :meth:`ParallelizeConfig.from_trainer`.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard  # noqa: PLC0415

    if cfg is None:
        cfg = ParallelizeConfig()
    elif not isinstance(cfg, ParallelizeConfig):
        cfg = ParallelizeConfig.from_trainer(cfg)
    units = sharding_units(model)

    if cfg.activation_checkpointing is not None:
        if not hasattr(model, "activation_checkpointing"):
            raise LensforgeError(
                f"parallelize: {type(model).__name__} has no 'activation_checkpointing' switch to set"
            )
        model.activation_checkpointing = bool(cfg.activation_checkpointing)

    if cfg.compile:
        for unit in units:
            unit.compile(dynamic=True)

    mp = MixedPrecisionPolicy(
        param_dtype=_dtype(cfg.param_dtype, "param_dtype"),
        reduce_dtype=_dtype(cfg.reduce_dtype, "reduce_dtype"),
        output_dtype=_dtype(cfg.output_dtype, "output_dtype"),
    )
    offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
    for unit in units:
        fully_shard(unit, mesh=device_mesh, mp_policy=mp, offload_policy=offload,
                    reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mesh=device_mesh, mp_policy=mp, offload_policy=offload)
    log.info(
        "FSDP2: sharded %d blocks + root of %s over %d ranks (param %s, reduce %s, reshard_after_forward=%s, "
        "activation_checkpointing=%s, compile=%s, cpu_offload=%s)",
        len(units), type(model).__name__, device_mesh.size(), cfg.param_dtype, cfg.reduce_dtype,
        cfg.reshard_after_forward, getattr(model, "activation_checkpointing", None), cfg.compile, cfg.cpu_offload,
    )
    return model
