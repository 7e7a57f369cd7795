"""Resolution policy: which ``(H, W)`` each sample is drawn at, and how real images are fitted.

Buckets are ``base resolution × aspect ratio``. For bases 1024 and 1440 the sizes are Lens's
official table (LENS_SPEC §4, ``lens/resolution.py``); for any other base the generic rule keeps
the area near ``base²``: ``W = base·sqrt(w/h)``, ``H = base·sqrt(h/w)``, each rounded to the nearest
multiple of ``multiple_of`` (at least one multiple). Aspect labels are ``W:H`` ("16:9" is landscape).

Samples without a stored size (the synthetic world) draw a bucket at random (``aspect_weights``);
real images go to the bucket whose aspect ratio is nearest to theirs (``assign: nearest``) with a
random base. Draws are deterministic: the caller passes a generator seeded from (seed, epoch, index).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lensforge.data.config import ResolutionPolicyConfig
from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.data")

#: Lens's official ``resolve_resolution(base, aspect)`` table: base -> aspect (W:H) -> (H, W).
LENS_RESOLUTIONS: dict[int, dict[str, tuple[int, int]]] = {
    1024: {"1:2": (1472, 736), "9:16": (1376, 768), "2:3": (1248, 832), "3:4": (1152, 864), "1:1": (1024, 1024),
           "4:3": (864, 1152), "3:2": (832, 1248), "16:9": (768, 1376), "2:1": (736, 1472)},
    1440: {"1:2": (2080, 1040), "9:16": (1936, 1088), "2:3": (1760, 1168), "3:4": (1616, 1216), "1:1": (1440, 1440),
           "4:3": (1216, 1616), "3:2": (1168, 1760), "16:9": (1088, 1936), "2:1": (1040, 2080)},
}
LENS_ASPECTS = ("1:2", "9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "2:1")


def parse_aspect(label: str) -> float:
    """``"16:9"`` → 16/9 (width over height)."""
    try:
        w, h = label.split(":")
        value = float(w) / float(h)
    except (ValueError, ZeroDivisionError):
        raise LensforgeError(f"aspect ratio '{label}' is not of the form 'W:H' (e.g. 16:9)") from None
    if not 0.2 <= value <= 5:
        raise LensforgeError(f"aspect ratio '{label}' is outside 1:5 … 5:1")
    return value


def _round_to(v: float, m: int) -> int:
    return max(m, int(round(v / m)) * m)


def resolve_resolution(base: int, aspect: str, multiple_of: int = 16, lens_table: bool = True) -> tuple[int, int]:
    """``(H, W)`` of ``aspect`` (W:H) at ``base``: Lens's table where it applies, else the generic rule."""
    if lens_table and base in LENS_RESOLUTIONS and aspect in LENS_RESOLUTIONS[base]:
        H, W = LENS_RESOLUTIONS[base][aspect]
        if H % multiple_of == 0 and W % multiple_of == 0:
            return H, W
    r = parse_aspect(aspect)
    return _round_to(base / math.sqrt(r), multiple_of), _round_to(base * math.sqrt(r), multiple_of)


@dataclass(frozen=True)
class Bucket:
    """One size a sample can be drawn at."""

    base: int
    aspect: str
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def tokens(self, downsample: int) -> int:
        """Image tokens at ``downsample`` pixels per token side."""
        return (self.height // downsample) * (self.width // downsample)


class ResolutionPolicy:
    """Chooses a bucket per sample and fits real images to it (see the module docstring)."""

    def __init__(self, config: ResolutionPolicyConfig, downsample: int | None = None):
        self.config = config
        m = int(config.multiple_of)
        if m < 1:
            raise LensforgeError(f"data.resolution.multiple_of must be >= 1, got {m}")
        if downsample and m % downsample:
            m2 = m * downsample // math.gcd(m, downsample)
            log.info("resolution policy: multiple_of %d is not a multiple of the VAE token size %d; using %d", m, downsample, m2)
            m = m2
        self.multiple_of = m
        if not config.base_resolutions:
            raise LensforgeError("data.resolution.base_resolutions must not be empty")
        if not config.aspect_ratios:
            raise LensforgeError("data.resolution.aspect_ratios must not be empty")
        ratios = [parse_aspect(a) for a in config.aspect_ratios]
        weights = list(config.aspect_weights) or [1.0] * len(ratios)
        if len(weights) != len(ratios) or min(weights) < 0 or sum(weights) <= 0:
            raise LensforgeError(
                f"data.resolution.aspect_weights needs {len(ratios)} non-negative values (one per aspect ratio), got {weights}"
            )
        self.ratios = ratios
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.buckets: dict[tuple[int, str], Bucket] = {}
        for base in config.base_resolutions:
            for a in config.aspect_ratios:
                H, W = resolve_resolution(int(base), a, m, config.lens_table)
                self.buckets[(int(base), a)] = Bucket(int(base), a, H, W)
        log.debug("resolution policy: %d buckets %s", len(self.buckets),
                  ", ".join(f"{b.aspect}@{b.base}={b.height}x{b.width}" for b in self.buckets.values()))

    def all_buckets(self) -> list[Bucket]:
        return list(self.buckets.values())

    def nearest_aspect(self, height: int, width: int) -> str:
        """The configured aspect label nearest (in log ratio) to a ``height × width`` image."""
        r = math.log(width / height)
        i = int(np.argmin([abs(math.log(q) - r) for q in self.ratios]))
        return self.config.aspect_ratios[i]

    def choose(self, rng: np.random.Generator, native_size: tuple[int, int] | None = None) -> Bucket:
        """A bucket for one sample (deterministic given ``rng``)."""
        bases = self.config.base_resolutions
        base = int(bases[int(rng.integers(len(bases)))]) if len(bases) > 1 else int(bases[0])
        if native_size is not None and self.config.assign == "nearest":
            aspect = self.nearest_aspect(*native_size)
        else:
            aspect = self.config.aspect_ratios[int(rng.choice(len(self.ratios), p=self.weights))]
        return self.buckets[(base, aspect)]

    @property
    def sizes(self) -> set[tuple[int, int]]:
        """Every ``(H, W)`` a sample can be drawn at (the trained sizes, for evaluation's seen/unseen split)."""
        return {b.size for b in self.buckets.values()}

    def max_tokens(self, downsample: int) -> int:
        return max(b.tokens(downsample) for b in self.buckets.values())

    def mean_tokens(self, downsample: int) -> float:
        toks = {a: np.mean([b.tokens(downsample) for b in self.buckets.values() if b.aspect == a])
                for a in self.config.aspect_ratios}
        return float(sum(w * toks[a] for w, a in zip(self.weights, self.config.aspect_ratios)))


def fit_image(img: Image.Image, size: tuple[int, int], mode: str = "cover") -> Image.Image:
    """Resize ``img`` to exactly ``size = (H, W)``.

    ``cover``: scale so the image covers the target, then centre-crop (no borders, loses edges).
    ``contain``: scale so the whole image fits, then centre it on a black canvas.
    """
    H, W = size
    w0, h0 = img.size
    if (h0, w0) == (H, W):
        return img
    if mode == "cover":
        s = max(W / w0, H / h0)
        nw, nh = max(W, round(w0 * s)), max(H, round(h0 * s))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
        left, top = (nw - W) // 2, (nh - H) // 2
        return img.crop((left, top, left + W, top + H))
    if mode == "contain":
        s = min(W / w0, H / h0)
        nw, nh = max(1, min(W, round(w0 * s))), max(1, min(H, round(h0 * s)))
        canvas = Image.new("RGB", (W, H), (0, 0, 0))
        canvas.paste(img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0), ((W - nw) // 2, (H - nh) // 2))
        return canvas
    raise LensforgeError(f"unknown resize mode '{mode}' (cover or contain)")
