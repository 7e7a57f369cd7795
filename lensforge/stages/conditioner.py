"""The conditioner: a batch → VAE latents + text features, one object for every stage.

Sources, in order of preference:

1. features the batch already carries (``DataBatch.latents`` / ``.text``, e.g. precomputed);
2. the feature cache written by ``lensforge cache`` (``data.cache_dir``), which verifies each
   image's pixel hash so a changed source is an error, never stale latents;
3. the frozen VAE and text encoder — optionally through an in-memory memo
   (``memo_features``: latents keyed by ``(sample key, H, W)``, text by prompt), for sources whose
   image of a key at a size is deterministic. Misses are encoded one sample at a time, so a
   feature never depends on which batch first asked for it: a run gives the same numbers with or
   without the memo and after a resume.

**The dropped-caption rule** (applied here and nowhere else): a dropped caption (empty or
whitespace prompt) gets **zero text tokens**. That is Lens's unconditional branch at sampling time
(an empty negative prompt = zero features under an all-False mask, LENS_SPEC §4), so caption
dropout trains exactly the branch CFG uses. Dropped prompts are never encoded (with caption dropout
``p`` that saves ``p`` of the text encoder's work per batch); features a batch carries for them are
emptied.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, TextFeatures

log = logging.getLogger("lensforge.stages")


def is_dropped(prompt: Any) -> bool:
    """Whether a prompt is a dropped caption (empty or whitespace)."""
    return not str(prompt).strip()


def encode_kept(prompts: list[str], encode: Callable[[list[str]], TextFeatures], feature_dims: tuple[int, ...],
                device: Any) -> TextFeatures:
    """Text features of ``prompts`` with dropped ones as zero-length samples, rows in sample order.

    ``encode`` runs on the kept prompts only (once, none when every prompt is dropped).
    """
    keep = [i for i, p in enumerate(prompts) if not is_dropped(p)]
    if len(keep) == len(prompts):
        return encode(prompts).to(device)
    lengths = torch.zeros(len(prompts), dtype=torch.long, device=device)
    if not keep:
        return TextFeatures(layers=[torch.zeros(0, d, device=device) for d in feature_dims], lengths=lengths)
    enc = encode([prompts[i] for i in keep]).to(device)
    lengths[torch.tensor(keep, device=device)] = enc.lengths.to(device)
    return TextFeatures(layers=enc.layers, lengths=lengths)


class Conditioner:
    """Turns :class:`~lensforge.interfaces.DataBatch` es into ``(latents, text)`` (see the module docstring).

    Args:
        vae, text_encoder: the frozen encoders (may be None when every batch carries features or a
            feature cache is given).
        feature_cache: an open :class:`lensforge.data.cache.FeatureCache` or None.
        memo_features: remember up to this many encoded prompts and latents (0 = off).
        sample_posterior: encode images with a posterior sample (drawn from the caller's generator)
            instead of the mode; disables the memo.
    """

    def __init__(self, vae: Any = None, text_encoder: Any = None, *, feature_cache: Any = None,
                 memo_features: int = 0, sample_posterior: bool = False):
        self.vae = vae
        self.text_encoder = text_encoder
        self.feature_cache = feature_cache
        self.memo_features = int(memo_features)
        self.sample_posterior = bool(sample_posterior)
        self._text_memo: OrderedDict[str, list[Tensor]] = OrderedDict()
        self._latent_memo: OrderedDict[tuple[str, int, int], Tensor] = OrderedDict()

    @staticmethod
    def open_cache(cache_dir: str | None, vae_ref: Any, text_encoder_ref: Any) -> Any:
        """The feature cache of ``data.cache_dir`` checked against the recipe's encoders (None if unset)."""
        if not cache_dir:
            return None
        from lensforge.data.cache import FeatureCache

        log.info("feature cache: %s", cache_dir)
        return FeatureCache.open(cache_dir, vae_ref, text_encoder_ref)

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def encode(self, batch: DataBatch, *, device: Any, generator: torch.Generator | None = None
               ) -> tuple[list[Tensor], TextFeatures]:
        """Per-sample latents ``[C, h, w]`` and the batch's text features (dropped captions empty)."""
        prompts = list(batch.prompts)
        if batch.latents is not None and batch.text is not None:
            dropped = [i for i, p in enumerate(prompts) if is_dropped(p) and int(batch.text.lengths[i])]
            text = batch.text.emptied(dropped) if dropped else batch.text
            return list(batch.latents), text
        if self.feature_cache is not None:
            sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in batch.images]
            latents = self.feature_cache.latents(list(batch.keys), sizes, images=list(batch.images) or None)
            text = encode_kept(prompts, self.feature_cache.text, self._cache_dims(), device)
            return [l.to(device) for l in latents], text
        if self.vae is None or self.text_encoder is None:
            raise LensforgeError("conditioner: no VAE/text encoder and no feature cache to encode the batch")
        if self.memo_features > 0 and not self.sample_posterior:
            latents = [self._memo_latent(str(k), im, device) for k, im in zip(batch.keys, batch.images)]
            return latents, encode_kept(prompts, self._memo_text, tuple(self.text_encoder.feature_dims), device)
        text = encode_kept(prompts, self.text_encoder.encode, tuple(self.text_encoder.feature_dims), device)
        return self.encode_images(batch.images, device=device, generator=generator), text

    def encode_prompts(self, prompts: list[str], *, device: Any) -> TextFeatures:
        """Text features of ``prompts`` from the text encoder (through the memo when ``memo_features`` > 0;
        dropped prompts: zero tokens, not encoded)."""
        encode = self._memo_text if self.memo_features > 0 else self.text_encoder.encode
        return encode_kept(list(prompts), encode, tuple(self.text_encoder.feature_dims), device)

    def encode_images(self, images: list[Tensor], *, device: Any, generator: torch.Generator | None = None) -> list[Tensor]:
        """VAE latents of images of any sizes (encoded in groups of equal size, returned in order)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        latents: list[Tensor | None] = [None] * len(images)
        for idx in groups.values():
            z = self._vae_encode(torch.stack([images[i] for i in idx]), device, generator)
            for j, i in enumerate(idx):
                latents[i] = z[j]
        return latents  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _cache_dims(self) -> tuple[int, ...]:
        if self.text_encoder is not None:
            return tuple(self.text_encoder.feature_dims)
        dims = getattr(self.feature_cache, "feature_dims", None)
        if dims is None:
            raise LensforgeError("conditioner: every prompt of a batch was dropped and the text widths are unknown")
        return tuple(dims)

    def _vae_encode(self, images: Tensor, device: Any, generator: torch.Generator | None) -> Tensor:
        params = list(self.vae.parameters())
        x = images.to(device=device, dtype=params[0].dtype if params else torch.float32)
        if self.sample_posterior:
            return self.vae.encode(x, sample=True, generator=generator).float()
        return self.vae.encode(x).float()

    def _memo_latent(self, key: str, image: Tensor, device: Any) -> Tensor:
        mk = (key, int(image.shape[-2]), int(image.shape[-1]))
        z = self._latent_memo.get(mk)
        if z is None:
            z = self._vae_encode(image[None], device, None)[0]
            self._latent_memo[mk] = z
            if len(self._latent_memo) > self.memo_features:
                self._latent_memo.popitem(last=False)
        else:
            self._latent_memo.move_to_end(mk)
        return z

    def _memo_text(self, prompts: list[str]) -> TextFeatures:
        per_sample = []
        for p in prompts:
            f = self._text_memo.get(p)
            if f is None:
                f = list(self.text_encoder.encode([p]).sample(0))
                self._text_memo[p] = f
                if len(self._text_memo) > self.memo_features:
                    self._text_memo.popitem(last=False)
            else:
                self._text_memo.move_to_end(p)
            per_sample.append(f)
        return TextFeatures(
            layers=[torch.cat([f[l] for f in per_sample], 0) for l in range(len(per_sample[0]))],
            lengths=torch.tensor([int(f[0].shape[0]) for f in per_sample]),
        )


__all__ = ["Conditioner", "encode_kept", "is_dropped"]
