"""Rubric-item checks: machine-checkable facts about an image, scored on the verifier's reading.

A prompt-set row (``{"id", "prompt", "category", "rubric": [{"id", "question", "weight", "check"}],
"scene"?, …}``) may give each rubric item a ``check`` dict. :func:`score_items` reads the image once
(:func:`lensforge.data.verifier.analyze`: the accepted object detections and the background) and
scores every checked item in ``[0, 1]``; :func:`aggregate` is the item-weighted mean; :func:`score_row`
adds the clutter factor and GenEval's strict verdict. Items without a ``check`` are left out (they
are for a VLM judge); a row with no checked item is an error.

Object references
-----------------
``REF`` is either

* a **descriptor** ``{"color"?: C, "shape"?: S, "size"?: Z, "cell"?: [row, col]}``: the detections
  that have every given attribute (``cell`` is the 3×3 grid cell, row 0 = top, col 0 = left; an
  empty descriptor is every detection); or
* an **int**: the index of an object in the row's ``scene``, resolved to its detection by the
  verifier's Hungarian matching (:func:`~lensforge.data.verifier.match_scene`) and used only when
  that detection has the object's colour (needs ``scene``).

A check about a referenced object scores 1 when *some* referenced detection satisfies it (so a
check presupposes its object: "the red circle is large" is 0 when there is no red circle).

Check kinds
-----------
``object``        ``{"object": DESC}`` — 1 if a detection matches DESC.
``color``         ``{"object": REF, "color": C}`` — 1 if a referenced object has palette colour C.
``shape``         ``{"object": REF, "shape": S}`` — 1 if a referenced object has shape S.
``size``          ``{"object": REF, "size": Z}`` — 1 if a referenced object has size class Z.
``position``      ``{"object": REF, "cell": [row, col], "region"?: name}`` — 1 if a referenced object is
                  in that 3×3 cell.
``count``         ``{"object": DESC, "count": N}`` — 1 if exactly N detections match, else
                  ``max(0, 1 − |n − N| / N)`` (partial credit, as flow_grpo's GenEval reward); with
                  N = 0, 1 if none match.
``relation``      ``{"a": REF, "b": REF, "relation": "left of" | "right of" | "above" | "below"}`` — 1 if
                  two distinct referenced objects hold it.
``background``    ``{"type"?: flat | gradient | texture, "colors"?: [names, in order],
                  "direction"?: vertical | horizontal | diagonal, "pattern"?: stripes | checks | noise}``
                  — mean agreement of the given fields (at least one).
``text``          ``{"word": W, "x", "y", "h": the scene's glyph box (normalised), "ink": black | white}``
                  — glyph legibility (:func:`~lensforge.data.verifier.text_score`).
``aspect_ratio``  ``{"ratio": "W:H"}`` — 1 if the image's W/H is within 5 % of W/H (and it shows an
                  object).

Every check is ``{"kind": KIND, …fields}``; :func:`check_problems` lists what is wrong with one.

Scene-level facts (``background``, ``aspect_ratio``) need a scene: on an image where no object is
detected they score 0 — a bare canvas in the prompt's background colour, or noise sampled at the
row's size (which fixes the format), would otherwise collect them for free.

Relations compare box centres (y grows downwards), as :func:`~lensforge.data.verifier.verify` does.
An item *passes* when its score is 1; GenEval's strict rule (:func:`score_row` ``strict``) is that
every checked item passes.

Clutter: when the row carries a ``scene``, :func:`score_row`'s ``score`` is the weighted mean times
``n / max(n, detections)`` (``n`` = the scene's objects), so a picture sprayed with extra shapes does
not collect every "is there a …" item for free — the same rule :func:`verify` applies per attribute.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from lensforge.data.sources.synthetic import (
    BACKGROUND_COLORS, BACKGROUND_KINDS, GRADIENT_DIRECTIONS, PALETTE, SHAPES, SIZES, TEXTURES,
)
from lensforge.data.verifier import (
    BLANK_COLORS, Analysis, Detection, analyze, background_checks, blank_image, match_scene, noise_image,
    relation_holds, text_score, verify,
)
from lensforge.errors import LensforgeError

CHECK_KINDS = ("object", "color", "shape", "size", "position", "count", "relation", "background", "text",
               "aspect_ratio")
RELATIONS = ("left of", "right of", "above", "below")
#: Relative tolerance of the ``aspect_ratio`` check.
ASPECT_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------
# validation


def _desc_problems(desc: Any, where: str) -> list[str]:
    if not isinstance(desc, dict):
        return [f"{where} must be a descriptor dict (color/shape/size/cell), got {desc!r}"]
    out = []
    unknown = set(desc) - {"color", "shape", "size", "cell"}
    if unknown:
        out.append(f"{where} has unknown key(s) {', '.join(sorted(unknown))}; allowed: color, shape, size, cell")
    for key, vocab in (("color", PALETTE), ("shape", SHAPES), ("size", SIZES)):
        if key in desc and desc[key] not in vocab:
            out.append(f"{where}.{key} '{desc[key]}' is not one of {', '.join(vocab)}")
    if "cell" in desc and not _is_cell(desc["cell"]):
        out.append(f"{where}.cell must be [row, col] with 0 <= row, col <= 2, got {desc['cell']!r}")
    return out


def _is_cell(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 2 for c in v))


def _ref_problems(ref: Any, where: str, scene: dict[str, Any] | None) -> list[str]:
    if isinstance(ref, bool):
        return [f"{where} must be an object index or a descriptor dict, got {ref!r}"]
    if isinstance(ref, int):
        if scene is None:
            return [f"{where} is an object index but the row has no 'scene'"]
        if not 0 <= ref < len(scene.get("objects", [])):
            return [f"{where} = {ref} is not an object of the row's scene ({len(scene.get('objects', []))} objects)"]
        return []
    return _desc_problems(ref, where)


def _parse_ratio(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    a, _, b = text.partition(":")
    try:
        w, h = int(a), int(b)
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def check_problems(check: Any, scene: dict[str, Any] | None = None) -> list[str]:
    """Everything wrong with one ``check`` dict (empty when it is valid); ``scene`` for index refs."""
    if not isinstance(check, dict):
        return [f"check must be a dict, got {type(check).__name__}"]
    kind = check.get("kind")
    if kind not in CHECK_KINDS:
        return [f"check kind {kind!r} is not one of {', '.join(CHECK_KINDS)}"]
    out: list[str] = []
    if kind == "object":
        out += _desc_problems(check.get("object"), "object")
    elif kind in ("color", "shape", "size", "position"):
        out += _ref_problems(check.get("object"), "object", scene)
        vocab = {"color": PALETTE, "shape": SHAPES, "size": SIZES}.get(kind)
        if kind == "position":
            if not _is_cell(check.get("cell")):
                out.append(f"cell must be [row, col] with 0 <= row, col <= 2, got {check.get('cell')!r}")
        elif check.get(kind) not in vocab:  # type: ignore[operator]
            out.append(f"{kind} {check.get(kind)!r} is not one of {', '.join(vocab)}")  # type: ignore[arg-type]
    elif kind == "count":
        out += _desc_problems(check.get("object", {}), "object")
        n = check.get("count")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            out.append(f"count must be an integer >= 0, got {n!r}")
    elif kind == "relation":
        out += _ref_problems(check.get("a"), "a", scene) + _ref_problems(check.get("b"), "b", scene)
        if check.get("relation") not in RELATIONS:
            out.append(f"relation {check.get('relation')!r} is not one of {', '.join(RELATIONS)}")
    elif kind == "background":
        fields = [k for k in ("type", "colors", "direction", "pattern") if k in check]
        if not fields:
            out.append("a background check needs at least one of type, colors, direction, pattern")
        if "type" in check and check["type"] not in BACKGROUND_KINDS:
            out.append(f"type {check['type']!r} is not one of {', '.join(BACKGROUND_KINDS)}")
        if "colors" in check and (not isinstance(check["colors"], list) or not check["colors"]
                                  or any(c not in BACKGROUND_COLORS for c in check["colors"])):
            out.append(f"colors must be a non-empty list of {', '.join(BACKGROUND_COLORS)}, got {check['colors']!r}")
        if "direction" in check and check["direction"] not in GRADIENT_DIRECTIONS:
            out.append(f"direction {check['direction']!r} is not one of {', '.join(GRADIENT_DIRECTIONS)}")
        if "pattern" in check and check["pattern"] not in TEXTURES:
            out.append(f"pattern {check['pattern']!r} is not one of {', '.join(TEXTURES)}")
    elif kind == "text":
        if not isinstance(check.get("word"), str) or not check["word"]:
            out.append("text needs a non-empty 'word'")
        for k in ("x", "y", "h"):
            if not isinstance(check.get(k), (int, float)) or not 0 < check[k] <= 1:
                out.append(f"text needs '{k}' in (0, 1] (the glyph box, normalised), got {check.get(k)!r}")
        if check.get("ink", "black") not in ("black", "white"):
            out.append(f"ink must be black or white, got {check.get('ink')!r}")
    elif kind == "aspect_ratio":
        if _parse_ratio(check.get("ratio")) is None:
            out.append(f"ratio must look like '3:2', got {check.get('ratio')!r}")
    return out


def row_check_problems(row: dict[str, Any]) -> list[str]:
    """``item id: problem`` for every invalid check of a row (items without ``check`` are fine)."""
    out = []
    for item in row.get("rubric") or []:
        if isinstance(item, dict) and "check" in item:
            out += [f"rubric item '{item.get('id')}': {p}" for p in check_problems(item["check"], row.get("scene"))]
    return out


# ---------------------------------------------------------------------------------------------
# scoring


def _matches(d: Detection, desc: dict[str, Any]) -> bool:
    return ((desc.get("color") is None or d.color == desc["color"])
            and (desc.get("shape") is None or d.shape == desc["shape"])
            and (desc.get("size") is None or d.size == desc["size"])
            and (desc.get("cell") is None or d.cell == tuple(desc["cell"])))


class _Reader:
    """One image's analysis plus the row's scene matching, shared by all items of a row."""

    def __init__(self, analysis: Analysis, scene: dict[str, Any] | None):
        self.a = analysis
        self.scene = scene
        self._match: dict[int, Detection] | None = None

    def refs(self, ref: Any) -> list[Detection]:
        if isinstance(ref, int) and not isinstance(ref, bool):
            if self.scene is None:
                raise LensforgeError("a check refers to scene object index but the row has no 'scene'")
            if self._match is None:
                self._match = match_scene(self.scene["objects"], self.a.detections)
            d = self._match.get(ref)
            return [d] if d is not None and d.color == self.scene["objects"][ref]["color"] else []
        return [d for d in self.a.detections if _matches(d, ref or {})]


def _score_check(check: dict[str, Any], rd: _Reader) -> float:
    kind = check["kind"]
    if kind == "object":
        return float(bool(rd.refs(check["object"])))
    if kind in ("color", "shape", "size"):
        return float(any(getattr(d, kind) == check[kind] for d in rd.refs(check["object"])))
    if kind == "position":
        return float(any(d.cell == tuple(check["cell"]) for d in rd.refs(check["object"])))
    if kind == "count":
        want, got = int(check["count"]), len(rd.refs(check.get("object", {})))
        if want == 0:
            return float(got == 0)
        return max(0.0, 1.0 - abs(got - want) / want)
    if kind == "relation":
        aa, bb = rd.refs(check["a"]), rd.refs(check["b"])
        return float(any(da is not db and relation_holds(check["relation"], da, db) for da in aa for db in bb))
    if kind == "background":
        spec = {k: check[k] for k in ("type", "colors", "direction", "pattern") if k in check}
        parts = background_checks(rd.a.background, spec)
        return float(sum(parts.values()) / len(parts)) if parts else 0.0
    if kind == "text":
        return text_score(rd.a.image, check)
    if kind == "aspect_ratio":
        if not rd.a.detections:  # a bare canvas is not "a 2:1 photo of" anything (like the background rule)
            return 0.0
        w, h = _parse_ratio(check["ratio"])  # type: ignore[misc]
        got = rd.a.width / rd.a.height
        return float(abs(math.log(got / (w / h))) <= math.log1p(ASPECT_TOLERANCE))
    raise LensforgeError(f"check kind {kind!r} is not one of {', '.join(CHECK_KINDS)}")


def _checked(row: dict[str, Any]) -> list[dict[str, Any]]:
    items = [it for it in row.get("rubric") or [] if isinstance(it, dict) and it.get("check") is not None]
    if not items:
        raise LensforgeError(f"row '{row.get('id')}' has no rubric item with a 'check' the verifier can score")
    return items


def score_items(image: Any, row: dict[str, Any], *, analysis: Analysis | None = None) -> dict[str, float]:
    """``{item_id: score in [0, 1]}`` for every rubric item of ``row`` that has a ``check``.

    The image is read once (``analysis``, from :func:`~lensforge.data.verifier.analyze`, may be
    passed in). Raises :class:`LensforgeError` for an invalid check or a row with none.
    """
    items = _checked(row)
    scene = row.get("scene")
    for it in items:
        problems = check_problems(it["check"], scene)
        if problems:
            raise LensforgeError(f"row '{row.get('id')}', rubric item '{it.get('id')}': " + "; ".join(problems))
    rd = _Reader(analysis if analysis is not None else analyze(image), scene)
    return {str(it["id"]): _score_check(it["check"], rd) for it in items}


def aggregate(scores: dict[str, float], row: dict[str, Any]) -> float:
    """Weighted mean of item scores (each rubric item's ``weight``, default 1) over the scored items."""
    weights = {str(it["id"]): float(it.get("weight", 1.0)) for it in row.get("rubric") or [] if isinstance(it, dict)}
    total = sum(weights.get(k, 1.0) for k in scores)
    if total <= 0:
        raise LensforgeError(f"row '{row.get('id')}': the scored rubric items have no positive weight")
    return float(sum(weights.get(k, 1.0) * v for k, v in scores.items()) / total)


def score_row(image: Any, row: dict[str, Any], *, analysis: Analysis | None = None) -> dict[str, Any]:
    """Items, their weighted mean with the clutter factor, GenEval's strict verdict and per-kind means.

    Returns ``{"items": {id: score}, "mean": weighted mean, "clutter": n / max(n, detections) (1
    without a scene), "score": mean × clutter, "strict": every item passes, "kinds": {kind: mean},
    "detections": number of accepted detections}``.
    """
    a = analysis if analysis is not None else analyze(image)
    items = score_items(image, row, analysis=a)
    mean = aggregate(items, row)
    scene = row.get("scene")
    clutter = 1.0
    if scene and scene.get("objects"):
        n = len(scene["objects"])
        clutter = n / max(n, len(a.detections))
    kinds: dict[str, list[float]] = {}
    for it in _checked(row):
        kinds.setdefault(it["check"]["kind"], []).append(items[str(it["id"])])
    return {"items": items, "mean": mean, "clutter": clutter, "score": mean * clutter,
            "strict": all(v >= 1.0 - 1e-9 for v in items.values()),
            "kinds": {k: sum(v) / len(v) for k, v in kinds.items()}, "detections": len(a.detections)}


# ---------------------------------------------------------------------------------------------
# noise baseline


def _item_size(item: dict[str, Any], default: tuple[int, int]) -> tuple[int, int]:
    if item.get("height") and item.get("width"):
        return int(item["height"]), int(item["width"])
    return default


def _mean(results: list[dict[str, float]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in results:
        for k, v in r.items():
            if isinstance(v, (int, float)):
                acc.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def noise_baseline(items: Sequence[dict[str, Any]], *, size: tuple[int, int] = (64, 64), seed: int = 0,
                   extra: dict[str, Sequence[Any]] | None = None,
                   score: Callable[[Any, dict[str, Any]], dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Mean scores of images that carry no prompt information, against ``items``.

    ``items`` are scenes (scored with :func:`~lensforge.data.verifier.verify`) or prompt-set rows (scored with
    :func:`score_row`: ``score``, the per-category means ``category/NAME``
    and the per-check-kind means ``kind/NAME``). For each item: a blank image (a flat colour from
    :data:`BLANK_COLORS` chosen by a seeded draw, not by the prompt) and uniform noise, at the row's
    ``height``/``width`` or ``size``. ``extra`` adds named image lists aligned with ``items`` (an
    untrained model's samples …). ``score(image, item)`` replaces the scorer. Returns
    ``{"blank": {...}, "noise": {...}, **{name: {...}}}``.
    """
    if not items:
        raise LensforgeError("noise_baseline needs at least one scene or prompt row")
    if score is None:
        score = _default_scorer(items[0])
    rng = np.random.default_rng(seed)
    sets: dict[str, list[Any]] = {"blank": [], "noise": []}
    for i, it in enumerate(items):
        sz = _item_size(it, size)
        sets["blank"].append(blank_image(sz, int(rng.integers(len(BLANK_COLORS)))))
        sets["noise"].append(noise_image(sz, seed=int(rng.integers(2**31))))
    for name, imgs in (extra or {}).items():
        if len(imgs) != len(items):
            raise LensforgeError(f"noise_baseline: '{name}' has {len(imgs)} images for {len(items)} items")
        sets[name] = list(imgs)
    return {name: _mean([score(im, it) for im, it in zip(imgs, items)]) for name, imgs in sets.items()}


def _default_scorer(item: dict[str, Any]) -> Callable[[Any, dict[str, Any]], dict[str, float]]:
    if "rubric" in item:
        def by_row(im: Any, row: dict[str, Any]) -> dict[str, float]:
            r = score_row(im, row)
            out = {"score": r["score"], f"category/{row.get('category', '')}": r["score"]}
            for kind, v in r["kinds"].items():
                out[f"kind/{kind}"] = v
            return out

        return by_row
    if "objects" in item:
        return lambda im, sc: verify(im, sc)
    raise LensforgeError("noise_baseline items must be scenes (with 'objects') or prompt rows (with 'rubric')")
