"""Size flavors of ``lens_mmdit``: one code path, many widths/depths.

``3b8`` is the released Lens transformer (LENS_SPEC §1.1). The CPU flavors keep its structure
(dual-stream blocks, multi-layer text front-end, 3-axis RoPE) at toy sizes. Every value can be
overridden field by field from the recipe (``model.dit.in_channels: 48`` …).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LensArch:
    """A fully resolved architecture (flavor defaults + recipe overrides)."""

    num_layers: int
    num_heads: int
    head_dim: int
    mlp_hidden_dim: int
    in_channels: int
    out_channels: int
    patch_size: int
    text_dims: tuple[int, ...]
    text_layers: tuple[int, ...] | None
    axes_dims_rope: tuple[int, int, int]
    rope_theta: float

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


def default_mlp_hidden(inner_dim: int) -> int:
    """The official SwiGLU width rule ``int(inner/3·8)`` (4096 for 1536)."""
    return int(inner_dim / 3 * 8)


#: flavor -> defaults for every architecture field (``mlp_hidden_dim`` None = the official rule).
FLAVORS: dict[str, dict[str, Any]] = {
    "3b8": dict(
        num_layers=48, num_heads=24, head_dim=64, mlp_hidden_dim=None, in_channels=128,
        out_channels=128, patch_size=2, text_dims=(2880, 2880, 2880, 2880),
        text_layers=(5, 11, 17, 23), axes_dims_rope=(8, 28, 28), rope_theta=10000.0,
    ),
    "small": dict(
        num_layers=6, num_heads=4, head_dim=32, mlp_hidden_dim=None, in_channels=128,
        out_channels=128, patch_size=2, text_dims=(384, 384), text_layers=None,
        axes_dims_rope=(8, 12, 12), rope_theta=10000.0,
    ),
    "tiny": dict(
        num_layers=2, num_heads=2, head_dim=32, mlp_hidden_dim=None, in_channels=16,
        out_channels=16, patch_size=2, text_dims=(32, 32), text_layers=None,
        axes_dims_rope=(8, 12, 12), rope_theta=10000.0,
    ),
}

ARCH_FIELDS = tuple(FLAVORS["3b8"])
