"""Prompt sets drawn from the synthetic world: a taxonomy of fact kinds and a GenEval-style suite.

Every row is a prompt-set row (:mod:`lensforge.data.prompt_sets`) whose prompt is a natural sentence
stating some facts about a scene, with **one rubric item per stated fact**, each with a ``check``
(:mod:`lensforge.data.checks`), and the ``scene`` it was drawn from (render it with
:func:`~lensforge.data.sources.synthetic.render_scene` to get a clean image that satisfies every
item). Scenes use the world's vocabularies (``SyntheticWorld.Config``: shapes, colours, sizes,
backgrounds, background colours); each category decides how many objects it shows.

Taxonomy (:func:`taxonomy_rows`, ``lensforge data prompts synthetic:N OUT.jsonl``), GenEval-style
sentences for the simple categories:

==================  ==================================================================  =====================
category            prompt                                                              items
==================  ==================================================================  =====================
``single_object``   a photo of a triangle.                                              object
``color``           a photo of a blue circle.                                           object, color
``shape``           a photo of a red triangle.                                          object, shape
``size``            a photo of a large green square.                                    object, size
``count``           a photo of three yellow stars.                                      count
``position``        a photo of a pink cross in the upper left of the image.            object, position
``relation``        a photo of a red circle to the left of a blue square.               object ×2, relation
``background``      a photo of a cyan diamond on a vertical grey to slate gradient …    object, type, colours
``text``            a photo of an orange star and the word "KAT" in black capital …     object, text
``aspect_ratio``    a wide 2:1 photo of a red circle in the centre of the image.        format, object, position
``scene``           the world's own dense caption of a multi-object scene               every stated fact
==================  ==================================================================  =====================

(``color`` asks "is the circle blue?", ``shape`` asks "is the red object a triangle?"; ``count`` has
2–4 objects of one type; ``aspect_ratio`` rows carry ``height``/``width`` near ``resolution``² pixels,
multiples of 16; ``scene`` follows the world's ``min_objects``/``max_objects``/``glyph_prob`` and
``dense_words``, its items refer to the scene's objects by index, and its ``short`` caption is kept.)

GenEval-style suite (:func:`geneval_rows`): GenEval's six tags with its prompt templates —
``single_object`` ("a photo of a circle"), ``two_object`` ("a photo of a circle and a square"),
``counting`` ("a photo of three circles", exact count), ``colors`` ("a photo of a red circle"),
``position`` ("a photo of a circle left of a square"), ``color_attr`` ("a photo of a red circle and
a blue square"). :func:`geneval_correct` is GenEval's strict per-image rule (correct only when
every check passes); :func:`geneval_summary` the per-tag means and their mean (GenEval's overall).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import fields
from typing import Any, Sequence

import numpy as np

from lensforge.data.checks import score_row
from lensforge.data.prompts_cli import GENEVAL_TAGS, TAXONOMY
from lensforge.data.sources.synthetic import (
    BACKGROUND_COLORS, DEFAULT_SIZES, GLYPH_LETTERS, GRADIENT_DIRECTIONS, NUMBER_WORDS, SIZE_WORDS, SIZES,
    TEXTURES, SyntheticWorld, _INVERSE, cell_of, _OBJECT_REL, _REL_WORDS, _RELATION, _bg_phrase, _object_names,
    _place, _relation, dense_caption, group_counts, make_scene, plural, region_name, short_caption,
)
from lensforge.errors import LensforgeError

ASPECT_RATIOS: tuple[str, ...] = ("1:2", "2:3", "1:1", "3:2", "2:1")
_RATIO_WORDS = {"1:2": "tall", "2:3": "tall", "1:1": "square", "3:2": "wide", "2:1": "wide"}
_TRIES = 50


# ---------------------------------------------------------------------------------------------
# world options


def world_config(options: dict[str, Any] | Sequence[str] | None = None) -> SyntheticWorld.Config:
    """A :class:`SyntheticWorld.Config` from ``{field: value}`` or ``["field=value", …]`` (YAML values).

    Raises :class:`LensforgeError` naming every unknown field or bad value.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        import yaml

        parsed: dict[str, Any] = {}
        for it in options:
            key, eq, value = str(it).partition("=")
            if not eq or not key:
                raise LensforgeError(f"--world expects key=value (a synthetic world option), got '{it}'")
            parsed[key.strip()] = yaml.safe_load(value) if value else value
        options = parsed
    from lensforge.recipe.plugin_config import validate_dataclass

    problems: list[Any] = []
    cfg = validate_dataclass(SyntheticWorld.Config, dict(options), "world", problems, origin=lambda k: None)
    if problems:
        raise LensforgeError("synthetic world options: " + "; ".join(f"{p.key}: {p.message}" for p in problems))
    bad = SyntheticWorld.check_config(cfg)
    if bad:
        raise LensforgeError("synthetic world options: " + "; ".join(f"world.{k}: {m}" for k, m in bad))
    return cfg


def world_fields() -> list[str]:
    """The option names ``--world`` accepts."""
    return [f.name for f in fields(SyntheticWorld.Config)]


# ---------------------------------------------------------------------------------------------
# scene building


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _desc(o: dict[str, Any]) -> dict[str, Any]:
    return {"color": o["color"], "shape": o["shape"]}


def _background(cfg: SyntheticWorld.Config, rng: np.random.Generator, kind: str | None = None) -> dict[str, Any]:
    kind = kind or cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    cols = list(cfg.background_colors)
    c1 = cols[int(rng.integers(len(cols)))]
    bg: dict[str, Any] = {"kind": kind, "colors": [c1]}
    if kind == "gradient":
        others = [c for c in cols if c != c1] or [c1]
        bg["colors"].append(others[int(rng.integers(len(others)))])
        bg["direction"] = GRADIENT_DIRECTIONS[int(rng.integers(len(GRADIENT_DIRECTIONS)))]
    elif kind == "texture":
        bg["pattern"] = TEXTURES[int(rng.integers(len(TEXTURES)))]
    return bg


def _ink(bg: dict[str, Any]) -> str:
    brightness = np.mean([np.mean(BACKGROUND_COLORS[c]) for c in bg["colors"]])
    return "black" if brightness > 110 else "white"


def _build(cfg: SyntheticWorld.Config, rng: np.random.Generator, specs: list[dict[str, Any]], *,
           keep_size: bool = False, text: bool = False, bg: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A scene with the objects of ``specs`` (``color``, ``shape``, ``size``, optional ``cell``).

    Objects without a cell take random free cells; ``keep_size`` forbids falling back to a smaller
    size class when an object does not fit (the prompt states its size). None when the layout does
    not fit (the caller draws again).
    """
    cells = [(r, c) for r in range(3) for c in range(3)]
    fixed = {tuple(s["cell"]) for s in specs if s.get("cell") is not None}
    free = [cells[int(i)] for i in rng.permutation(9) if cells[int(i)] not in fixed]
    placed: list[tuple[float, float, float]] = []
    glyph = None
    if text:
        cell = free.pop(0)
        word = "".join(GLYPH_LETTERS[int(i)] for i in rng.integers(len(GLYPH_LETTERS), size=int(rng.integers(2, 4))))
        glyph = {"word": word, "x": round((cell[1] + 0.5) / 3, 4), "y": round((cell[0] + 0.5) / 3, 4), "h": 0.12}
        placed.append((glyph["x"], glyph["y"], 0.09 * len(word) / 2 + 0.01))
    fallback = sorted(set(cfg.sizes) | set(DEFAULT_SIZES), key=SIZES.__getitem__)
    objects: list[dict[str, Any]] = []
    for k, sp in enumerate(specs):
        sizes = [sp["size"]] if keep_size else fallback
        tries = [tuple(sp["cell"])] if sp.get("cell") is not None else list(free)
        spot = cell = None
        for cell in tries:
            spot = _place(rng, cell, sp["size"], sizes, placed)
            if spot is not None:
                break
        if spot is None:
            return None
        if cell in free:
            free.remove(cell)
        x, y, size = spot
        placed.append((x, y, SIZES[size] / 2))
        objects.append({"id": k, "shape": sp["shape"], "color": sp["color"], "size": size, "x": x, "y": y,
                        "cell": list(cell)})
    background = bg or _background(cfg, rng)
    scene: dict[str, Any] = {
        "seed": int(rng.integers(2**31)), "background": background, "objects": objects,
        "relations": [{"a": i, "b": i + 1, "relation": _relation(objects[i], objects[i + 1])}
                      for i in range(len(objects) - 1)],
        "text": None,
    }
    if glyph is not None:
        glyph["ink"] = _ink(background)
        scene["text"] = glyph
    return scene


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _obj(cfg: SyntheticWorld.Config, rng: np.random.Generator, **fixed: Any) -> dict[str, Any]:
    o = {"color": _pick(rng, cfg.colors), "shape": _pick(rng, cfg.shapes), "size": _pick(rng, cfg.sizes)}
    o.update(fixed)
    return o


def _distinct(rng: np.random.Generator, vocab: Sequence[str], k: int, what: str) -> list[str]:
    if len(vocab) < k:
        raise LensforgeError(f"needs {k} different {what}, the world has {len(vocab)}: "
                             f"widen it with --world or leave the category out")
    return [vocab[int(i)] for i in rng.permutation(len(vocab))[:k]]


def size_for_ratio(ratio: str, resolution: int, multiple: int = 16) -> tuple[int, int]:
    """``(H, W)``, multiples of ``multiple``, as close as possible to ``ratio`` = W:H, area near ``resolution``²."""
    w, h = (int(v) for v in ratio.split(":"))
    target = w / h
    best: tuple[float, float, int, int] | None = None
    lo, hi = 0.5 * resolution ** 2, 2.0 * resolution ** 2
    for H in range(multiple, 4 * resolution + multiple, multiple):
        for W in range(multiple, 4 * resolution + multiple, multiple):
            if not lo <= H * W <= hi:
                continue
            key = (round(abs(math.log((W / H) / target)), 6), abs(math.log(H * W / resolution ** 2)), H, W)
            if best is None or key < best:
                best = key
    if best is None:
        raise LensforgeError(f"no size of multiples of {multiple} near {resolution}² pixels")
    return best[2], best[3]


# ---------------------------------------------------------------------------------------------
# taxonomy categories: each returns (prompt, [(question, check)], scene, extra row fields) or None


def _item_object(o: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"Is there {_a(o['color'] + ' ' + o['shape'])}?", {"kind": "object", "object": _desc(o)}


def _cat_single_object(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    return scene and (f"a photo of {_a(o['shape'])}.",
                      [(f"Is there {_a(o['shape'])}?", {"kind": "object", "object": {"shape": o["shape"]}})], scene, {})


def _cat_color(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    return scene and (f"a photo of {_a(o['color'] + ' ' + o['shape'])}.", [
        (f"Is there {_a(o['shape'])}?", {"kind": "object", "object": {"shape": o["shape"]}}),
        (f"Is the {o['shape']} {o['color']}?", {"kind": "color", "object": {"shape": o["shape"]}, "color": o["color"]}),
    ], scene, {})


def _cat_shape(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    return scene and (f"a photo of {_a(o['color'] + ' ' + o['shape'])}.", [
        (f"Is there a {o['color']} object?", {"kind": "object", "object": {"color": o["color"]}}),
        (f"Is the {o['color']} object {_a(o['shape'])}?",
         {"kind": "shape", "object": {"color": o["color"]}, "shape": o["shape"]}),
    ], scene, {})


def _cat_size(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o], keep_size=True)
    word = SIZE_WORDS[o["size"]][0]
    return scene and (f"a photo of {_a(word + ' ' + o['color'] + ' ' + o['shape'])}.", [
        _item_object(o),
        (f"Is the {o['color']} {o['shape']} {word}?", {"kind": "size", "object": _desc(o), "size": o["size"]}),
    ], scene, {})


def _cat_count(cfg, rng):
    n = int(rng.integers(2, 5))
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [dict(o) for _ in range(n)])
    name = f"{o['color']} {plural(o['shape'], n)}"
    return scene and (f"a photo of {NUMBER_WORDS[n]} {name}.", [
        (f"Are there exactly {NUMBER_WORDS[n]} {name}?", {"kind": "count", "object": _desc(o), "count": n}),
    ], scene, {})


def _cat_position(cfg, rng):
    cell = (int(rng.integers(3)), int(rng.integers(3)))
    o = _obj(cfg, rng, cell=cell)
    scene = _build(cfg, rng, [o])
    region = region_name(cell)
    return scene and (f"a photo of {_a(o['color'] + ' ' + o['shape'])} in the {region} of the image.", [
        _item_object(o),
        (f"Is the {o['color']} {o['shape']} in the {region} of the image?",
         {"kind": "position", "object": _desc(o), "cell": list(cell), "region": region}),
    ], scene, {})


def _two_types(cfg, rng) -> tuple[dict[str, Any], dict[str, Any]]:
    a = _obj(cfg, rng)
    for _ in range(_TRIES):
        b = _obj(cfg, rng)
        if (b["color"], b["shape"]) != (a["color"], a["shape"]):
            return a, b
    raise LensforgeError("needs two different object types (colour + shape), the world has one")


def _relation_cells(rng: np.random.Generator, rel: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Cells of a and b in one row (left/right) or one column (above/below), so the relation is plain."""
    lo, hi = sorted(int(v) for v in rng.permutation(3)[:2])
    line = int(rng.integers(3))
    first, second = (lo, hi) if rel in ("left of", "above") else (hi, lo)
    if rel in ("left of", "right of"):
        return (line, first), (line, second)
    return (first, line), (second, line)


def _cat_relation(cfg, rng):
    a, b = _two_types(cfg, rng)
    rel = _pick(rng, ("left of", "right of", "above", "below"))
    ca, cb = _relation_cells(rng, rel)
    scene = _build(cfg, rng, [dict(a, cell=ca), dict(b, cell=cb)])
    na, nb = f"{a['color']} {a['shape']}", f"{b['color']} {b['shape']}"
    return scene and (f"a photo of {_a(na)} {_REL_WORDS[rel]} {_a(nb)}.", [
        _item_object(a), _item_object(b),
        (f"Is the {na} {_REL_WORDS[rel]} the {nb}?", {"kind": "relation", "a": _desc(a), "b": _desc(b), "relation": rel}),
    ], scene, {})


def _background_items(bg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    kind = bg["kind"]
    if kind == "flat":
        first = ("Is the background plain, one flat colour?", {"kind": "background", "type": "flat"})
        second = (f"Is the background {bg['colors'][0]}?", {"kind": "background", "colors": list(bg["colors"])})
    elif kind == "gradient":
        first = (f"Is the background a {bg['direction']} gradient?",
                 {"kind": "background", "type": "gradient", "direction": bg["direction"]})
        second = (f"Does the background go from {bg['colors'][0]} to {bg['colors'][1]}?",
                  {"kind": "background", "colors": list(bg["colors"])})
    else:
        first = (f"Does the background have a {bg['pattern']} texture?",
                 {"kind": "background", "type": "texture", "pattern": bg["pattern"]})
        second = (f"Is the background {bg['colors'][0]}?", {"kind": "background", "colors": list(bg["colors"])})
    return [first, second]


def _cat_background(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    if scene is None:
        return None
    bg = scene["background"]
    return (f"a photo of {_a(o['color'] + ' ' + o['shape'])} on {_a(_bg_phrase(bg))}.",
            [_item_object(o)] + _background_items(bg), scene, {})


def _text_item(t: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(question, region name, check)`` of a scene's glyph word."""
    region = region_name(cell_of(t["x"], t["y"]))
    return (f'Does the image show the word "{t["word"]}" in {t["ink"]} letters in the {region}?', region,
            {"kind": "text", "word": t["word"], "x": t["x"], "y": t["y"], "h": t["h"], "ink": t["ink"]})


def _cat_text(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o], text=True)
    if scene is None:
        return None
    t = scene["text"]
    q, region, check = _text_item(t)
    return (f'a photo of {_a(o["color"] + " " + o["shape"])} and the word "{t["word"]}" written in {t["ink"]} '
            f"capital letters in the {region}.", [_item_object(o), (q, check)], scene, {})


def _make_aspect(resolution: int):
    def _cat_aspect_ratio(cfg, rng):
        ratio = _pick(rng, ASPECT_RATIOS)
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        o = _obj(cfg, rng, cell=cell)
        scene = _build(cfg, rng, [o])
        region = region_name(cell)
        H, W = size_for_ratio(ratio, resolution)
        word = _RATIO_WORDS[ratio]
        return scene and (f"a {word} {ratio} photo of {_a(o['color'] + ' ' + o['shape'])} in the {region} of the image.", [
            (f"Is the image in a {word} {ratio} (width:height) format?", {"kind": "aspect_ratio", "ratio": ratio}),
            _item_object(o),
            (f"Is the {o['color']} {o['shape']} in the {region} of the image?",
             {"kind": "position", "object": _desc(o), "cell": list(cell), "region": region}),
        ], scene, {"height": H, "width": W})
    return _cat_aspect_ratio


def _stated_relations(caption: str, scene: dict[str, Any]) -> list[dict[str, Any]]:
    """The scene's relations that the dense caption states (the terse tier leaves them to the places)."""
    objs = scene["objects"]
    names = _object_names(objs)
    out = []
    for r in scene["relations"]:
        a, b, rel = names[r["a"]], names[r["b"]], r["relation"]
        o = objs[r["a"]]
        forms = [t.format(a=a, b=b, rel=_REL_WORDS[rel], inv=_REL_WORDS[_INVERSE[rel]]) for t in _RELATION]
        forms += [t.format(name=a, size=SIZE_WORDS[o["size"]][0], size_adj=SIZE_WORDS[o["size"]][0],
                           region=region_name(tuple(o["cell"])), rel=rel, b=b) for t in _OBJECT_REL]
        if any(f in caption for f in forms):
            out.append(r)
    return out


def _cat_scene(cfg, rng):
    scene = make_scene(cfg, rng, seed=int(rng.integers(2**31)))
    lo, hi = cfg.dense_words
    caption = dense_caption(scene, rng, lo, hi)
    short = short_caption(scene, rng)
    objs = scene["objects"]
    names = _object_names(objs)
    items: list[tuple[str, dict[str, Any]]] = []
    n = len(objs)
    if f" {NUMBER_WORDS[n]} object" in caption or "No other objects appear" in caption:
        items.append((f"Are there exactly {NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'} in total?",
                      {"kind": "count", "object": {}, "count": n}))
    for key, c in group_counts(scene).items():
        color, shape = key.split(" ")
        if c > 1:
            items.append((f"Are there exactly {NUMBER_WORDS[c]} {color} {plural(shape, c)}?",
                          {"kind": "count", "object": {"color": color, "shape": shape}, "count": c}))
        else:
            items.append((f"Is there {_a(key)}?", {"kind": "object", "object": {"color": color, "shape": shape}}))
    for i, (o, name) in enumerate(zip(objs, names)):
        word, region = SIZE_WORDS[o["size"]][0], region_name(tuple(o["cell"]))
        items.append((f"Is the {name} {word}?", {"kind": "size", "object": i, "size": o["size"]}))
        items.append((f"Is the {name} in the {region}?",
                      {"kind": "position", "object": i, "cell": list(o["cell"]), "region": region}))
    for r in _stated_relations(caption, scene):
        items.append((f"Is the {names[r['a']]} {_REL_WORDS[r['relation']]} the {names[r['b']]}?",
                      {"kind": "relation", "a": r["a"], "b": r["b"], "relation": r["relation"]}))
    items += _background_items(scene["background"])
    if scene.get("text"):
        q, _, check = _text_item(scene["text"])
        items.append((q, check))
    return caption, items, scene, {"short": short}


def _categories(resolution: int) -> dict[str, Any]:
    return {"single_object": _cat_single_object, "color": _cat_color, "shape": _cat_shape, "size": _cat_size,
            "count": _cat_count, "position": _cat_position, "relation": _cat_relation,
            "background": _cat_background, "text": _cat_text, "aspect_ratio": _make_aspect(resolution),
            "scene": _cat_scene}


def _row(rid: str, category: str, made: tuple[Any, ...], meta: dict[str, Any]) -> dict[str, Any]:
    prompt, items, scene, extra = made
    row: dict[str, Any] = {"id": rid, "prompt": prompt, "category": category,
                           "rubric": [{"id": f"q{k + 1}", "question": q, "weight": 1.0, "check": c}
                                      for k, (q, c) in enumerate(items)],
                           "scene": scene}
    row.update(extra)
    row["meta"] = meta
    return row


def _draw(fn, cfg, rng, category: str) -> tuple[Any, ...]:
    for _ in range(_TRIES):
        try:
            made = fn(cfg, rng)
        except LensforgeError as e:
            raise LensforgeError(f"category '{category}': {e}") from None
        if made:
            return made
    raise LensforgeError(f"category '{category}': the world's objects do not fit a scene for it "
                         f"(sizes {cfg.sizes}); widen the world with --world sizes=[…] or leave the category out")


def parse_categories(text: str | Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """``"a,b"`` or a list → validated category names (all of ``known`` when empty)."""
    if text is None or text == "" or text == []:
        return list(known)
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    bad = [c for c in names if c not in known]
    if bad:
        raise LensforgeError(f"unknown categor{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
                             f"choose from {', '.join(known)}")
    if not names:
        raise LensforgeError(f"--categories is empty; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def taxonomy_rows(n: int, *, seed: int = 0, categories: str | Sequence[str] | None = None,
                  world: SyntheticWorld.Config | dict[str, Any] | Sequence[str] | None = None,
                  resolution: int = 64) -> list[dict[str, Any]]:
    """``n`` taxonomy rows, categories in turn (counts differ by at most one), deterministic in ``seed``.

    ``resolution``: ``aspect_ratio`` rows get ``height``/``width`` near ``resolution``² pixels.
    """
    if n < 1:
        raise LensforgeError(f"the number of prompts must be >= 1, got {n}")
    if resolution < 16 or resolution % 16:
        raise LensforgeError(f"--resolution must be a positive multiple of 16, got {resolution}")
    cfg = world if isinstance(world, SyntheticWorld.Config) else world_config(world)
    cats = parse_categories(categories, TAXONOMY)
    fns = _categories(resolution)
    rows = []
    for i in range(n):
        cat = cats[i % len(cats)]
        rng = np.random.default_rng([int(seed), 4_000_037, i])
        rows.append(_row(f"synthetic-{seed}-{i:05d}", cat, _draw(fns[cat], cfg, rng, cat),
                         {"source": "synthetic", "seed": int(seed), "index": i}))
    return rows


# ---------------------------------------------------------------------------------------------
# GenEval-style suite


def _g_single(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    return scene and (f"a photo of {_a(o['shape'])}",
                      [(f"Is there {_a(o['shape'])}?", {"kind": "object", "object": {"shape": o["shape"]}})], scene, {})


def _g_two(cfg, rng):
    s1, s2 = _distinct(rng, cfg.shapes, 2, "shapes")
    scene = _build(cfg, rng, [_obj(cfg, rng, shape=s1), _obj(cfg, rng, shape=s2)])
    return scene and (f"a photo of {_a(s1)} and {_a(s2)}", [
        (f"Is there {_a(s1)}?", {"kind": "object", "object": {"shape": s1}}),
        (f"Is there {_a(s2)}?", {"kind": "object", "object": {"shape": s2}}),
    ], scene, {})


def _g_counting(cfg, rng):
    n = int(rng.integers(2, 5))
    s = _pick(rng, cfg.shapes)
    scene = _build(cfg, rng, [_obj(cfg, rng, shape=s) for _ in range(n)])
    return scene and (f"a photo of {NUMBER_WORDS[n]} {plural(s, n)}", [
        (f"Are there exactly {NUMBER_WORDS[n]} {plural(s, n)}?", {"kind": "count", "object": {"shape": s}, "count": n}),
    ], scene, {})


def _g_colors(cfg, rng):
    o = _obj(cfg, rng)
    scene = _build(cfg, rng, [o])
    return scene and (f"a photo of {_a(o['color'] + ' ' + o['shape'])}", [
        (f"Is there {_a(o['shape'])}?", {"kind": "object", "object": {"shape": o["shape"]}}),
        (f"Is the {o['shape']} {o['color']}?", {"kind": "color", "object": {"shape": o["shape"]}, "color": o["color"]}),
    ], scene, {})


def _g_position(cfg, rng):
    s1, s2 = _distinct(rng, cfg.shapes, 2, "shapes")
    rel = _pick(rng, ("left of", "right of", "above", "below"))
    ca, cb = _relation_cells(rng, rel)
    scene = _build(cfg, rng, [_obj(cfg, rng, shape=s1, cell=ca), _obj(cfg, rng, shape=s2, cell=cb)])
    return scene and (f"a photo of {_a(s1)} {rel} {_a(s2)}", [
        (f"Is there {_a(s1)}?", {"kind": "object", "object": {"shape": s1}}),
        (f"Is there {_a(s2)}?", {"kind": "object", "object": {"shape": s2}}),
        (f"Is the {s1} {_REL_WORDS[rel]} the {s2}?",
         {"kind": "relation", "a": {"shape": s1}, "b": {"shape": s2}, "relation": rel}),
    ], scene, {})


def _g_color_attr(cfg, rng):
    s1, s2 = _distinct(rng, cfg.shapes, 2, "shapes")
    c1, c2 = _distinct(rng, cfg.colors, 2, "colours")
    scene = _build(cfg, rng, [_obj(cfg, rng, shape=s1, color=c1), _obj(cfg, rng, shape=s2, color=c2)])
    return scene and (f"a photo of {_a(c1 + ' ' + s1)} and {_a(c2 + ' ' + s2)}", [
        (f"Is there {_a(c1 + ' ' + s1)}?", {"kind": "object", "object": {"color": c1, "shape": s1}}),
        (f"Is there {_a(c2 + ' ' + s2)}?", {"kind": "object", "object": {"color": c2, "shape": s2}}),
    ], scene, {})


_GENEVAL = {"single_object": _g_single, "two_object": _g_two, "counting": _g_counting, "colors": _g_colors,
            "position": _g_position, "color_attr": _g_color_attr}


def geneval_rows(n: int, *, seed: int = 0, tags: str | Sequence[str] | None = None,
                 world: SyntheticWorld.Config | dict[str, Any] | Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``n`` GenEval-style rows (``category`` = GenEval tag, tags in turn), deterministic in ``seed``."""
    if n < 1:
        raise LensforgeError(f"the number of prompts must be >= 1, got {n}")
    cfg = world if isinstance(world, SyntheticWorld.Config) else world_config(world)
    names = parse_categories(tags, GENEVAL_TAGS)
    rows = []
    for i in range(n):
        tag = names[i % len(names)]
        rng = np.random.default_rng([int(seed), 5_000_011, i])
        rows.append(_row(f"geneval-{seed}-{i:05d}", tag, _draw(_GENEVAL[tag], cfg, rng, tag),
                         {"source": "geneval_synth", "seed": int(seed), "index": i, "tag": tag}))
    return rows


def geneval_correct(image: Any, row: dict[str, Any], *, analysis: Any = None) -> bool:
    """GenEval's strict per-image rule: the image is correct only if every check of the row passes."""
    return bool(score_row(image, row, analysis=analysis)["strict"])


def geneval_summary(rows: Sequence[dict[str, Any]], correct: Sequence[bool]) -> dict[str, Any]:
    """``{"tags": {tag: fraction correct}, "overall": mean of the tag means, "images": n}`` (GenEval's scores)."""
    if len(rows) != len(correct):
        raise LensforgeError(f"geneval_summary: {len(correct)} verdicts for {len(rows)} rows")
    per: dict[str, list[bool]] = {}
    for r, c in zip(rows, correct):
        per.setdefault(str(r.get("category")), []).append(bool(c))
    tags = {t: float(np.mean(v)) for t, v in per.items()}
    return {"tags": tags, "overall": float(np.mean(list(tags.values()))) if tags else 0.0, "images": len(rows)}


# ---------------------------------------------------------------------------------------------
# files and the CLI


def write_rows(rows: Sequence[dict[str, Any]], path: str) -> Counter[str]:
    """Write rows as a prompt set (checked, atomically, folders made; :func:`write_prompt_set`); returns the
    per-category counts."""
    from lensforge.data.prompt_sets import write_prompt_set

    write_prompt_set(path, rows)
    return Counter(str(r["category"]) for r in rows)


def parse_source(spec: str) -> tuple[str, int]:
    """``synthetic:N`` / ``geneval:N`` → ``(kind, N)``."""
    kind, sep, num = spec.partition(":")
    if kind not in ("synthetic", "geneval") or not sep:
        raise LensforgeError(f"'{spec}': expected synthetic:N (taxonomy) or geneval:N (GenEval-style suite)")
    try:
        n = int(num)
    except ValueError:
        raise LensforgeError(f"'{spec}': N must be an integer") from None
    if n < 1:
        raise LensforgeError(f"'{spec}': N must be >= 1")
    return kind, n


def run(args: Any) -> int:
    """``lensforge data prompts`` (arguments: :mod:`lensforge.data.prompts_cli`): write the rows, print the counts."""
    kind, n = parse_source(args.src)
    cfg = world_config(args.world)
    if kind == "synthetic":
        rows = taxonomy_rows(n, seed=args.seed, categories=args.categories, world=cfg, resolution=args.resolution)
    else:
        rows = geneval_rows(n, seed=args.seed, tags=args.categories, world=cfg)
    counts = write_rows(rows, args.out)
    items = sum(len(r["rubric"]) for r in rows)
    print(f"wrote {len(rows)} prompts ({items} rubric items) in {len(counts)} categories to {args.out} (seed {args.seed})")
    width = max(len(c) for c in counts)
    for cat, c in counts.items():
        print(f"  {cat:<{width}s} {c:5d}")
    return 0
