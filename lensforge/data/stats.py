"""Dataset statistics: caption lengths and resolution / aspect-ratio histograms (text + PNG plots)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from lensforge.data.resolution import LENS_ASPECTS, parse_aspect
from lensforge.data.shards import raw_record
from lensforge.interfaces import DataSource, SampleError

log = logging.getLogger("lensforge.data")

WORD_BINS = (0, 5, 10, 20, 40, 60, 80, 100, 120, 160, 200)
SIDE_BINS = (0, 64, 128, 256, 512, 768, 1024, 1536, 2048)


def _bin(value: float, edges: tuple[int, ...]) -> str:
    for lo, hi in zip(edges, edges[1:]):
        if lo <= value < hi:
            return f"{lo}-{hi - 1}"
    return f">={edges[-1]}"


def _labels(edges: tuple[int, ...]) -> list[str]:
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def nearest_lens_aspect(h: int, w: int) -> str:
    r = math.log(w / h)
    return min(LENS_ASPECTS, key=lambda a: abs(math.log(parse_aspect(a)) - r))


@dataclass
class DataStats:
    """Counts over a source (only plain ints, so two sources compare with ``==``)."""

    samples: int = 0
    unreadable: int = 0
    without_caption: int = 0
    caption_fields: dict[str, int] = field(default_factory=dict)
    caption_words: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> bin -> n
    short_side: dict[str, int] = field(default_factory=dict)
    aspect: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> n

    def counts(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def compute_stats(source: DataSource, progress: bool = True) -> DataStats:
    """Decode every image (to count unreadable ones) and tally caption lengths and sizes."""
    from lensforge.data.sources.common import decode_image

    st = DataStats()
    it: Any = range(len(source))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="stats", unit="sample", dynamic_ncols=True)
    for i in it:
        st.samples += 1
        try:
            rec = raw_record(source, i)
        except SampleError as e:
            st.unreadable += 1
            log.warning("stats: sample %d unreadable: %s", i, e)
            continue
        if not rec.captions:
            st.without_caption += 1
        for f, text in rec.captions.items():
            st.caption_fields[f] = st.caption_fields.get(f, 0) + 1
            b = _bin(len(text.split()), WORD_BINS)
            hist = st.caption_words.setdefault(f, {})
            hist[b] = hist.get(b, 0) + 1
        try:
            img = decode_image(rec.image, rec.key)
        except SampleError as e:
            st.unreadable += 1
            log.warning("stats: %s", e)
            continue
        w, h = img.size
        for d, k in ((st.short_side, _bin(min(h, w), SIDE_BINS)), (st.aspect, nearest_lens_aspect(h, w)),
                     (st.sizes, f"{h}x{w}")):
            d[k] = d.get(k, 0) + 1
    return st


def _bars(title: str, hist: dict[str, int], order: list[str] | None = None, width: int = 40) -> list[str]:
    keys = [k for k in (order or sorted(hist)) if k in hist]
    top = max(hist.values(), default=1)
    lines = [title]
    for k in keys:
        n = hist[k]
        lines.append(f"  {k:>10} {n:>7}  {'#' * max(1, round(width * n / top)) if n else ''}")
    return lines


def format_stats(st: DataStats, name: str = "") -> str:
    lines = [f"data stats{f' of {name}' if name else ''}",
             f"  samples: {st.samples}", f"  unreadable: {st.unreadable}", f"  without caption: {st.without_caption}",
             "  caption fields: " + (", ".join(f"{k}={v}" for k, v in sorted(st.caption_fields.items())) or "(none)")]
    for f in sorted(st.caption_words):
        lines += _bars(f"caption length in words ({f})", st.caption_words[f], _labels(WORD_BINS))
    lines += _bars("image short side (pixels)", st.short_side, _labels(SIDE_BINS))
    lines += _bars("aspect ratio (nearest of Lens's nine, W:H)", st.aspect, list(LENS_ASPECTS))
    return "\n".join(lines)


def plot_stats(st: DataStats, out_dir: str) -> list[str]:
    """Save ``caption_lengths.png``, ``resolutions.png`` and ``aspect_ratios.png`` under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def bar(ax: Any, hist: dict[str, int], order: list[str], title: str, xlabel: str) -> None:
        ax.bar(range(len(order)), [hist.get(k, 0) for k in order])
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")

    fields = sorted(st.caption_words) or ["(none)"]
    fig, axes = plt.subplots(1, len(fields), figsize=(5 * len(fields), 3.5), squeeze=False)
    for ax, f in zip(axes[0], fields):
        bar(ax, st.caption_words.get(f, {}), _labels(WORD_BINS), f"caption '{f}'", "words")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "caption_lengths.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    for fname, hist, order, title, xl in (
        ("resolutions.png", st.short_side, _labels(SIDE_BINS), "image short side", "pixels"),
        ("aspect_ratios.png", st.aspect, list(LENS_ASPECTS), "aspect ratio (W:H)", "nearest Lens aspect"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bar(ax, hist, order, title, xl)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, fname))
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths
