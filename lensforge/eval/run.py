"""Generate a suite's images for each target, score them with a reward, summarise.

Every target sees the same items (prompts, sizes, seeds). Images are generated in packed batches of
mixed sizes (one DiT call per sampler step for the whole batch, :func:`lensforge.sampling.sampler.generate`),
each image's noise seeded by its own seed, so batching never changes a picture. Rewards come from
the registry (kind ``reward``); an image a reward could not score is reported, never counted as 0.

The **noise baseline** — blank images, uniform noise, and the first target's architecture with fresh
random weights (an untrained model, sampled like the targets) — is scored with the same reward and
summarised the same way, so every score can be read against what an image carrying no information
about its prompt gets.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lensforge.errors import LensforgeError
from lensforge.eval.suites import EvalItem, Suite

log = logging.getLogger("lensforge.eval")


@dataclass
class Scored:
    """One generated (or baseline) image and its scores."""

    item: EvalItem
    image: torch.Tensor
    reward: float
    items: dict[str, float]
    failure: str | None
    details: dict[str, Any]
    prompt: str
    """The prompt the model was given (after any rewriting)."""


@dataclass
class TargetResult:
    label: str
    scored: list[Scored] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    sampling: str = ""
    """How the images were made (``20 steps, CFG 4``); empty for the image baselines."""


def _chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def generate_images(dit: Any, vae: Any, text_encoder: Any, items: Sequence[EvalItem], prompts: Sequence[str], *,
                    steps: int, guidance_scale: float, batch_size: int = 16,
                    progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """One image per item (``[3, H, W]`` in ``[-1, 1]``, CPU), batches of mixed sizes packed per call."""
    from lensforge.sampling.sampler import generate

    out: list[torch.Tensor | None] = [None] * len(items)
    order = list(range(len(items)))
    by_negative: dict[str, list[int]] = defaultdict(list)
    for i in order:
        by_negative[str(items[i].row.get("negative") or "")].append(i)
    for negative, idx in by_negative.items():
        for chunk in _chunks(idx, max(1, batch_size)):
            imgs = generate(dit, vae, text_encoder, [prompts[i] for i in chunk], [items[i].size for i in chunk],
                            steps=steps, guidance_scale=guidance_scale, negative_prompt=negative,
                            seeds=[items[i].seed for i in chunk])
            for i, im in zip(chunk, imgs):
                out[i] = im
            if progress is not None:
                progress(len(chunk))
    return out  # type: ignore[return-value]


def score_images(reward: Any, items: Sequence[EvalItem], images: Sequence[Any], prompts: Sequence[str],
                 batch_size: int = 64) -> list[Scored]:
    """Score images against their items' rows with ``reward``."""
    out: list[Scored] = []
    for chunk in _chunks(list(range(len(items))), batch_size):
        res = reward.score([images[i] for i in chunk], [items[i].row for i in chunk])
        for j, i in enumerate(chunk):
            img = images[i]
            if not isinstance(img, torch.Tensor):
                from lensforge.data.sources.synthetic import to_tensor

                img = to_tensor(np.asarray(img))
            out.append(Scored(item=items[i], image=img, reward=float(res.rewards[j]), items=dict(res.items[j]),
                              failure=res.failures[j], details=dict(res.details[j]), prompt=prompts[i]))
    return out


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def summarize(suite: Suite, scored: Sequence[Scored]) -> dict[str, Any]:
    """The numbers a suite reports for one target (or baseline)."""
    ok = [s for s in scored if s.failure is None and not math.isnan(s.reward)]
    summary: dict[str, Any] = {"images": len(scored), "scored": len(ok), "failed": len(scored) - len(ok),
                               "reward": _mean([s.reward for s in ok])}
    cats: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        cats[str(s.item.row.get("category", ""))].append(s.reward)
    summary["categories"] = {c: float(np.mean(v)) for c, v in sorted(cats.items())}
    attrs: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        source = s.details.get("kinds") or s.details.get("attributes") or {}
        for k, v in source.items():
            if k != "overall":
                attrs[k].append(float(v))
    summary["attributes"] = {k: float(np.mean(v)) for k, v in sorted(attrs.items())}
    if suite.kind == "geneval":
        from lensforge.data.synthetic_prompts import geneval_summary

        g = geneval_summary([s.item.row for s in ok], [bool(s.details.get("strict")) for s in ok]) if ok else None
        summary["geneval"] = g
    if suite.kind == "ar_sweep":
        by_size: dict[tuple[int, int], list[float]] = defaultdict(list)
        for s in ok:
            by_size[tuple(s.item.size)].append(s.reward)
        sizes = {f"{h}x{w}": float(np.mean(v)) for (h, w), v in sorted(by_size.items())}
        summary["sizes"] = sizes
        trained = [v for (h, w), vals in by_size.items() for v in vals if (h, w) in suite.trained_sizes]
        unseen = [v for (h, w), vals in by_size.items() for v in vals if (h, w) not in suite.trained_sizes]
        summary["trained_sizes_reward"] = _mean(trained)
        summary["unseen_sizes_reward"] = _mean(unseen)
    if suite.kind == "validation":
        summary["shape_confusion"] = shape_confusion(ok)
    return summary


def shape_confusion(scored: Sequence[Scored]) -> dict[str, dict[str, int]]:
    """Prompted shape → detected shape (largest detection of the prompted colour) for one-object scenes."""
    from lensforge.data.verifier import analyze

    conf: dict[str, Counter[str]] = defaultdict(Counter)
    for s in scored:
        scene = s.item.row.get("scene")
        if not scene or not scene.get("objects"):
            continue
        want = scene["objects"][0]
        dets = analyze(s.image).detections
        near = [d for d in dets if d.color == want["color"]] or dets
        got = max(near, key=lambda d: d.area).shape if near else "(none)"
        conf[want["shape"]][got] += 1
    return {k: dict(v) for k, v in sorted(conf.items())}


def baseline_images(suite: Suite, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Blank and uniform-noise images for each item (sizes of the items; colours drawn from ``seed``)."""
    from lensforge.data.verifier import BLANK_COLORS, blank_image, noise_image

    rng = np.random.default_rng(seed)
    blank, noise = [], []
    for it in suite.items:
        blank.append(blank_image(it.size, int(rng.integers(len(BLANK_COLORS)))))
        noise.append(noise_image(it.size, seed=int(rng.integers(2**31))))
    return {"blank": blank, "uniform noise": noise}


__all__ = ["Scored", "TargetResult", "baseline_images", "generate_images", "score_images", "shape_confusion", "summarize"]
