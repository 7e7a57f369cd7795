"""Variable-length (block-diagonal) attention backends, registry kind ``attention``.

Every backend takes ``q, k, v`` of shape ``[N_total, heads, head_dim]`` (several independent
segments concatenated) and ``seqlens`` (the segment lengths, summing to ``N_total``); tokens
attend only inside their own segment, non-causally, with scale ``1/sqrt(head_dim)``.

* ``sdpa_loop``: one ``F.scaled_dot_product_attention`` call per segment. No mask memory;
  measured fastest on CPU.
* ``sdpa_masked``: one SDPA call over everything with a dense block-diagonal boolean mask
  (``N_total²`` memory: small batches, tests, reference).
* ``xformers``: ``xformers.ops.memory_efficient_attention`` with a ``BlockDiagonalMask`` built
  from ``seqlens`` (CUDA only; xformers is imported lazily, on first use).
* ``auto``: ``xformers`` on CUDA when its kernels load, else ``sdpa_loop``; logs its choice once
  per device type.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces.models import AttentionBackend

log = logging.getLogger("lensforge.nn.attention")


def _check(q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> list[int]:
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"attention expects q, k, v as [N, heads, head_dim]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    lens = [int(s) for s in seqlens]
    if sum(lens) != q.shape[0] or any(s < 0 for s in lens):
        raise ValueError(f"seqlens {lens} do not sum to the {q.shape[0]} tokens given")
    return lens


class SdpaLoopAttention(AttentionBackend):
    """Per-segment ``scaled_dot_product_attention`` (no mask; fastest on CPU)."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
        lens = _check(q, k, v, seqlens)
        if len(lens) == 1:
            return _sdpa_one(q, k, v)
        outs = [
            _sdpa_one(qi, ki, vi)
            for qi, ki, vi in zip(q.split(lens), k.split(lens), v.split(lens))
            if qi.shape[0] > 0
        ]
        return torch.cat(outs, 0) if outs else q.new_zeros(0, q.shape[1], v.shape[2])


def _sdpa_one(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``[L, H, D]`` full (non-causal) attention of one segment."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    return out.transpose(0, 1)


def block_diagonal_mask(seqlens: list[int], device: torch.device | str = "cpu") -> Tensor:
    """``[N, N]`` bool mask, True where query and key are in the same segment."""
    seg = torch.repeat_interleave(
        torch.arange(len(seqlens), device=device), torch.as_tensor(seqlens, device=device)
    )
    return seg[:, None] == seg[None, :]


class SdpaMaskedAttention(AttentionBackend):
    """One ``scaled_dot_product_attention`` call with a dense block-diagonal mask (``N²`` memory)."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
        lens = _check(q, k, v, seqlens)
        mask = block_diagonal_mask(lens, q.device)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask
        )
        return out[0].transpose(0, 1)


class XformersAttention(AttentionBackend):
    """``xformers.ops.memory_efficient_attention`` with a ``BlockDiagonalMask`` (CUDA only)."""

    _probe: dict[str, tuple[bool, str]] = {}

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"xformers has no kernels for device type '{device.type}'"
        key = str(device)
        if key not in self._probe:
            try:
                import xformers.ops as xops  # noqa: PLC0415  (lazy: heavy and CUDA-only)

                t = torch.zeros(1, 4, 1, 64, device=device, dtype=torch.float16)
                xops.memory_efficient_attention(t, t, t)
                self._probe[key] = (True, "")
            except Exception as e:  # import error, missing kernels, unsupported GPU …
                self._probe[key] = (False, f"xformers kernels did not load: {type(e).__name__}: {e}")
        return self._probe[key]

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
        lens = _check(q, k, v, seqlens)
        ok, why = self.available(q.device)
        if not ok:
            raise LensforgeError(f"attention backend 'xformers' cannot run: {why}")
        from xformers.ops import fmha, memory_efficient_attention  # noqa: PLC0415

        bias = fmha.BlockDiagonalMask.from_seqlens([s for s in lens if s > 0])
        out = memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)
        return out[0]


class AutoAttention(AttentionBackend):
    """``xformers`` on CUDA when its kernels load, otherwise ``sdpa_loop`` (logs its choice once)."""

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._chosen: dict[str, AttentionBackend] = {}

    def backend_for(self, device: torch.device) -> AttentionBackend:
        """The backend ``auto`` uses on ``device`` (decided once per device type)."""
        device = torch.device(device)
        hit = self._chosen.get(device.type)
        if hit is not None:
            return hit
        xf = XformersAttention()
        ok, why = xf.available(device)
        if ok:
            backend: AttentionBackend = xf
            log.info("attention auto: using xformers memory_efficient_attention on %s", device)
        else:
            backend = SdpaLoopAttention()
            log.info("attention auto: using sdpa_loop on %s (%s)", device, why)
        self._chosen[device.type] = backend
        return backend

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
        return self.backend_for(q.device)(q, k, v, seqlens)


def build_attention(name: str) -> AttentionBackend:
    """Instantiate the attention backend registered as ``name`` (kind ``attention``)."""
    from lensforge import registry  # noqa: PLC0415

    cls = registry.get("attention", name)
    log.debug("attention backend %r -> %s", name, cls.__name__)
    return cls()
