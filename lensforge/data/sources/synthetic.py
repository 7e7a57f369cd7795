"""The synthetic scene world: the embedded, offline, deterministic default data source.

Every sample is a *scene* drawn from ``(seed, index)``: a background (flat colour, gradient or
texture) and 1–5 objects, each with a shape, a colour, a size class and a position in a 3×3 grid
of regions, plus spatial relations between consecutive objects and optionally a short glyph word.
The scene is stored as plain JSON-able data (the *scene graph*), rendered at any ``(H, W)`` with
numpy/PIL, and described twice:

* a **dense** caption (80–120 words) naming every object's colour, shape, size, region, the
  per-type counts, every relation and the background, with randomly varied phrasing;
* a **short** alt-text-like caption that is vague and often incomplete.

Geometry is defined in normalised coordinates so that one scene renders without overlaps at every
aspect ratio from 1:2 to 2:1: object sizes are fractions of ``min(H, W)``, centres are fractions of
``W`` and ``H``, and placement keeps boxes apart in the normalised square (pixel distances only
grow when one side is stretched). Object colours are saturated and far apart; backgrounds are
low-chroma, so :mod:`lensforge.data.verifier` can segment objects by colour even on blurry images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lensforge.errors import LensforgeError
from lensforge.interfaces.data import DataSource
from lensforge.registry import register

if TYPE_CHECKING:
    import torch

    from lensforge.interfaces.batch import Sample
    from lensforge.data.sources.common import RawRecord

log = logging.getLogger("lensforge.data")

# ---------------------------------------------------------------------------------------------
# vocabulary

#: Object colours: saturated (chroma >= 150) and far apart in RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (245, 220, 20),
    "green": (30, 170, 50),
    "cyan": (20, 190, 210),
    "blue": (30, 70, 230),
    "purple": (140, 50, 200),
    "pink": (240, 80, 170),
}

#: Background colours: low chroma (< 40), so they never look like an object colour.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "light grey": (200, 200, 200),
    "grey": (135, 135, 135),
    "dark grey": (70, 70, 70),
    "beige": (215, 205, 180),
    "cream": (240, 235, 220),
    "slate": (105, 115, 130),
    "charcoal": (45, 48, 52),
    "off-white": (245, 245, 242),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
#: Size classes: object box side as a fraction of ``min(H, W)``. ``huge`` (half the image side) is
#: not in the default world; one-object worlds for tiny models use it, so that an outline spans
#: several latent tokens (``recipes/_base/synthetic_tiny.yaml``).
SIZES: dict[str, float] = {"small": 0.18, "medium": 0.25, "large": 0.32, "huge": 0.5}
#: Size classes of the default world.
DEFAULT_SIZES: tuple[str, ...] = ("small", "medium", "large")
BACKGROUND_KINDS: tuple[str, ...] = ("flat", "gradient", "texture")
TEXTURES: tuple[str, ...] = ("stripes", "checks", "noise")
GRADIENT_DIRECTIONS: tuple[str, ...] = ("vertical", "horizontal", "diagonal")
GLYPH_LETTERS = "ABCDEFHKLMNPRSTUXYZ"

ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "centre", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE_WORDS = {"small": ("small", "little", "small"), "medium": ("medium-sized", "mid-sized", "medium"),
              "large": ("large", "big", "large"), "huge": ("huge", "giant", "huge")}
PLURAL = {"cross": "crosses"}


def plural(shape: str, n: int) -> str:
    """``circle`` → ``circles`` (``cross`` → ``crosses``) when ``n != 1``."""
    return shape if n == 1 else PLURAL.get(shape, shape + "s")


def region_name(cell: tuple[int, int]) -> str:
    """Human name of a 3×3 grid cell ``(row, col)``: ``upper left``, ``centre``, ``bottom right`` …"""
    r, c = cell
    if (r, c) == (1, 1):
        return "centre"
    rows = ("upper", "middle", "lower")
    if r == 1:
        return f"middle {COL_NAMES[c]}"
    if c == 1:
        return f"{'top' if r == 0 else 'bottom'} centre"
    return f"{rows[r]} {COL_NAMES[c]}"


def cell_of(x: float, y: float) -> tuple[int, int]:
    """The 3×3 grid cell ``(row, col)`` of a normalised point."""
    return min(2, max(0, int(y * 3))), min(2, max(0, int(x * 3)))


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class EvalPrompt:
    """An evaluation prompt with the scene it describes (for sampling + :func:`verify`)."""

    prompt: str
    scene: dict[str, Any]
    key: str
    short: str = ""


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Spatial relation of object ``a`` to object ``b`` from their grid cells (always decidable)."""
    (ra, ca), (rb, cb) = a["cell"], b["cell"]
    if abs(ca - cb) >= abs(ra - rb):
        return "left of" if ca < cb else "right of"
    return "above" if ra < rb else "below"


def shape_polygon(shape: str, x0: float, y0: float, s: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``shape`` filling the square box ``(x0, y0, x0+s, y0+s)``.

    ``None`` for the circle (drawn as an ellipse). Every shape spans its whole box, so the
    bounding box of a rendered object is its size.
    """
    if shape == "square":
        pts = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        pts = [(0.5, 0), (1, 1), (0, 1)]
    elif shape == "diamond":
        pts = [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    elif shape == "cross":
        a, b = 0.32, 0.68
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    elif shape == "star":
        pts = _unit_star()
    elif shape == "circle":
        return None
    else:
        raise LensforgeError(f"unknown shape '{shape}'; shapes are: {', '.join(SHAPES)}")
    return [(x0 + px * s, y0 + py * s) for px, py in pts]


@lru_cache(maxsize=1)
def _unit_star() -> list[tuple[float, float]]:
    raw = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.45
        ang = -math.pi / 2 + k * math.pi / 5
        raw.append((r * math.cos(ang), r * math.sin(ang)))
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    x_min, x_max, y_min, y_max = min(xs), max(xs), min(ys), max(ys)
    return [((px - x_min) / (x_max - x_min), (py - y_min) / (y_max - y_min)) for px, py in raw]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    """Draw ``shape`` filling ``box = (x0, y0, x1, y1)`` (pixels, inclusive-exclusive)."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        return
    s_x, s_y = x1 - x0 - 1, y1 - y0 - 1
    pts = shape_polygon(shape, 0.0, 0.0, 1.0)
    assert pts is not None
    draw.polygon([(x0 + px * s_x, y0 + py * s_y) for px, py in pts], fill=fill)


def object_box(obj: dict[str, Any], H: int, W: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` of an object at image size ``(H, W)``."""
    side = max(3, int(round(SIZES[obj["size"]] * min(H, W))))
    cx, cy = obj["x"] * W, obj["y"] * H
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x0 = min(max(0, x0), W - side)
    y0 = min(max(0, y0), H - side)
    return x0, y0, x0 + side, y0 + side


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def glyph_box(text: dict[str, Any], H: int, W: int) -> tuple[int, int, int, int]:
    """Pixel box of the glyph word: centred on its normalised centre, height ``text['h']·min(H, W)``."""
    m = min(H, W)
    h = max(6, int(round(text["h"] * m)))
    w = max(6, int(round(h * 0.75 * len(text["word"]))))
    x0 = min(max(0, int(round(text["x"] * W - w / 2))), W - w)
    y0 = min(max(0, int(round(text["y"] * H - h / 2))), H - h)
    return x0, y0, x0 + w, y0 + h


@lru_cache(maxsize=256)
def glyph_mask(word: str, h: int, w: int) -> np.ndarray:
    """Binary ``[h, w]`` mask of ``word`` rendered to fill a ``h×w`` box (bool)."""
    font = _font(48)
    bbox = font.getbbox(word)
    tw, th = bbox[2] - bbox[0], bbox[3] - bbox[1]
    canvas = Image.new("L", (tw + 4, th + 4), 0)
    ImageDraw.Draw(canvas).text((2 - bbox[0], 2 - bbox[1]), word, fill=255, font=font)
    return np.asarray(canvas.resize((w, h), Image.BILINEAR)) > 110


def render_scene(scene: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """Render a scene graph at ``size = (H, W)`` as ``uint8 [H, W, 3]``."""
    H, W = int(size[0]), int(size[1])
    if H < 8 or W < 8:
        raise LensforgeError(f"cannot render a scene at {H}x{W}: both sides must be >= 8 pixels")
    img = _background(scene["background"], H, W, scene.get("seed", 0))
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for obj in scene["objects"]:
        draw_shape(draw, obj["shape"], object_box(obj, H, W), PALETTE[obj["color"]])
    text = scene.get("text")
    if text:
        x0, y0, x1, y1 = glyph_box(text, H, W)
        mask = glyph_mask(text["word"], y1 - y0, x1 - x0)
        out = np.asarray(pil).copy()
        ink = 255 if text["ink"] == "white" else 0
        out[y0:y1, x0:x1][mask] = ink
        return out
    return np.asarray(pil)


def texture_period(H: int, W: int) -> float:
    """Period in pixels of the stripes / checks textures at image size ``(H, W)``."""
    return max(4.0, min(H, W) / 8)


def _background(bg: dict[str, Any], H: int, W: int, seed: int) -> np.ndarray:
    c1 = np.asarray(BACKGROUND_COLORS[bg["colors"][0]], dtype=np.float32)
    kind = bg["kind"]
    if kind == "flat":
        return np.broadcast_to(c1.astype(np.uint8), (H, W, 3)).copy()
    if kind == "gradient":
        c2 = np.asarray(BACKGROUND_COLORS[bg["colors"][1]], dtype=np.float32)
        ys = np.linspace(0, 1, H, dtype=np.float32)[:, None]
        xs = np.linspace(0, 1, W, dtype=np.float32)[None, :]
        t = {"vertical": ys + 0 * xs, "horizontal": xs + 0 * ys, "diagonal": (xs + ys) / 2}[bg["direction"]]
        return (c1 + (c2 - c1) * t[..., None]).astype(np.uint8)
    # texture: brightness modulation of one low-chroma colour (same offset on all channels)
    pattern = bg["pattern"]
    period = texture_period(H, W)
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    if pattern == "stripes":
        mod = 14 * np.sin(2 * np.pi * (xs + ys) / period) + 0 * xs
    elif pattern == "checks":
        mod = 12 * (((xs // period) + (ys // period)) % 2 * 2 - 1)
    else:
        rng = np.random.default_rng(seed)
        mod = rng.integers(-12, 13, size=(H, W)).astype(np.float32)
    return np.clip(c1[None, None, :] + mod[..., None], 0, 255).astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` → float ``[3, H, W]`` in ``[-1, 1]``."""
    import torch  # imported on use: validating a recipe that names this source needs no torch

    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    chw *= 1.0 / 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


# ---------------------------------------------------------------------------------------------
# captions


def _object_names(objects: list[dict[str, Any]]) -> list[str]:
    """Unique references: ``red circle`` or ``first red circle`` when the type repeats."""
    totals: dict[tuple[str, str], int] = {}
    for o in objects:
        totals[(o["color"], o["shape"])] = totals.get((o["color"], o["shape"]), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    ordinals = ("first", "second", "third", "fourth", "fifth")
    names = []
    for o in objects:
        t = (o["color"], o["shape"])
        seen[t] = seen.get(t, 0) + 1
        base = f"{o['color']} {o['shape']}"
        names.append(f"{ordinals[seen[t] - 1]} {base}" if totals[t] > 1 else base)
    return names


def group_counts(scene: dict[str, Any]) -> dict[str, int]:
    """``{"red circle": 2, …}``: how many objects of each colour+shape type the scene holds."""
    out: dict[str, int] = {}
    for o in scene["objects"]:
        k = f"{o['color']} {o['shape']}"
        out[k] = out.get(k, 0) + 1
    return out


def _summary(scene: dict[str, Any]) -> str:
    parts = []
    for k, n in group_counts(scene).items():
        color, shape = k.split(" ")
        parts.append(f"{NUMBER_WORDS[n] if n > 1 else 'one'} {color} {plural(shape, n)}")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _bg_phrase(bg: dict[str, Any]) -> str:
    if bg["kind"] == "flat":
        return f"plain {bg['colors'][0]} background"
    if bg["kind"] == "gradient":
        return f"{bg['direction']} {bg['colors'][0]} to {bg['colors'][1]} gradient background"
    return f"{bg['colors'][0]} background with a {bg['pattern']} texture"


_INTRO = (
    "A simple picture showing {summary} on a {bg}.",
    "This image contains {n} {obj_word} in total: {summary}, set against a {bg}.",
    "The scene holds {summary}, arranged on a {bg}.",
    "In this illustration there {are} {n} {obj_word}, namely {summary}, over a {bg}.",
)
_OBJECT = (
    "The {name} is {size} and sits in the {region}.",
    "In the {region} there is the {name}, which is {size}.",
    "The {name}, {size} in size, is placed in the {region}.",
    "The {name} is {size} and occupies the {region} of the image.",
    "Look to the {region} to find the {name}; it is {size}.",
)
#: compact phrasing (used when the free choice overshoots the word budget): object + its relation
_OBJECT_REL = (
    "The {name} is {size}, in the {region}, {rel} the {b}.",
    "The {size_adj} {name} sits in the {region}, {rel} the {b}.",
)
_INTRO_COMPACT = (
    "There {are} {n} {obj_word} on a {bg}{groups}.",
)
_RELATION = (
    "The {a} is {rel} the {b}.",
    "The {a} appears {rel} the {b}.",
    "Relative to the {b}, the {a} is {rel} it.",
    "The {b} is {inv} the {a}.",
)
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_REL_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_BACKGROUND = {
    "flat": ("The background is a flat, even {c1} colour.", "Behind everything is a uniform {c1} backdrop."),
    "gradient": ("The background is a smooth {dir} gradient from {c1} to {c2}.",
                 "Behind the shapes, a {dir} gradient fades from {c1} into {c2}."),
    "texture": ("The {c1} background carries a subtle {pattern} texture.",
                "Behind the shapes lies a {c1} backdrop with a faint {pattern} pattern."),
}
_TEXT = (
    'The word "{word}" is written in {ink} letters in the {region}.',
    'In the {region}, {ink} capital letters spell "{word}".',
)
_FILLERS = (
    "Every shape is drawn with a solid colour, crisp edges and no outline.",
    "No other objects appear anywhere in the scene.",
    "The composition is simple and uncluttered, much like a flat vector illustration.",
    "The lighting is perfectly even, with no shadows, highlights or reflections.",
    "The overall style resembles a minimalist geometric poster.",
    "Each object is fully visible and none of the shapes overlap one another.",
    "The view is straight on, as if looking directly at a flat sheet of paper.",
    "The object colours are bright and saturated against the muted background.",
    "The image has a clean, diagrammatic look with no depth or perspective.",
    "There is plenty of empty space between the shapes.",
    "Nothing is blurred; all outlines are sharp and well defined.",
    "The picture feels orderly and calm.",
)


def _words(s: str) -> int:
    return len(s.split())


def _terse_sentences(scene: dict[str, Any], tail: list[tuple[str, ...]]) -> list[str]:
    """The shortest dense form: one sentence listing every object with size, colour, shape and
    place, then the background (relations are left to the places), plus the glyph sentence.

    ``A huge blue square in the centre on a plain cream background.`` (12 words): what a tight
    word budget (tiny CPU recipes, where text tokens are most of a step's compute) falls back to.
    """
    parts = [f"a {SIZE_WORDS[o['size']][0]} {o['color']} {o['shape']} in the {region_name(tuple(o['cell']))}"
             for o in scene["objects"]]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    sep = " " if len(parts) == 1 else ", "
    first = f"{listing}{sep}on a {_bg_phrase(scene['background'])}."
    return [first[0].upper() + first[1:]] + [v[0] for v in tail]


def dense_caption(scene: dict[str, Any], rng: np.random.Generator, min_words: int = 80, max_words: int = 120) -> str:
    """80–120 word caption naming every object attribute, count, relation and the background.

    Mandatory sentences (intro with per-type counts, one per object, one per relation, the
    background, the glyph word) get a randomly chosen phrasing; when that overshoots
    ``max_words`` a compact phrasing is used (each object sentence also carries its relation),
    and when even that overshoots, the terse one-sentence listing of :func:`_terse_sentences`.
    Filler sentences (style, lighting, layout) then pad the caption to at least ``min_words``.
    """
    objs = scene["objects"]
    names = _object_names(objs)
    n = len(objs)
    bg = scene["background"]
    fmt_intro = dict(summary=_summary(scene), bg=_bg_phrase(bg), n=NUMBER_WORDS[n],
                     obj_word="object" if n == 1 else "objects", are="is" if n == 1 else "are")
    regions = [region_name(tuple(o["cell"])) for o in objs]
    bgf = dict(c1=bg["colors"][0], c2=bg["colors"][-1], dir=bg.get("direction", ""), pattern=bg.get("pattern", ""))
    text = scene.get("text")
    tail_slots: list[tuple[str, ...]] = [tuple(t.format(**bgf) for t in _BACKGROUND[bg["kind"]])]
    if text:
        region = region_name(cell_of(text["x"], text["y"]))
        tail_slots.append(tuple(t.format(word=text["word"], ink=text["ink"], region=region) for t in _TEXT))

    def pick(slots: list[tuple[str, ...]]) -> list[str]:
        return [v[int(rng.integers(len(v)))] for v in slots]

    slots: list[tuple[str, ...]] = [tuple(t.format(**fmt_intro) for t in _INTRO)]
    for o, name, region in zip(objs, names, regions):
        slots.append(tuple(t.format(name=name, size=SIZE_WORDS[o["size"]][k % 3], region=region)
                           for k, t in enumerate(_OBJECT)))
    for r in scene["relations"]:
        a, b = names[r["a"]], names[r["b"]]
        slots.append(tuple(t.format(a=a, b=b, rel=_REL_WORDS[r["relation"]], inv=_REL_WORDS[_INVERSE[r["relation"]]])
                           for t in _RELATION))
    slots += tail_slots
    chosen = pick(slots)
    if sum(map(_words, chosen)) > max_words:
        groups = [f"{NUMBER_WORDS[c]} {k.split(' ')[0]} {plural(k.split(' ')[1], c)}"
                  for k, c in group_counts(scene).items() if c > 1]
        fmt_c = dict(fmt_intro, bg=_bg_phrase(bg),
                     groups=(", including " + " and ".join(groups)) if groups else "")
        rel_of = {r["a"]: r for r in scene["relations"]}
        slots = [tuple(t.format(**fmt_c) for t in _INTRO_COMPACT)]
        for i, (o, name, region) in enumerate(zip(objs, names, regions)):
            size = SIZE_WORDS[o["size"]][0]
            if i in rel_of:
                b = names[rel_of[i]["b"]]
                rel = rel_of[i]["relation"]
                variants = [_OBJECT_REL[0]] + ([_OBJECT_REL[1]] if name == f"{o['color']} {o['shape']}" else [])
                slots.append(tuple(t.format(name=name, size=size, size_adj=size, region=region, rel=rel, b=b)
                                   for t in variants))
            else:
                slots.append((_OBJECT[0].format(name=name, size=size, region=region),))
        slots += tail_slots[1:]  # the compact intro already names the background
        chosen = pick(slots)
        if sum(map(_words, chosen)) > max_words:
            chosen = [min(v, key=_words) for v in slots]
            terse = _terse_sentences(scene, tail_slots[1:])
            if sum(map(_words, chosen)) > max_words and sum(map(_words, terse)) < sum(map(_words, chosen)):
                chosen = terse
    # object and relation sentences may be shuffled among themselves (varied order), intro first
    middle = chosen[1:]
    order = rng.permutation(len(middle))
    sentences = [chosen[0]] + [middle[i] for i in order]
    total = sum(map(_words, sentences))
    fillers = [_FILLERS[i] for i in rng.permutation(len(_FILLERS))]
    if text:
        fillers = [f for f in fillers if "No other objects" not in f]
    for f in fillers:
        if total >= min_words:
            break
        if total + _words(f) <= max_words:
            sentences.insert(int(rng.integers(1, len(sentences) + 1)), f)
            total += _words(f)
    return " ".join(sentences)


def short_caption(scene: dict[str, Any], rng: np.random.Generator) -> str:
    """A vague, alt-text-like caption that often leaves things out (or is plain wrong about counts)."""
    objs = scene["objects"]
    o = objs[int(rng.integers(len(objs)))]
    bg = scene["background"]["colors"][0]
    options = (
        f"{o['color']} {o['shape']}",
        f"a {o['shape']} and some other shapes",
        f"shapes on a {bg} background",
        "geometric shapes",
        f"abstract picture with something {o['color']}",
        f"{len(objs)} shapes" if len(objs) > 1 else f"a {o['shape']}",
        "simple illustration",
        f"{o['color']} thing",
        f"a {o['size']} {o['shape']}",
    )
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------------------------
# the source


@register("data", "synthetic")
class SyntheticWorld(DataSource):
    """Deterministic synthetic scenes with dense/short captions, scene graphs and a verifier."""

    @dataclass(kw_only=True)
    class Config:
        num_samples: int = 100_000
        """Samples in one epoch (scenes are a pure function of (seed, index))."""
        seed: int = 0
        """World seed: the same seed gives the same scenes."""
        min_objects: int = 1
        """Fewest objects in a scene."""
        max_objects: int = 5
        """Most objects in a scene (at most 5, the scene uses distinct cells of a 3×3 grid)."""
        shapes: list[str] = field(default_factory=lambda: list(SHAPES))
        """Shape vocabulary (subset of circle, square, triangle, diamond, star, cross)."""
        colors: list[str] = field(default_factory=lambda: list(PALETTE))
        """Object colour vocabulary (subset of red, orange, yellow, green, cyan, blue, purple, pink)."""
        sizes: list[str] = field(default_factory=lambda: list(DEFAULT_SIZES))
        """Object size classes (subset of small, medium, large, huge; huge = half the image side)."""
        backgrounds: list[str] = field(default_factory=lambda: list(BACKGROUND_KINDS))
        """Background kinds (subset of flat, gradient, texture)."""
        background_colors: list[str] = field(default_factory=lambda: list(BACKGROUND_COLORS))
        """Background colour vocabulary (low-chroma colours)."""
        repeat_prob: float = 0.3
        """Probability that an object repeats an earlier object's colour+shape (makes counts matter)."""
        glyph_prob: float = 0.0
        """Probability that a scene also shows a short capital-letter word (glyph text)."""
        dense_words: tuple[int, int] = (80, 120)
        """Word-count range of the dense caption (min ≥ 8). A range too small for the usual sentences
        gets a compact phrasing, then a one-sentence listing of the objects and the background."""

    def __init__(self, config: Config):
        super().__init__(config)
        problems = self.check_config(config)
        if problems:
            raise LensforgeError("synthetic data: " + "; ".join(f"{k}: {m}" for k, m in problems))

    @classmethod
    def tiny_config(cls) -> "SyntheticWorld.Config":
        return cls.Config(num_samples=64, max_objects=2, shapes=["circle", "square", "triangle"],
                          colors=["red", "green", "blue", "yellow"], backgrounds=["flat"])

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for key, vocab in (("shapes", SHAPES), ("colors", PALETTE), ("sizes", SIZES),
                           ("backgrounds", BACKGROUND_KINDS), ("background_colors", BACKGROUND_COLORS)):
            values = getattr(config, key)
            if not values:
                out.append((key, "must not be empty"))
            bad = [v for v in values if v not in vocab]
            if bad:
                out.append((key, f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(vocab)}"))
        if not 1 <= config.min_objects <= config.max_objects <= 5:
            out.append(("max_objects", f"need 1 <= min_objects <= max_objects <= 5, got {config.min_objects}..{config.max_objects}"))
        if config.num_samples < 1:
            out.append(("num_samples", "must be >= 1"))
        if not 0 <= config.repeat_prob <= 1 or not 0 <= config.glyph_prob <= 1:
            out.append(("repeat_prob", "probabilities must be in [0, 1]"))
        lo, hi = config.dense_words
        if not 8 <= lo <= hi:
            out.append(("dense_words", f"need 8 <= min <= max, got {lo}..{hi}"))
        return out

    def __len__(self) -> int:
        return self.config.num_samples

    # --- scenes -------------------------------------------------------------------------
    def scene(self, index: int, *, namespace: int = 0) -> dict[str, Any]:
        """The scene graph of sample ``index`` (pure function of seed, namespace and index)."""
        rng = np.random.default_rng([self.config.seed, namespace, int(index)])
        return make_scene(self.config, rng, seed=int(rng.integers(2**31)))

    def captions(self, index: int, *, namespace: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
        """``(scene, {"dense": …, "short": …})`` of sample ``index`` without rendering."""
        scene = self.scene(index, namespace=namespace)
        rng = np.random.default_rng([self.config.seed, namespace, int(index), 7])
        lo, hi = self.config.dense_words
        return scene, {"dense": dense_caption(scene, rng, lo, hi), "short": short_caption(scene, rng)}

    def get(self, index: int, size: tuple[int, int] | None = None) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic index {index} out of range [0, {len(self)})")
        H, W = size or (256, 256)
        scene, caps = self.captions(index)
        img = render_scene(scene, (H, W))
        from lensforge.interfaces.batch import Sample

        return Sample(image=to_tensor(img), captions=caps, key=f"synthetic/{self.config.seed}/{index:08d}",
                      meta={"source": "synthetic", "index": int(index), "scene": scene, "size": (H, W)})

    def raw(self, index: int, size: tuple[int, int] | None = None) -> RawRecord:
        """Sample ``index`` as a PNG (default 256×256) with its captions (for ``build-shards``)."""
        import io

        from lensforge.data.sources.common import RawRecord

        scene, caps = self.captions(index)
        buf = io.BytesIO()
        Image.fromarray(render_scene(scene, size or (256, 256))).save(buf, "PNG")
        return RawRecord(key=f"{index:08d}", image=buf.getvalue(), ext="png", captions=caps, meta={"scene": scene})

    def render(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """``uint8 [H, W, 3]`` render of sample ``index`` (what :meth:`get` returns, as numpy)."""
        return render_scene(self.scene(index), size)

    def eval_prompts(self, n: int, seed: int = 0, caption: str = "dense") -> list[EvalPrompt]:
        """``n`` held-out prompts (``caption`` = ``dense`` or ``short``) with their scene specs.

        Drawn from a separate namespace, so they never coincide with training scenes.
        """
        if caption not in ("dense", "short"):
            raise LensforgeError(f"eval_prompts caption must be 'dense' or 'short', got '{caption}'")
        out = []
        for i in range(n):
            scene, caps = self.captions(i, namespace=1_000_003 + int(seed))
            out.append(EvalPrompt(prompt=caps[caption], scene=scene, key=f"eval/{seed}/{i:05d}", short=caps["short"]))
        return out


def eval_prompts(n: int, seed: int = 0, config: SyntheticWorld.Config | None = None,
                 caption: str = "dense") -> list[EvalPrompt]:
    """Module-level shortcut for :meth:`SyntheticWorld.eval_prompts` (default world unless ``config``)."""
    return SyntheticWorld(config or SyntheticWorld.Config()).eval_prompts(n, seed, caption)


def make_scene(cfg: SyntheticWorld.Config, rng: np.random.Generator, seed: int = 0) -> dict[str, Any]:
    """Draw a scene graph from the vocabularies in ``cfg``."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    has_text = bool(cfg.glyph_prob > 0 and rng.random() < cfg.glyph_prob)
    cells = [(r, c) for r in range(3) for c in range(3)]
    picked = rng.permutation(len(cells))
    free = [cells[int(i)] for i in picked[int(has_text):]]  # cells in the order objects try them
    objects: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float]] = []  # (x, y, half-size) in the normalised square
    text = None
    if has_text:
        cell = cells[int(picked[0])]
        word = "".join(GLYPH_LETTERS[int(i)] for i in rng.integers(len(GLYPH_LETTERS), size=int(rng.integers(2, 4))))
        text = {"word": word, "x": round((cell[1] + 0.5) / 3, 4), "y": round((cell[0] + 0.5) / 3, 4), "h": 0.12}
        placed.append((text["x"], text["y"], 0.09 * len(word) / 2 + 0.01))
    for k in range(n):
        if objects and rng.random() < cfg.repeat_prob:
            src = objects[int(rng.integers(len(objects)))]
            color, shape = src["color"], src["shape"]
        else:
            color = cfg.colors[int(rng.integers(len(cfg.colors)))]
            shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        size = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
        spot = None
        while spot is None and free:
            cell = free.pop(0)
            spot = _place(rng, cell, size, cfg.sizes, placed)
        if spot is None:  # no free cell can hold another object without overlap (very rare)
            log.debug("synthetic scene: placed %d of %d objects (no room left)", k, n)
            break
        x, y, size = spot
        placed.append((x, y, SIZES[size] / 2))
        objects.append({"id": k, "shape": shape, "color": color, "size": size, "x": x, "y": y, "cell": list(cell)})
    relations = [{"a": i, "b": i + 1, "relation": _relation(objects[i], objects[i + 1])}
                 for i in range(len(objects) - 1)]  # placement may have run out of room
    kind = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    bg_cols = list(cfg.background_colors)
    c1 = bg_cols[int(rng.integers(len(bg_cols)))]
    bg: dict[str, Any] = {"kind": kind, "colors": [c1]}
    if kind == "gradient":
        others = [c for c in bg_cols if c != c1] or [c1]
        bg["colors"].append(others[int(rng.integers(len(others)))])
        bg["direction"] = GRADIENT_DIRECTIONS[int(rng.integers(len(GRADIENT_DIRECTIONS)))]
    elif kind == "texture":
        bg["pattern"] = TEXTURES[int(rng.integers(len(TEXTURES)))]
    scene: dict[str, Any] = {"seed": seed, "background": bg, "objects": objects, "relations": relations, "text": None}
    if text is not None:
        brightness = np.mean([np.mean(BACKGROUND_COLORS[c]) for c in bg["colors"]])
        text["ink"] = "black" if brightness > 110 else "white"
        scene["text"] = text
    return scene


def _place(rng: np.random.Generator, cell: tuple[int, int], size: str, sizes: list[str],
           placed: list[tuple[float, float, float]]) -> tuple[float, float, str] | None:
    """A centre inside ``cell`` (away from cell borders) where the object overlaps nothing.

    Tries the drawn size class, then smaller ones, by rejection sampling and then on a grid of
    candidates; ``None`` when the cell has no room (the caller tries the next free cell).
    """
    r, c = cell
    order = [size] + [s for s in sorted(sizes, key=SIZES.get, reverse=True) if SIZES[s] < SIZES[size]]
    for s in order:
        half = SIZES[s] / 2
        for _ in range(12):
            lo_x, hi_x = max(c / 3 + 0.04, half + 0.01), min((c + 1) / 3 - 0.04, 1 - half - 0.01)
            lo_y, hi_y = max(r / 3 + 0.04, half + 0.01), min((r + 1) / 3 - 0.04, 1 - half - 0.01)
            if lo_x > hi_x or lo_y > hi_y:
                break
            x, y = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            if all(max(abs(x - px), abs(y - py)) >= half + ph + 0.04 for px, py, ph in placed):
                return round(x, 4), round(y, 4), s
    for s in order:  # deterministic grid of candidates, first one with clearance wins
        half = SIZES[s] / 2
        lo_x, hi_x = max(c / 3 + 0.04, half + 0.01), min((c + 1) / 3 - 0.04, 1 - half - 0.01)
        lo_y, hi_y = max(r / 3 + 0.04, half + 0.01), min((r + 1) / 3 - 0.04, 1 - half - 0.01)
        if lo_x > hi_x or lo_y > hi_y:
            continue
        for x in np.linspace(lo_x, hi_x, 5):
            for y in np.linspace(lo_y, hi_y, 5):
                if all(max(abs(x - px), abs(y - py)) >= half + ph + 0.04 for px, py, ph in placed):
                    return round(float(x), 4), round(float(y), 4), s
    return None
