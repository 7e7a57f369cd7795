"""Programmatic verifier for the synthetic scene world: prompt fidelity at toy scale, and a reward
that noise does not earn.

Given an image and the scene spec it should show, :func:`verify` detects the objects, reads the
background and returns per-attribute scores in ``[0, 1]``:

* ``color``: matched spec objects with the right colour, divided by ``max(spec objects,
  detections)`` — every detection beyond the scene's objects lowers the score, so spraying blobs
  does not pay;
* ``shape``, ``size``, ``position``: likewise, counted only for matches whose colour is right too
  (the object is identified by its colour: a blue blob in the upper left is not "the red circle in
  the upper left");
* ``count``: fraction of object types (colour + shape, spec ∪ detected) whose detected count
  equals the spec count (extra objects cost, missing ones too);
* ``relation``: fraction of the spec's relations (left of / right of / above / below) that hold
  between the two matched detections, both of the right colour (absent when the scene has none);
* ``text``: glyph word legibility, normalised cross-correlation with the expected glyph mask
  (absent when the scene has no text);
* ``background``: the background's kind (flat / gradient / texture) is right, times the fraction
  of its named colours that are right; 0 when no background is visible (noise, or no object at all);
* ``overall``: mean of the attributes present.

Detection (:func:`analyze`, image-only, done once per image): pixels with high chroma (``max - min``
of RGB, > :data:`CHROMA_THRESHOLD`) are object pixels (backgrounds are low-chroma by construction),
assigned to the nearest palette colour; each connected component of one colour is a *candidate*.
A candidate counts as an object only if it looks like one of the world's objects
(:data:`ACCEPT` — measured on clean renders, blurred renders, codec round trips, trained tiny-model
samples, uniform noise and untrained-model colour noise; see ``tests/unit/test_data_verifier.py``):

* its area is at least ``min_area`` × (the smallest size class's side)² — noise specks are small;
* its bounding box is nearly square (aspect ≤ ``max_aspect``: every object spans a square box);
* the best shape template (rendered into the blob's box exactly as the renderer draws it) overlaps
  it with IoU ≥ ``min_iou`` — ragged noise fits no template;
* its pixels have one palette colour's hue (median deviation ≤ ``max_hue_dev`` degrees) — noise
  blobs are only assigned the *nearest* colour, their hues scatter; a soft or pale object keeps its
  hue (mixing with grey or white does not change hue), so this does not punish blur. The colour
  of a detection is the palette colour nearest in hue to the blob's median hue (a whitened red is
  nearer pink in RGB, not in hue).

A smaller accepted blob whose box overlaps a larger one's is a fragment of it, not a second object
(the world never lets object boxes overlap). Rejected candidates are kept (with the reason) in
:attr:`Analysis.rejected`. Size is the
bounding-box side relative to ``min(H, W)``; position is the bounding-box centre (a triangle's
centroid is off-centre). Spec objects and detections are matched with the Hungarian algorithm
(:func:`match_scene`).

Background (:func:`estimate_background`): the low-chroma pixels away from the detections, a plane
fitted per channel (robustly: glyph ink is dropped as outliers and the plane refitted); residual
spread → texture, a colour change across the image → gradient (its direction from the plane's
slope), else flat; colours are the nearest named background colours at the plane's ends (gradient)
or its mean; a texture's pattern from the residual's autocorrelation (noise: none at lag 1;
stripes: the residual repeats one renderer period further along x; checks: it flips sign there).
When too few low-chroma pixels are left (under half of what the detections leave), no background
is visible; nor when no object is detected: a bare canvas is not a scene, so a blank image that
happens to be in the prompt's background colour earns nothing (it would otherwise score 1/8 on
``background`` by chance in a flat-only world).

:func:`noise_baseline` scores blank images, uniform noise and optional extra images (an
untrained model's samples) against the same scenes or prompt rows: what a target's score must be
read against.

Images: float ``[3, H, W]`` tensors in ``[-1, 1]``, ``uint8 [H, W, 3]`` numpy arrays or PIL images.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from lensforge.data.sources.synthetic import (
    BACKGROUND_COLORS, PALETTE, SHAPES, SIZES, cell_of, draw_shape,
    glyph_box, glyph_mask, texture_period,
)
from lensforge.errors import LensforgeError

ATTRIBUTES = ("color", "shape", "size", "position", "count", "relation", "text", "background")

#: Pixels whose chroma (max - min over RGB, 0..255) exceeds this are object pixels.
CHROMA_THRESHOLD = 70
#: Pixels at or below this chroma (and away from objects) are background pixels.
BACKGROUND_CHROMA = 45

#: When a colour component counts as an object (see the module docstring).
ACCEPT: dict[str, float] = {
    "min_area": 0.3,         # × (smallest size class side · min(H, W))²
    "max_aspect": 1.8,       # bounding box long side / short side
    "min_iou": 0.5,          # best shape template IoU inside the bounding box
    "max_hue_dev": 12.0,     # median |hue - palette hue| of the blob's pixels, degrees
}
#: Background kind thresholds (0..255 units): residual spread of a texture, colour change of a gradient.
TEXTURE_STD = 3.5
GRADIENT_MIN = 12.0
#: A background is visible when at least this fraction of the pixels outside detections is low-chroma.
MIN_BACKGROUND_FRACTION = 0.5

_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.asarray([PALETTE[k] for k in _PALETTE_NAMES], dtype=np.float32)
_BG_NAMES = list(BACKGROUND_COLORS)
_BG_RGB = np.asarray([BACKGROUND_COLORS[k] for k in _BG_NAMES], dtype=np.float32)


@dataclass
class Detection:
    """One detected object: palette colour, best shape, size class, bbox (pixels), centre (normalised).

    ``hue_dev`` is the median hue deviation (degrees) of its pixels from the palette colour's;
    ``reason`` says why a candidate was rejected (empty for accepted detections).
    """

    color: str
    shape: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    x: float
    y: float
    area: int
    shape_iou: float
    hue_dev: float = 0.0
    reason: str = ""

    @property
    def cell(self) -> tuple[int, int]:
        return cell_of(self.x, self.y)


@dataclass
class BackgroundEstimate:
    """What the background looks like: ``kind`` is None when no background is visible (noise, no object)."""

    kind: str | None
    colors: list[str] = field(default_factory=list)
    direction: str | None = None
    pattern: str | None = None
    visible: float = 0.0          # low-chroma fraction of the pixels outside detections
    residual_std: float = 0.0
    change: float = 0.0           # colour change across the image (gradient strength)


@dataclass
class Analysis:
    """Everything read from one image (:func:`analyze`): reused by :func:`verify` and the rubric checks."""

    height: int
    width: int
    detections: list[Detection]
    rejected: list[Detection]
    background: BackgroundEstimate
    image: np.ndarray = field(repr=False)


def to_uint8(image: Any) -> np.ndarray:
    """Any accepted image type → ``uint8 [H, W, 3]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; numpy callers do not pay for importing it
    if torch is not None and isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", dtype=torch.float32)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise LensforgeError(f"verifier expects a [3, H, W] image tensor, got {tuple(t.shape)}")
        return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
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


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of ``[..., 3]`` RGB values (0 for greys)."""
    f = np.asarray(rgb, dtype=np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    mx, mn = f.max(-1), f.min(-1)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6.0, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (h * 60.0).astype(np.float32)


_PALETTE_HUE = _hue(_PALETTE_RGB)


def _nearest_size(side_frac: float) -> str:
    return min(SIZES, key=lambda s: abs(np.log(SIZES[s]) - np.log(max(side_frac, 1e-3))))


def _hue_offset(hue: np.ndarray | float, ref: float) -> np.ndarray:
    """Signed hue difference ``hue - ref`` wrapped into ``[-180, 180)`` degrees."""
    return (np.asarray(hue, dtype=np.float32) - ref + 180.0) % 360.0 - 180.0


def _blob_color(hues: np.ndarray, label: int) -> tuple[str, float]:
    """``(colour, median hue deviation)`` of a component found by nearest-RGB label ``label``.

    The colour is the palette colour nearest in hue to the blob's median hue: a pale (whitened) red
    is nearer pink in RGB but keeps red's hue. The deviation is the median ``|hue - that colour's
    hue|`` over the blob's pixels: small for an object of one colour, large for a patch of noise
    whose pixels only share a nearest palette colour.
    """
    ref = float(_PALETTE_HUE[label])
    centre = ref + float(np.median(_hue_offset(hues, ref)))
    k = int(np.abs(_hue_offset(_PALETTE_HUE, centre)).argmin())
    return _PALETTE_NAMES[k], float(np.median(np.abs(_hue_offset(hues, float(_PALETTE_HUE[k])))))


def _candidates(img: np.ndarray, shapes: Sequence[str]) -> list[Detection]:
    """Every colour component large enough to be looked at, with its features and verdict."""
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
    hue = np.zeros((H, W), dtype=np.float32)
    hue[obj] = _hue(px)
    smallest = min(SIZES.values()) * m
    min_area = max(6.0, ACCEPT["min_area"] * smallest ** 2)
    look_area = max(6, int(0.1 * smallest ** 2))  # below this a component is not even a candidate
    out: list[Detection] = []
    for k in np.unique(labels[obj]):
        comp, n = ndimage.label(labels == k)
        if n == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        for j, (sl, area) in enumerate(zip(ndimage.find_objects(comp), areas)):
            if sl is None or area < look_area:
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
            color, hdev = _blob_color(hue[sl][crop], int(k))
            aspect = max(bh, bw) / max(1, min(bh, bw))
            reasons = []
            if area < min_area:
                reasons.append(f"area {int(area)} < {min_area:.0f}")
            if aspect > ACCEPT["max_aspect"]:
                reasons.append(f"aspect {aspect:.2f} > {ACCEPT['max_aspect']}")
            if best_iou < ACCEPT["min_iou"]:
                reasons.append(f"shape IoU {best_iou:.2f} < {ACCEPT['min_iou']}")
            if hdev > ACCEPT["max_hue_dev"]:
                reasons.append(f"hue deviation {hdev:.0f} > {ACCEPT['max_hue_dev']:.0f} degrees")
            out.append(Detection(
                color=color, shape=best, size=_nearest_size(max(bh, bw) / m),
                box=(x0, y0, x1, y1), x=(x0 + x1) / 2 / W, y=(y0 + y1) / 2 / H, area=int(area),
                shape_iou=best_iou, hue_dev=hdev, reason="; ".join(reasons),
            ))
    return out


def _boxes_touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _judge(img: np.ndarray, shapes: Sequence[str]) -> list[Detection]:
    """Candidates with verdicts; accepted ones whose box overlaps a larger accepted box are fragments.

    The world never lets two objects' boxes overlap, so a smaller blob inside or across a larger
    one's box is a piece of it (a speckle of the object's colour, a fringe) — not a second object.
    """
    cands = _candidates(img, shapes)
    kept: list[Detection] = []
    for d in sorted((c for c in cands if not c.reason), key=lambda c: -c.area):
        big = next((k for k in kept if _boxes_touch(d.box, k.box)), None)
        if big is None:
            kept.append(d)
        else:
            d.reason = f"inside the box of a larger {big.color} {big.shape}"
    return cands


def detect(image: Any, shapes: tuple[str, ...] = SHAPES) -> list[Detection]:
    """The objects in ``image``: the colour components that pass :data:`ACCEPT` (module docstring)."""
    return [d for d in _judge(to_uint8(image), shapes) if not d.reason]


def analyze(image: Any, shapes: tuple[str, ...] = SHAPES) -> Analysis:
    """Detections, rejected candidates and the background of ``image`` (read once, scored many ways)."""
    img = to_uint8(image)
    cands = _judge(img, shapes)
    dets = [d for d in cands if not d.reason]
    return Analysis(height=img.shape[0], width=img.shape[1], detections=dets,
                    rejected=[d for d in cands if d.reason], background=estimate_background(img, dets), image=img)


# ---------------------------------------------------------------------------------------------
# background


def _nearest_bg(rgb: np.ndarray) -> str:
    return _BG_NAMES[int(((_BG_RGB - rgb[None, :]) ** 2).sum(1).argmin())]


def _lag_corr(r: np.ndarray, ok: np.ndarray, dx: int) -> float:
    """Correlation of the residual with itself shifted ``dx`` pixels along x (valid pixels only)."""
    if dx >= r.shape[1]:
        return 0.0
    a, b = r[:, :-dx], r[:, dx:]
    v = ok[:, :-dx] & ok[:, dx:]
    if v.sum() < 16:
        return 0.0
    a, b = a[v], b[v]
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _texture_pattern(res: np.ndarray, ok: np.ndarray, free: np.ndarray, H: int, W: int) -> str | None:
    """Which of the world's textures the residual is, or None when it is none of them.

    ``noise`` is independent per pixel (no correlation at lag 1); ``stripes`` repeat one renderer
    period further along x and flip half a period further; ``checks`` flip one period further.
    Unstructured blotches (a soft sample's speckle) are none of these.
    """
    rmap = np.zeros((H, W), dtype=np.float32)
    okmap = np.zeros((H, W), dtype=bool)
    idx = np.flatnonzero(free.ravel())[ok]
    rmap.ravel()[idx] = res[ok]
    okmap.ravel()[idx] = True
    if _lag_corr(rmap, okmap, 1) < 0.3:
        return "noise"
    p = texture_period(H, W)
    c_full, c_half = _lag_corr(rmap, okmap, int(round(p))), _lag_corr(rmap, okmap, int(round(p / 2)))
    if c_full > 0.5 and c_half < -0.3:
        return "stripes"
    if c_full < -0.3:
        return "checks"
    return None


def estimate_background(image: Any, detections: list[Detection] | None = None) -> BackgroundEstimate:
    """Kind, colours, gradient direction and texture pattern of the background (module docstring)."""
    img = to_uint8(image)
    H, W = img.shape[:2]
    if detections is None:
        detections = detect(img)
    f = img.astype(np.float32)
    chroma = f.max(axis=2) - f.min(axis=2)
    near_obj = ndimage.binary_dilation(chroma > BACKGROUND_CHROMA, iterations=2)
    outside = np.ones((H, W), dtype=bool)
    pad = max(2, int(0.03 * min(H, W)))
    for d in detections:
        x0, y0, x1, y1 = d.box
        outside[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = False
    free = outside & ~near_obj
    visible = float(free.sum()) / max(1, int(outside.sum()))
    if visible < MIN_BACKGROUND_FRACTION or free.sum() < 16 or not detections:
        return BackgroundEstimate(kind=None, visible=visible)
    yy, xx = np.meshgrid(np.linspace(0, 1, H, dtype=np.float32), np.linspace(0, 1, W, dtype=np.float32), indexing="ij")
    pix = f[free]
    X = np.stack([np.ones_like(xx[free]), xx[free], yy[free]], 1)
    ok = np.ones(len(pix), dtype=bool)
    for _ in range(2):  # fit, drop outliers (glyph ink, stray pixels), refit
        coef, *_ = np.linalg.lstsq(X[ok], pix[ok], rcond=None)
        res = (pix - X @ coef).mean(1)
        mad = float(np.median(np.abs(res[ok] - np.median(res[ok])))) * 1.4826
        ok = np.abs(res) <= max(25.0, 4.0 * mad)
    coef, *_ = np.linalg.lstsq(X[ok], pix[ok], rcond=None)
    res = (pix - X @ coef).mean(1)
    std = float(res[ok].std())
    b, ax, ay = coef[0], coef[1], coef[2]
    change = float(max(np.linalg.norm(ax), np.linalg.norm(ay), np.linalg.norm(ax + ay)))
    est = BackgroundEstimate(kind="flat", visible=visible, residual_std=std, change=change)
    mean_color = b + 0.5 * ax + 0.5 * ay
    pattern = _texture_pattern(res, ok, free, H, W) if std > TEXTURE_STD else None
    if pattern is not None:
        est.kind, est.pattern, est.colors = "texture", pattern, [_nearest_bg(mean_color)]
        return est
    if change > GRADIENT_MIN:
        nx, ny = float(np.linalg.norm(ax)), float(np.linalg.norm(ay))
        r = nx / max(1e-6, nx + ny)
        if r < 0.3:
            direction, start, end = "vertical", b + 0.5 * ax, b + 0.5 * ax + ay
        elif r > 0.7:
            direction, start, end = "horizontal", b + 0.5 * ay, b + 0.5 * ay + ax
        else:
            direction, start, end = "diagonal", b, b + ax + ay
        ends = [_nearest_bg(start), _nearest_bg(end)]
        if ends[0] != ends[1]:  # the world's gradients run between two different named colours
            est.kind, est.direction, est.colors = "gradient", direction, ends
            return est
    est.colors = [_nearest_bg(mean_color)]
    return est


def background_checks(est: BackgroundEstimate, spec: dict[str, Any]) -> dict[str, float]:
    """Per-field agreement of an estimate with a background spec (fields present in ``spec`` only).

    ``spec`` is a scene's ``background`` (``kind``, ``colors``, ``direction``, ``pattern``) or a
    rubric check's (``type`` instead of ``kind``). ``colors`` scores the fraction of colours right
    in order (a gradient's start and end). Everything is 0 when no background is visible.
    """
    kind = spec.get("kind", spec.get("type"))
    out: dict[str, float] = {}
    if kind is not None:
        out["kind"] = float(est.kind == kind)
    if spec.get("colors"):
        want = list(spec["colors"])
        got = est.colors if (kind is None or est.kind == kind) else []
        if len(want) == 1 and len(got) == 2:  # a one-colour claim about a gradient: its dominant end
            got = got[:1]
        out["colors"] = (sum(a == b for a, b in zip(want, got)) / len(want)) if est.kind else 0.0
    if spec.get("direction"):
        out["direction"] = float(est.kind == "gradient" and est.direction == spec["direction"])
    if spec.get("pattern"):
        out["pattern"] = float(est.kind == "texture" and est.pattern == spec["pattern"])
    return out


def background_score(est: BackgroundEstimate, spec: dict[str, Any]) -> float:
    """Kind right × fraction of colours right (0 when no background is visible)."""
    c = background_checks(est, {"kind": spec.get("kind", spec.get("type")), "colors": spec.get("colors")})
    return float(c.get("kind", 1.0) * c.get("colors", 1.0))


# ---------------------------------------------------------------------------------------------
# scene scores


def relation_holds(rel: str, a: Detection, b: Detection) -> bool:
    """``a`` is ``rel`` ``b`` (centre comparison; y grows downwards)."""
    if rel == "left of":
        return a.x < b.x
    if rel == "right of":
        return a.x > b.x
    if rel == "above":
        return a.y < b.y
    if rel == "below":
        return a.y > b.y
    raise LensforgeError(f"unknown relation '{rel}'; relations are: left of, right of, above, below")


def text_score(image: Any, text: dict[str, Any]) -> float:
    """Legibility of a glyph word at its box: NCC with the expected mask, ``/0.6`` clipped to [0, 1]."""
    img = to_uint8(image)
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


def match_scene(objects: list[dict[str, Any]], dets: list[Detection]) -> dict[int, Detection]:
    """Spec object index → its detection (Hungarian on colour, shape, size and distance)."""
    n, k = len(objects), len(dets)
    if not n or not k:
        return {}
    cost = np.zeros((n, k))
    for i, o in enumerate(objects):
        for j, d in enumerate(dets):
            cost[i, j] = (4.0 * (o["color"] != d.color) + 2.0 * (o["shape"] != d.shape)
                          + 1.0 * (o["size"] != d.size) + float(np.hypot(o["x"] - d.x, o["y"] - d.y)))
    rows, cols = linear_sum_assignment(cost)
    return {int(r): dets[int(c)] for r, c in zip(rows, cols)}


def verify(image: Any, scene: dict[str, Any], *, return_detections: bool = False,
           analysis: Analysis | None = None) -> dict[str, Any]:
    """Per-attribute scores of ``image`` against ``scene`` (keys from :data:`ATTRIBUTES` + ``overall``).

    ``analysis`` (from :func:`analyze` of the same image) skips detection.
    """
    a = analysis if analysis is not None else analyze(image)
    dets = a.detections
    objs = scene["objects"]
    n, k = len(objs), len(dets)
    match = match_scene(objs, dets)
    same_color = {i: d for i, d in match.items() if d.color == objs[i]["color"]}
    scores: dict[str, float] = {}
    if n:
        denom = max(n, k)
        scores["color"] = len(same_color) / denom
        scores["shape"] = sum(d.shape == objs[i]["shape"] for i, d in same_color.items()) / denom
        scores["size"] = sum(d.size == objs[i]["size"] for i, d in same_color.items()) / denom
        scores["position"] = sum(d.cell == tuple(objs[i]["cell"]) for i, d in same_color.items()) / denom
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
            r["a"] in same_color and r["b"] in same_color
            and relation_holds(r["relation"], same_color[r["a"]], same_color[r["b"]])
            for r in rels
        ) / len(rels)
    if scene.get("text"):
        scores["text"] = text_score(a.image, scene["text"])
    if scene.get("background"):
        scores["background"] = background_score(a.background, scene["background"])
    scores["overall"] = float(np.mean(list(scores.values())))
    out: dict[str, Any] = {k2: float(v) for k2, v in scores.items()}
    if return_detections:
        out["detections"] = dets
    return out


# ---------------------------------------------------------------------------------------------
# noise baseline

#: Blank images use these colours (independent of the prompts): black, mid grey, white and the
#: world's background colours.
BLANK_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (128, 128, 128), (255, 255, 255),
                                                  *BACKGROUND_COLORS.values())


def blank_image(size: tuple[int, int], index: int = 0) -> np.ndarray:
    """A flat ``uint8 [H, W, 3]`` image in ``BLANK_COLORS[index % len]``."""
    H, W = size
    return np.broadcast_to(np.asarray(BLANK_COLORS[index % len(BLANK_COLORS)], np.uint8), (H, W, 3)).copy()


def noise_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform per-pixel RGB noise, ``uint8 [H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
