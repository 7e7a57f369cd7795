"""Programmatic verifier for the synthetic scene world: prompt fidelity at toy scale.

Given an image and the scene spec it should show, :func:`verify` detects the objects and returns
per-attribute scores in ``[0, 1]``:

* ``color``, ``shape``, ``size``, ``position``: fraction of spec objects that were found (matched)
  with the right colour / shape / size class / 3×3 grid region;
* ``count``: fraction of object types (colour + shape, spec ∪ detected) whose detected count equals
  the spec count (extra objects cost, missing ones too);
* ``relation``: fraction of the spec's relations (left of / right of / above / below) that hold
  between the matched detections (absent when the scene has no relation);
* ``text``: glyph word legibility, normalised cross-correlation with the expected glyph mask
  (absent when the scene has no text);
* ``overall``: mean of the attributes present.

Detection: pixels with high chroma (``max - min`` of RGB) are object pixels (backgrounds are
low-chroma by construction), assigned to the nearest palette colour; connected components per
colour above a minimum area are objects; the shape is the template (rendered into the blob's
bounding box exactly as the renderer draws it) with the highest IoU; size is the bounding-box side
relative to ``min(H, W)``; position is the bounding-box centre (not the centroid: a triangle's
centroid is off-centre). Spec objects and detections are matched with the Hungarian algorithm.

Images: float ``[3, H, W]`` tensors in ``[-1, 1]``, ``uint8 [H, W, 3]`` numpy arrays or PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from lensforge.data.sources.synthetic import (
    PALETTE, SHAPES, SIZES, cell_of, draw_shape, glyph_box, glyph_mask,
)
from lensforge.errors import LensforgeError

ATTRIBUTES = ("color", "shape", "size", "position", "count", "relation", "text")

#: Pixels whose chroma (max - min over RGB, 0..255) exceeds this are object pixels.
CHROMA_THRESHOLD = 70
_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.asarray([PALETTE[k] for k in _PALETTE_NAMES], dtype=np.float32)


@dataclass
class Detection:
    """One detected object: palette colour, best shape, size class, bbox (pixels), centre (normalised)."""

    color: str
    shape: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    x: float
    y: float
    area: int
    shape_iou: float

    @property
    def cell(self) -> tuple[int, int]:
        return cell_of(self.x, self.y)


def to_uint8(image: Any) -> np.ndarray:
    """Any accepted image type → ``uint8 [H, W, 3]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().to("cpu", dtype=torch.float32)
            if t.dim() == 4 and t.shape[0] == 1:
                t = t[0]
            if t.dim() != 3 or t.shape[0] != 3:
                raise LensforgeError(f"verifier expects a [3, H, W] image tensor, got {tuple(t.shape)}")
            return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise LensforgeError(f"verifier expects an HWC RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise LensforgeError(f"verifier expects uint8 HWC arrays (or float [3,H,W] tensors), got {arr.dtype}")
    return arr[..., :3]


@lru_cache(maxsize=4096)
def _template(shape: str, h: int, w: int) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    draw_shape(ImageDraw.Draw(img), shape, (0, 0, w, h), 255)
    return np.asarray(img) > 0


def _nearest_size(side_frac: float) -> str:
    return min(SIZES, key=lambda s: abs(np.log(SIZES[s]) - np.log(max(side_frac, 1e-3))))


def detect(image: Any, shapes: tuple[str, ...] = SHAPES) -> list[Detection]:
    """Find the coloured objects in ``image`` (see the module docstring)."""
    img = to_uint8(image)
    H, W = img.shape[:2]
    m = min(H, W)
    f = img.astype(np.int16)
    chroma = f.max(axis=2) - f.min(axis=2)
    obj = chroma > CHROMA_THRESHOLD
    if not obj.any():
        return []
    px = img[obj].astype(np.float32)
    d2 = ((px[:, None, :] - _PALETTE_RGB[None, :, :]) ** 2).sum(-1)
    labels = np.full((H, W), -1, dtype=np.int16)
    labels[obj] = d2.argmin(1)
    min_area = max(6, int(0.1 * (min(SIZES.values()) * m) ** 2))
    out: list[Detection] = []
    for k in np.unique(labels[obj]):
        comp, n = ndimage.label(labels == k)
        if n == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        slices = ndimage.find_objects(comp)
        for j, (sl, area) in enumerate(zip(slices, areas)):
            if area < min_area or sl is None:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            crop = comp[sl] == (j + 1)
            bh, bw = crop.shape
            best, best_iou = shapes[0], -1.0
            for s in shapes:
                t = _template(s, bh, bw)
                iou = float(np.logical_and(t, crop).sum()) / max(1, int(np.logical_or(t, crop).sum()))
                if iou > best_iou:
                    best, best_iou = s, iou
            out.append(Detection(
                color=_PALETTE_NAMES[int(k)], shape=best, size=_nearest_size(max(bh, bw) / m),
                box=(x0, y0, x1, y1), x=(x0 + x1) / 2 / W, y=(y0 + y1) / 2 / H, area=int(area), shape_iou=best_iou,
            ))
    return out


def _relation_holds(rel: str, a: Detection, b: Detection) -> bool:
    if rel == "left of":
        return a.x < b.x
    if rel == "right of":
        return a.x > b.x
    if rel == "above":
        return a.y < b.y
    if rel == "below":
        return a.y > b.y
    raise LensforgeError(f"unknown relation '{rel}'")


def _text_score(img: np.ndarray, text: dict[str, Any]) -> float:
    H, W = img.shape[:2]
    x0, y0, x1, y1 = glyph_box(text, H, W)
    tmpl = glyph_mask(text["word"], y1 - y0, x1 - x0).astype(np.float32)
    gray = img[y0:y1, x0:x1].astype(np.float32).mean(-1)
    if text.get("ink", "black") == "black":
        gray = -gray
    g, t = gray - gray.mean(), tmpl - tmpl.mean()
    den = float(np.sqrt((g * g).sum() * (t * t).sum()))
    ncc = float((g * t).sum()) / den if den > 0 else 0.0
    return float(np.clip(ncc / 0.6, 0.0, 1.0))


def verify(image: Any, scene: dict[str, Any], *, return_detections: bool = False) -> dict[str, Any]:
    """Per-attribute scores of ``image`` against ``scene`` (keys from :data:`ATTRIBUTES` + ``overall``)."""
    img = to_uint8(image)
    dets = detect(img)
    objs = scene["objects"]
    n, k = len(objs), len(dets)
    match: dict[int, Detection] = {}
    if n and k:
        cost = np.zeros((n, k))
        for i, o in enumerate(objs):
            for j, d in enumerate(dets):
                cost[i, j] = (4.0 * (o["color"] != d.color) + 2.0 * (o["shape"] != d.shape)
                              + 1.0 * (o["size"] != d.size) + float(np.hypot(o["x"] - d.x, o["y"] - d.y)))
        rows, cols = linear_sum_assignment(cost)
        match = {int(r): dets[int(c)] for r, c in zip(rows, cols)}
    scores: dict[str, float] = {}
    if n:
        scores["color"] = sum(i in match and match[i].color == o["color"] for i, o in enumerate(objs)) / n
        scores["shape"] = sum(i in match and match[i].shape == o["shape"] for i, o in enumerate(objs)) / n
        scores["size"] = sum(i in match and match[i].size == o["size"] for i, o in enumerate(objs)) / n
        scores["position"] = sum(i in match and match[i].cell == tuple(o["cell"]) for i, o in enumerate(objs)) / n
    spec_counts: dict[tuple[str, str], int] = {}
    for o in objs:
        spec_counts[(o["color"], o["shape"])] = spec_counts.get((o["color"], o["shape"]), 0) + 1
    det_counts: dict[tuple[str, str], int] = {}
    for d in dets:
        det_counts[(d.color, d.shape)] = det_counts.get((d.color, d.shape), 0) + 1
    types = set(spec_counts) | set(det_counts)
    scores["count"] = (sum(spec_counts.get(t, 0) == det_counts.get(t, 0) for t in types) / len(types)) if types else 1.0
    rels = scene.get("relations") or []
    if rels:
        scores["relation"] = sum(
            r["a"] in match and r["b"] in match and _relation_holds(r["relation"], match[r["a"]], match[r["b"]])
            for r in rels
        ) / len(rels)
    if scene.get("text"):
        scores["text"] = _text_score(img, scene["text"])
    scores["overall"] = float(np.mean(list(scores.values())))
    out: dict[str, Any] = {k2: float(v) for k2, v in scores.items()}
    if return_detections:
        out["detections"] = dets
    return out
