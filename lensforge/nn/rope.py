"""Multi-axis rotary position embedding, interleaved-pair (complex) form, Qwen-Image/Lens style.

LENS_SPEC §1.7: the head dimension is split over axes ``(frame, height, width)`` of dims
``axes_dims`` (e.g. ``(8, 28, 28)``); axis ``a`` has ``d_a/2`` frequencies
``freq_j = theta^(−2j/d_a)``. Consecutive channel pairs ``(x[2k], x[2k+1])`` form a complex
number that is multiplied by ``exp(i·pos_a·freq_j)`` (computed in fp32, cast back).

Positions (``scale_rope=True``): an image of ``h × w`` tokens sits at frame 0 on a centred grid,
rows ``−(h − h//2) … h//2 − 1``, columns likewise, row-major; text token ``j`` uses position
``off + j`` on all three axes with ``off = max(h//2, w//2)``, i.e. just past the grid.

Tables are computed on demand and cached per ``(h, w)``/device in a plain dict: nothing is
stored in the state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_frequencies(dim: int, theta: float) -> Tensor:
    """``[dim/2]`` fp32 inverse frequencies ``1 / theta^(2j/dim)`` (the official formula).

    Always computed on the CPU (also inside ``with torch.device("meta")``, so a model built on the
    meta device and materialised with ``to_empty`` still has real tables).
    """
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float32, device="cpu").div(dim))


def centred_positions(n: int) -> Tensor:
    """``−(n − n//2) … n//2 − 1`` (int64): the centred grid positions of ``scale_rope``."""
    return torch.arange(n, dtype=torch.long, device="cpu") - (n - n // 2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x [N, H, D]`` by angles given as ``cos``/``sin`` ``[N, D/2]``.

    Equivalent to ``view_as_real(view_as_complex(x.float().view(N, H, D/2, 2)) · e^{iθ})``;
    computed in fp32 and cast back to ``x.dtype``.
    """
    N, H, D = x.shape
    xf = x.float().reshape(N, H, D // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
    return out.reshape(N, H, D).to(x.dtype)


class MultiAxisRope:
    """Angle tables for image grids and text tokens (no parameters, no buffers).

    Args:
        axes_dims: per-axis channel counts ``(frame, height, width)``; they sum to the head dim.
        theta: RoPE base.
    """

    def __init__(self, axes_dims: tuple[int, ...], theta: float = 10000.0):
        if len(axes_dims) != 3 or any(d <= 0 or d % 2 for d in axes_dims):
            raise ValueError(f"axes_dims must be three positive even ints, got {tuple(axes_dims)}")
        self.axes_dims = tuple(int(d) for d in axes_dims)
        self.theta = float(theta)
        self._freqs = [axis_frequencies(d, self.theta) for d in self.axes_dims]
        self._img_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    def _angles(self, pos_N3: Tensor) -> Tensor:
        """``[N, 3]`` int positions → ``[N, head_dim/2]`` fp32 angles (axis order f, h, w)."""
        parts = [
            pos_N3[:, a].float()[:, None] * self._freqs[a].to(pos_N3.device)[None, :]
            for a in range(3)
        ]
        return torch.cat(parts, dim=1)

    def image(self, h: int, w: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` ``[h·w, head_dim/2]`` for a row-major ``h × w`` grid (cached)."""
        key = (int(h), int(w), str(device))
        hit = self._img_cache.get(key)
        if hit is not None:
            return hit
        ys = centred_positions(h)
        xs = centred_positions(w)
        pos = torch.stack(
            [
                torch.zeros(h * w, dtype=torch.long, device="cpu"),
                ys[:, None].expand(h, w).reshape(-1),
                xs[None, :].expand(h, w).reshape(-1),
            ],
            dim=1,
        ).to(device)
        ang = self._angles(pos)
        out = (torch.cos(ang), torch.sin(ang))
        if len(self._img_cache) > 512:  # bounded: many distinct sizes in a long run
            self._img_cache.clear()
        self._img_cache[key] = out
        return out

    @staticmethod
    def text_offset(h: int, w: int) -> int:
        """First text position for an ``h × w`` image: ``max(h//2, w//2)``."""
        return max(int(h) // 2, int(w) // 2)

    def text(self, h: int, w: int, length: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` ``[length, head_dim/2]`` for the text tokens following an ``h × w`` image."""
        p = torch.arange(length, dtype=torch.long, device=device) + self.text_offset(h, w)
        ang = self._angles(p[:, None].expand(length, 3))
        return torch.cos(ang), torch.sin(ang)
