"""The training-state memory model shared by ``lensforge plan`` and ``lensforge fit``'s preflight.

Per device, in bytes, for ``N`` trainable parameters sharded ``P`` ways (FSDP2: ``P`` = world
size, else 1); ``b_p`` = bytes per stored parameter (4 for ``32-true`` and ``*-mixed``, which keep
fp32 master weights; 2 for ``bf16-true``/``16-true``):

* weights ``N·b_p / P``, gradients ``N·b_p / P`` (same dtype as the parameters);
* optimizer state ``8·N / P`` (AdamW ``exp_avg`` + ``exp_avg_sq`` in fp32);
* EMA ``4·N / P`` when the stage keeps one (fp32, sharded like the weights).

``lensforge plan`` adds the strategy's buffers, activations and the frozen encoders on top
(:mod:`lensforge.commands.plan`); the preflight compares this state alone with the device.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def is_low_precision(precision: str) -> bool:
    """Whether compute runs in bf16/fp16."""
    return any(s in str(precision) for s in ("bf16", "16-"))


def bytes_per_param(precision: str) -> int:
    """Bytes per stored (trainable) parameter: 2 for ``bf16-true``/``16-true``, else 4."""
    p = str(precision)
    return 2 if p.endswith("-true") and is_low_precision(p) else 4


def training_state_bytes(num_params: int, *, precision: str, shard: int = 1, ema: bool = True) -> dict[str, int]:
    """Weights, gradients, AdamW moments and (optionally) EMA per device, by item."""
    n, b_p, shard = int(num_params), bytes_per_param(precision), max(1, int(shard))
    items = {
        "weights": n * b_p // shard,
        "gradients": n * b_p // shard,
        "optimizer state (AdamW fp32 ×2)": 8 * n // shard,
    }
    if ema:
        items["EMA (fp32)"] = 4 * n // shard
    return items


def stage_keeps_ema(stage_config: Any) -> bool:
    """Whether a stage keeps an EMA of its DiT (any truthy ``ema*`` field of its config)."""
    if stage_config is None or not dataclasses.is_dataclass(stage_config):
        return False
    for f in dataclasses.fields(stage_config):
        if "ema" in f.name.lower():
            v = getattr(stage_config, f.name)
            if dataclasses.is_dataclass(v):
                return stage_keeps_ema(v) or any(
                    bool(getattr(v, g.name)) for g in dataclasses.fields(v) if g.name in ("enabled", "decay")
                )
            if isinstance(v, bool):
                if v:
                    return True
            elif isinstance(v, (int, float)) and v > 0:
                return True
    return False


__all__ = ["bytes_per_param", "is_low_precision", "stage_keeps_ema", "training_state_bytes"]
