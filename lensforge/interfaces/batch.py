"""Batch and feature dataclasses exchanged between data, encoders, DiT and stages.

Packed layout (no padding anywhere):

* ``TextFeatures``: one ``[N_txt_total, D_l]`` tensor per selected encoder layer, samples
  concatenated in order, plus ``lengths`` ``[B]``.
* ``PackedBatch``: image tokens ``[N_img_total, C]`` of several samples concatenated in order,
  each with its own ``(h, w)`` token grid (row-major), its own timestep ``sigma`` and its own
  text features.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


def _offsets(lengths: Tensor) -> Tensor:
    """``[B] -> [B+1]`` cumulative offsets starting at 0 (int64)."""
    out = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=lengths.device)
    out[1:] = torch.cumsum(lengths.to(torch.long), 0)
    return out


@dataclass
class TextFeatures:
    """Text-encoder output: one packed tensor per selected layer, variable length.

    ``layers[l]`` has shape ``[N_txt_total, D_l]``; sample ``i`` owns rows
    ``offsets[i]:offsets[i+1]`` of every layer. A sample may have length 0.
    """

    layers: list[Tensor]
    lengths: Tensor  # [B] int64

    def __post_init__(self) -> None:
        self.lengths = torch.as_tensor(self.lengths, dtype=torch.long)
        total = int(self.lengths.sum()) if self.lengths.numel() else 0
        for i, t in enumerate(self.layers):
            if t.dim() != 2 or t.shape[0] != total:
                raise ValueError(
                    f"TextFeatures.layers[{i}] has shape {tuple(t.shape)}, expected [{total}, D]"
                )

    @property
    def num_samples(self) -> int:
        return int(self.lengths.numel())

    @property
    def offsets(self) -> Tensor:
        return _offsets(self.lengths)

    @property
    def dims(self) -> list[int]:
        return [int(t.shape[-1]) for t in self.layers]

    def sample(self, i: int) -> list[Tensor]:
        """Per-layer ``[L_i, D]`` features of sample ``i``."""
        o = self.offsets
        return [t[o[i] : o[i + 1]] for t in self.layers]

    def _rows(self, indices: list[int]) -> Tensor:
        """Packed row indices of samples ``indices`` (in that order), on the features' device."""
        o = self.offsets.tolist()
        rows = [torch.arange(o[i], o[i + 1]) for i in indices]
        idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        return idx.to(self.layers[0].device) if self.layers else idx

    def select(self, indices: list[int]) -> "TextFeatures":
        """Sub-batch (in the given order)."""
        idx = self._rows(indices)
        return TextFeatures(
            layers=[t.index_select(0, idx) for t in self.layers],
            lengths=self.lengths[torch.as_tensor(indices, dtype=torch.long)],
        )

    def emptied(self, indices: list[int]) -> "TextFeatures":
        """The same batch with samples ``indices`` cut to length 0 (Lens's unconditional branch)."""
        drop = {int(i) for i in indices}
        idx = self._rows([i for i in range(self.num_samples) if i not in drop])
        lengths = self.lengths.clone()
        lengths[sorted(drop)] = 0
        return TextFeatures(layers=[t.index_select(0, idx) for t in self.layers], lengths=lengths)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "TextFeatures":
        """Move to ``device`` and/or cast the (floating) features to ``dtype``."""
        return TextFeatures(
            layers=[t.to(device=device, dtype=dtype) for t in self.layers],
            lengths=self.lengths if device is None else self.lengths.to(device),
        )

    @staticmethod
    def cat(items: list["TextFeatures"]) -> "TextFeatures":
        """Concatenate batches sample-wise."""
        if not items:
            raise ValueError("TextFeatures.cat needs at least one item")
        n_layers = len(items[0].layers)
        return TextFeatures(
            layers=[torch.cat([it.layers[l] for it in items], 0) for l in range(n_layers)],
            lengths=torch.cat([it.lengths for it in items], 0),
        )

    @staticmethod
    def from_padded(layers_BSD: list[Tensor], mask_BS: Tensor) -> "TextFeatures":
        """Build from right-padded ``[B, S, D]`` tensors and a bool mask (True = valid).

        Valid tokens must be a prefix of each row (right padding).
        """
        lengths = mask_BS.to(torch.long).sum(1)
        flat_mask = mask_BS.reshape(-1).to(torch.bool)
        return TextFeatures(
            layers=[t.reshape(-1, t.shape[-1])[flat_mask] for t in layers_BSD],
            lengths=lengths,
        )

    def to_padded(self, max_len: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Right-padded ``[B, S, D]`` per layer (zeros) and the bool mask ``[B, S]``."""
        B = self.num_samples
        S = int(self.lengths.max()) if B and max_len is None else (max_len or 0)
        dev = self.layers[0].device if self.layers else None
        mask = torch.arange(S, device=dev)[None, :] < self.lengths.to(dev)[:, None]
        out = []
        for t in self.layers:
            padded = t.new_zeros(B, S, t.shape[-1])
            padded[mask] = t
            out.append(padded)
        return out, mask


@dataclass
class PackedBatch:
    """The DiT's input: several samples of different sizes packed without padding.

    Attributes:
        img_tokens: ``[N_img_total, C]`` image tokens, sample after sample, each row-major over
            its ``(h, w)`` token grid.
        img_shapes: ``[B, 2]`` int64 token grid ``(h, w)`` of each sample.
        sigmas: ``[B]`` noise level / timestep of each sample, in ``[0, 1]`` (1 = pure noise).
        text: the samples' text features (same sample order).
    """

    img_tokens: Tensor
    img_shapes: Tensor
    sigmas: Tensor
    text: TextFeatures
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_shapes = torch.as_tensor(self.img_shapes, dtype=torch.long).reshape(-1, 2)
        B = self.img_shapes.shape[0]
        n_img = int(self.img_lengths.sum())
        if self.img_tokens.dim() != 2 or self.img_tokens.shape[0] != n_img:
            raise ValueError(
                f"PackedBatch.img_tokens has shape {tuple(self.img_tokens.shape)}, expected [{n_img}, C]"
            )
        if self.sigmas.numel() != B:
            raise ValueError(f"PackedBatch.sigmas has {self.sigmas.numel()} values for {B} samples")
        if self.text.num_samples != B:
            raise ValueError(f"PackedBatch.text has {self.text.num_samples} samples, expected {B}")

    @property
    def num_samples(self) -> int:
        return int(self.img_shapes.shape[0])

    @property
    def img_lengths(self) -> Tensor:
        return self.img_shapes[:, 0] * self.img_shapes[:, 1]

    @property
    def img_offsets(self) -> Tensor:
        return _offsets(self.img_lengths)

    @property
    def txt_lengths(self) -> Tensor:
        return self.text.lengths

    def sample_index(self) -> Tensor:
        """``[N_img_total]`` index of the sample each image token belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.num_samples, device=self.img_tokens.device),
            self.img_lengths.to(self.img_tokens.device),
        )

    def split_img(self, x: Tensor) -> list[Tensor]:
        """Split a per-image-token tensor ``[N_img_total, ...]`` into per-sample pieces."""
        return list(torch.split(x, self.img_lengths.tolist(), 0))

    def with_tokens(self, img_tokens: Tensor, sigmas: Tensor | None = None) -> "PackedBatch":
        return replace(self, img_tokens=img_tokens, sigmas=self.sigmas if sigmas is None else sigmas)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "PackedBatch":
        """Move to ``device`` and/or cast tokens, sigmas and text features to ``dtype``."""
        return PackedBatch(
            img_tokens=self.img_tokens.to(device=device, dtype=dtype),
            img_shapes=self.img_shapes if device is None else self.img_shapes.to(device),
            sigmas=self.sigmas.to(device=device, dtype=dtype),
            text=self.text.to(device=device, dtype=dtype),
            meta=self.meta,
        )

    @staticmethod
    def from_samples(
        tokens: list[Tensor], shapes: list[tuple[int, int]], sigmas: Tensor, text: TextFeatures
    ) -> "PackedBatch":
        """Pack per-sample ``[h*w, C]`` tokens."""
        return PackedBatch(
            img_tokens=torch.cat(tokens, 0),
            img_shapes=torch.as_tensor(shapes, dtype=torch.long),
            sigmas=sigmas,
            text=text,
        )


@dataclass
class Sample:
    """One training sample as produced by a data source (before encoding).

    ``image`` is a float tensor ``[3, H, W]`` in ``[-1, 1]`` at the resolution the resolution
    policy chose. ``captions`` maps caption field names (``dense``, ``short``, …) to text.
    ``meta`` carries anything else (scene graph, source key, original size).
    """

    image: Tensor
    captions: dict[str, str]
    key: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataBatch:
    """What the data pipeline hands the stage: a packed list of samples of mixed sizes.

    ``prompts`` are the captions chosen by the caption policy (``""`` when dropped for CFG).
    When a feature cache is active ``latents`` (per sample ``[C, h, w]``) and ``text`` are
    filled and ``images`` may be empty.
    """

    images: list[Tensor]
    prompts: list[str]
    keys: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)
    latents: list[Tensor] | None = None
    text: TextFeatures | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)
