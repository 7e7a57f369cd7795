"""``synthetic_world``: the CPU default reasoner — a short prompt in the synthetic world's words → its dense caption.

No LLM and no network. For each prompt it

1. **parses** the words it knows — object colours, shapes (and plurals), size words, counts ("three",
   "3"), regions ("in the upper left", "at the top"), relations ("to the left of", "above"), the
   background (colours, "plain"/"gradient"/"stripes"/…, gradient directions), a quoted glyph word and
   its ink — into the facts the prompt states;
2. **draws** every unstated attribute from the world's priors (its colour, shape and size vocabularies,
   uniformly, as the world's own generator does; free grid cells; its background kinds and colours),
   seeded by ``seed`` and the prompt's text, so the same prompt always gets the same scene;
3. **writes** the dense caption the world's captioner writes for that scene
   (:func:`~lensforge.data.sources.synthetic.dense_caption` with the world's ``dense_words``) — the
   caption style the model was trained on.

Words it cannot parse are **kept and reported, never dropped silently**: they are appended to the caption
("… Also mentioned: dog, sunset.") and listed in the rewrite's ``notes["unparsed"]`` (and counted in
:meth:`SyntheticWorldReasoner.stats`). Function words and the world's style words ("a photo of",
"simple", "geometric") carry no scene facts and are skipped. A prompt that is already detailed
(``keep_detailed_words`` words or more, e.g. one of the world's own 80–120-word captions) is kept as it
is, as Lens's rule 4 asks.

The world is ``world`` when set, else the world the served model was trained on (:meth:`setup`), else
the default world. The system prompt does not apply (a rule-based rewriter): it is accepted and ignored,
so this reasoner cannot be the subject of a system-prompt search.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Sequence

from lensforge.errors import LensforgeError
from lensforge.interfaces.reasoner import Reasoner, Rewrite

#: Words that carry no scene fact (function words, picture nouns, the world's own style words).
STOPWORDS = frozenset("""
a an the of in on at with and to from into onto its it is are there this that these those has have having
photo photograph picture image illustration drawing render rendering scene view shot poster graphic art
showing shows show shown depicting depicts containing contains featuring features displaying displays
some other another each every all both total exactly just only also very
simple geometric abstract minimalist clean plain-looking vector colourful colorful bright saturated solid
placed sits sitting located positioned set lies lying appears appearing standing stands
side corner part area region sized size colour color coloured colored
""".split())

_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                "single": 1, "pair": 2, "couple": 2}
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "medium": "medium", "medium-sized": "medium",
               "mid-sized": "medium", "large": "large", "big": "large", "huge": "huge", "giant": "huge",
               "enormous": "huge"}
_GENERIC = {"shape": 1, "shapes": 2, "object": 1, "objects": 2, "thing": 1, "things": 2, "something": 1, "item": 1,
            "items": 2, "figure": 1, "figures": 2}
_RELATIONS = {("to", "the", "left", "of"): "left of", ("left", "of"): "left of",
              ("to", "the", "right", "of"): "right of", ("right", "of"): "right of",
              ("above",): "above", ("over",): "above", ("on", "top", "of"): "above",
              ("below",): "below", ("under",): "below", ("beneath",): "below", ("underneath",): "below"}
_BG_KIND = {"plain": "flat", "flat": "flat", "uniform": "flat", "solid-colour": "flat", "gradient": "gradient",
            "texture": "texture", "textured": "texture"}
_PATTERNS = {"stripes": "stripes", "striped": "stripes", "stripe": "stripes", "checks": "checks",
             "checked": "checks", "checkered": "checks", "chequered": "checks", "checkerboard": "checks",
             "noise": "noise", "noisy": "noise", "grainy": "noise"}
_BG_NOUNS = frozenset({"background", "backdrop", "backgrounds"})
_INK = {"black": "black", "white": "white"}
_FORMAT_WORDS = frozenset({"wide", "tall", "landscape", "portrait"})
_RATIO = re.compile(r"^\d+(?:\.\d+)?:\d+(?:\.\d+)?$")
_QUOTED = re.compile(r"[\"“”']([A-Za-z]{1,12})[\"“”']")
_TOKEN = re.compile(r"[a-z0-9]+(?:[-:.][a-z0-9]+)*")


def _norm(text: str) -> str:
    t = text.lower().replace("gray", "grey").replace("center", "centre")
    t = t.replace("off white", "off-white").replace("medium sized", "medium-sized").replace("mid sized", "mid-sized")
    return t


def _region_phrases() -> dict[tuple[str, ...], tuple[int, int]]:
    from lensforge.data.sources.synthetic import region_name

    out: dict[tuple[str, ...], tuple[int, int]] = {}
    for r in range(3):
        for c in range(3):
            out[tuple(region_name((r, c)).split())] = (r, c)
    extra = {"top left": (0, 0), "top right": (0, 2), "bottom left": (2, 0), "bottom right": (2, 2),
             "upper centre": (0, 1), "lower centre": (2, 1), "top middle": (0, 1), "bottom middle": (2, 1),
             "centre left": (1, 0), "centre right": (1, 2), "middle": (1, 1), "left": (1, 0), "right": (1, 2),
             "top": (0, 1), "bottom": (2, 1), "upper left corner": (0, 0), "upper right corner": (0, 2),
             "lower left corner": (2, 0), "lower right corner": (2, 2), "top left corner": (0, 0),
             "top right corner": (0, 2), "bottom left corner": (2, 0), "bottom right corner": (2, 2)}
    for k, v in extra.items():
        out.setdefault(tuple(k.split()), v)
    return out


@dataclass
class Parsed:
    """What a short prompt states (None = unstated), and the words it could not parse."""

    objects: list[dict[str, Any]]
    """One dict per object: ``color``, ``shape``, ``size``, ``cell`` (each None when unstated)."""
    relation: tuple[int, str, int] | None
    """``(a, relation, b)`` between two stated objects."""
    background: dict[str, Any]
    """Stated ``kind``, ``colors``, ``direction``, ``pattern`` (only the keys stated)."""
    text: dict[str, Any] | None
    """A quoted glyph word: ``{"word", "ink"?}``."""
    unparsed: list[str]
    """Words that are neither scene facts nor function words, in prompt order (kept in the caption)."""
    format_words: list[str]
    """Aspect-ratio words ("wide", "2:1"): recognised, not part of the scene."""
    more: bool = False
    """A plural without a number ("shapes", "some objects"): the world's priors decide how many."""


class _Lexicon:
    """Phrase table of the world's vocabulary (longest match wins)."""

    def __init__(self) -> None:
        from lensforge.data.sources.synthetic import BACKGROUND_COLORS, GRADIENT_DIRECTIONS, PALETTE, PLURAL, SHAPES

        self.table: dict[tuple[str, ...], tuple[str, Any]] = {}
        for c in PALETTE:
            self.table[(c,)] = ("color", c)
        for c in BACKGROUND_COLORS:
            self.table[tuple(c.split())] = ("bgcolor", c)
        self.table[("off", "white")] = ("bgcolor", "off-white")
        for s in SHAPES:
            self.table[(s,)] = ("shape", (s, 1))
            self.table[(PLURAL.get(s, s + "s"),)] = ("shape", (s, 2))
        for d in GRADIENT_DIRECTIONS:
            self.table[(d,)] = ("direction", d)
        for w, n in _COUNT_WORDS.items():
            self.table[(w,)] = ("count", n)
        for w, s in _SIZE_WORDS.items():
            self.table[(w,)] = ("size", s)
        for w, n in _GENERIC.items():
            self.table[(w,)] = ("generic", n)
        for w, k in _BG_KIND.items():
            self.table[(w,)] = ("bgkind", k)
        for w, p in _PATTERNS.items():
            self.table[(w,)] = ("pattern", p)
        for w in _BG_NOUNS:
            self.table[(w,)] = ("bgnoun", None)
        for phrase, rel in _RELATIONS.items():
            self.table[phrase] = ("relation", rel)
        self.regions = _region_phrases()
        self.longest = max(len(k) for k in [*self.table, *self.regions])

    def match(self, toks: list[str], i: int, region_ok: bool) -> tuple[int, str, Any] | None:
        """``(length, kind, value)`` of the longest phrase at ``toks[i]``; region phrases only where a region
        can start ("in the …", "at the …", "on the …"), and they win a tie."""
        best: tuple[int, str, Any] | None = None
        for n in range(min(self.longest, len(toks) - i), 0, -1):
            key = tuple(toks[i:i + n])
            if region_ok and key in self.regions:
                return n, "region", self.regions[key]
            if best is None and key in self.table:
                kind, value = self.table[key]
                best = (n, kind, value)
        return best


_LEXICON: _Lexicon | None = None


def _lexicon() -> _Lexicon:
    global _LEXICON
    if _LEXICON is None:
        _LEXICON = _Lexicon()
    return _LEXICON


def _square_is_format(toks: list[str], i: int) -> bool:
    """"square" names the image format, not a shape: "a square 1:1 photo of …", "a square image of …"."""
    nxt = toks[i + 1] if i + 1 < len(toks) else ""
    after = toks[i + 2] if i + 2 < len(toks) else ""
    return bool(_RATIO.match(nxt)) or (nxt in ("photo", "image", "picture", "format") and after == "of")


def parse_prompt(prompt: str) -> Parsed:
    """The facts a short prompt states in the synthetic world's vocabulary (see the module docstring)."""
    lex = _lexicon()
    quoted = _QUOTED.findall(prompt)
    text: dict[str, Any] | None = {"word": quoted[0].upper()} if quoted else None
    body = _QUOTED.sub(" qtextq ", prompt)  # where the word was: a region after it places the word
    toks = _TOKEN.findall(_norm(body))
    objects: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    pending_cell: tuple[int, int] | None = None
    pending_rel: tuple[int, str] | None = None
    relation: tuple[int, str, int] | None = None
    bg: dict[str, Any] = {}
    bg_colors: list[str] = []
    unparsed: list[str] = []
    fmt: list[str] = []
    last_was_noun = False
    after_text = False
    more = False

    def emit(shape: str | None, plural: bool) -> None:
        nonlocal pending, pending_cell, pending_rel, relation, more
        if plural and "count" not in pending:
            more = True  # "circles", "shapes": at least two, the world decides how many
        n = int(pending.pop("count", 2 if plural and shape is not None else 1))
        first = len(objects)
        for _ in range(max(1, min(n, 5))):
            objects.append({"color": pending.get("color"), "shape": shape, "size": pending.get("size"),
                            "cell": pending_cell if n == 1 else None})
        if n > 5:
            unparsed.append(f"(count {n}: at most 5 objects fit)")
        if pending_rel is not None and relation is None and pending_rel[0] >= 0:
            relation = (pending_rel[0], pending_rel[1], first)
        pending, pending_cell, pending_rel = {}, None, None

    i = 0
    while i < len(toks):
        tok = toks[i]
        prev = toks[i - 1] if i else ""
        region_ok = prev in ("the", "in", "at", "on") or (i >= 2 and toks[i - 2] in ("in", "at", "on"))
        if _RATIO.match(tok) or tok in _FORMAT_WORDS:
            fmt.append(tok)
            i += 1
            continue
        if tok == "square" and _square_is_format(toks, i):
            fmt.append(tok)
            i += 1
            continue
        if tok == "qtextq":
            after_text = True
            i += 1
            continue
        if text is not None and tok in _INK:
            text["ink"] = _INK[tok]
            i += 1
            continue
        if text is not None and tok in ("word", "words", "letters", "letter", "capital", "capitals", "text", "written",
                                        "writing", "spelling", "spells", "saying", "says", "label", "ink"):
            i += 1
            continue
        m = lex.match(toks, i, region_ok)
        if m is None:
            if tok.isdigit() and 0 < int(tok) < 10:
                pending["count"] = int(tok)
            elif tok not in STOPWORDS:
                unparsed.append(tok)
            last_was_noun = False
            i += 1
            continue
        n, kind, value = m
        if kind == "color":
            if last_was_noun and objects and objects[-1]["color"] is None and not pending:
                objects[-1]["color"] = value  # "something blue", "a circle, red"
            else:
                pending["color"] = value
        elif kind == "size":
            if last_was_noun and objects and objects[-1]["size"] is None and not pending:
                objects[-1]["size"] = value
            else:
                pending["size"] = value
        elif kind == "count":
            pending["count"] = value
        elif kind == "shape":
            shape, plural = value
            emit(shape, plural == 2)
        elif kind == "generic":
            emit(None, value == 2)
        elif kind == "region" and after_text and text is not None and "cell" not in text:
            text["cell"] = value
        elif kind == "region":
            if objects and objects[-1]["cell"] is None and not pending:
                objects[-1]["cell"] = value
            else:
                pending_cell = value
        elif kind == "relation":
            pending_rel = (len(objects) - 1, value)
        elif kind == "bgcolor":
            bg_colors.append(value)
        elif kind == "bgkind":
            bg["kind"] = value
        elif kind == "pattern":
            bg["kind"], bg["pattern"] = "texture", value
        elif kind == "direction":
            bg["kind"], bg["direction"] = "gradient", value
        last_was_noun = kind in ("shape", "generic")
        if last_was_noun:
            after_text = False
        i += n
    if pending and any(k in pending for k in ("color", "size")):
        emit(None, False)  # attributes without a noun: "blue", "something huge"
    elif pending.get("count") is not None and not objects:
        emit(None, pending["count"] > 1)
    if bg_colors:
        bg["colors"] = bg_colors[:2]
        if len(bg_colors) >= 2 and "kind" not in bg:
            bg["kind"] = "gradient"
    return Parsed(objects=objects, relation=relation, background=bg, text=text,
                  unparsed=list(dict.fromkeys(unparsed)), format_words=fmt, more=more)


def _prompt_seed(seed: int, prompt: str) -> list[int]:
    return [int(seed), int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")]


def build_scene(parsed: Parsed, world: Any, rng: Any, *, tries: int = 50) -> tuple[dict[str, Any], list[str]]:
    """A scene with every stated fact of ``parsed`` and the rest drawn from ``world``'s priors; ``(scene, notes)``."""
    from lensforge.data.sources.synthetic import cell_of
    from lensforge.data.synthetic_prompts import _background, _build, _ink, _relation_cells

    notes: list[str] = []
    objs = [dict(o) for o in parsed.objects]
    while len(objs) < world.min_objects:  # nothing stated: the world's own count of objects
        objs.append({"color": None, "shape": None, "size": None, "cell": None})
    if not parsed.objects or parsed.more:  # how many is unstated: the world's prior
        lo = max(world.min_objects, len(objs))
        extra = int(rng.integers(lo, max(lo, world.max_objects) + 1)) - len(objs)
        template = dict(objs[-1]) if parsed.more and objs else {"color": None, "shape": None, "size": None}
        objs += [{**template, "cell": None} for _ in range(max(0, extra))]
    budget = 9 - (1 if parsed.text else 0)
    if len(objs) > budget:
        notes.append(f"{len(objs)} objects do not fit the 3x3 grid: kept {budget}")
        objs = objs[:budget]
    keep_size = any(o["size"] is not None for o in objs)
    for attempt in range(tries):
        specs = []
        for o in objs:
            specs.append({"color": o["color"] or world.colors[int(rng.integers(len(world.colors)))],
                          "shape": o["shape"] or world.shapes[int(rng.integers(len(world.shapes)))],
                          "size": o["size"] or world.sizes[int(rng.integers(len(world.sizes)))],
                          "cell": list(o["cell"]) if o["cell"] is not None else None})
        if parsed.relation is not None:
            a, rel, b = parsed.relation
            if a < len(specs) and b < len(specs) and specs[a]["cell"] is None and specs[b]["cell"] is None:
                ca, cb = _relation_cells(rng, rel)
                specs[a]["cell"], specs[b]["cell"] = list(ca), list(cb)
        stated_bg = parsed.background
        kind = stated_bg.get("kind") or world.backgrounds[int(rng.integers(len(world.backgrounds)))]
        bg = _background(world, rng, kind)
        if stated_bg.get("colors"):
            cols = list(stated_bg["colors"])
            if kind == "gradient" and len(cols) == 1:
                cols.append(bg["colors"][-1] if bg["colors"][-1] != cols[0] else bg["colors"][0])
            bg["colors"] = cols[:2] if kind == "gradient" else cols[:1]
        for k in ("direction", "pattern"):
            if stated_bg.get(k):
                bg[k] = stated_bg[k]
        scene = _build(world, rng, specs, keep_size=keep_size and attempt < tries // 2, text=parsed.text is not None,
                       bg=bg)
        if scene is None:
            continue
        want = (parsed.text or {}).get("cell")
        if want is not None and scene.get("text") and cell_of(scene["text"]["x"], scene["text"]["y"]) != tuple(want) \
                and attempt < tries - 1:
            continue  # the word goes where the prompt put it: draw the layout again
        if attempt >= tries // 2 and keep_size:
            notes.append("a stated size did not fit the layout: a smaller size was used")
        if parsed.text is not None and scene.get("text"):
            scene["text"]["word"] = parsed.text["word"]
            scene["text"]["ink"] = parsed.text.get("ink") or _ink(scene["background"])
            if want is not None and cell_of(scene["text"]["x"], scene["text"]["y"]) != tuple(want):
                notes.append("the word could not be placed where the prompt put it")
        return scene, notes
    raise LensforgeError(f"no layout of the synthetic world fits {len(objs)} object(s) with the stated positions")


class SyntheticWorldReasoner(Reasoner):
    """Short prompt in the synthetic world's words → the world's dense caption (unstated facts drawn, seeded)."""

    uses_system_prompt = False

    @dataclass(kw_only=True)
    class Config:
        world: dict[str, Any] | None = None
        """SyntheticWorld.Config fields of the world to write captions for (null = the served model's training world, else the default world)."""
        seed: int = 0
        """Seed of the unstated attributes (combined with each prompt's text: the same prompt always gets the same scene)."""
        dense_words: tuple[int, int] | None = None
        """Word-count range of the caption (null = the world's dense_words)."""
        keep_unparsed: bool = True
        """Append the words it could not parse to the caption ("Also mentioned: …"); they are reported either way."""
        keep_detailed_words: int = 40
        """A prompt of at least this many words is already detailed and is kept as it is (Lens's rule 4); 0 = always rewrite."""

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if config.world is not None:
            from lensforge.data.synthetic_prompts import world_config

            try:
                world_config(config.world)
            except LensforgeError as e:
                out.append(("world", str(e)))
        if config.dense_words is not None and not 8 <= config.dense_words[0] <= config.dense_words[1]:
            out.append(("dense_words", f"need 8 <= min <= max, got {list(config.dense_words)}"))
        return out

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._world: Any = None
        self._counts = {"rewrites": 0, "failed": 0, "with_unparsed": 0, "unparsed_words": 0}
        if self.config.world is not None:
            from lensforge.data.synthetic_prompts import world_config

            self._world = world_config(self.config.world)

    @property
    def system_prompt(self) -> str:
        return ""

    @property
    def world(self) -> Any:
        """The :class:`SyntheticWorld.Config` captions are written for."""
        if self._world is None:
            from lensforge.data.sources.synthetic import SyntheticWorld

            self._world = SyntheticWorld.Config()
        return self._world

    def setup(self, *, text_encoder: Any = None, world: Any = None) -> None:
        if self.config.world is None and world is not None:
            self._world = world

    def describe(self) -> str:
        w = self.world
        return (f"synthetic_world (rule-based; world: {len(w.colors)} colours, {len(w.shapes)} shapes, sizes {w.sizes}, "
                f"{w.min_objects}-{w.max_objects} objects, {list(self.config.dense_words or w.dense_words)} words)")

    def rewrite_one(self, prompt: str) -> Rewrite:
        """The rewrite of one prompt (see the module docstring)."""
        import numpy as np

        from lensforge.data.sources.synthetic import dense_caption

        n_words = len(prompt.split())
        if self.config.keep_detailed_words and n_words >= self.config.keep_detailed_words:
            return Rewrite(prompt=prompt, text=prompt, raw=prompt,
                           notes={"kept": f"already detailed ({n_words} words)", "unparsed": []})
        parsed = parse_prompt(prompt)
        rng = np.random.default_rng(_prompt_seed(self.config.seed, prompt))
        try:
            scene, notes = build_scene(parsed, self.world, rng)
        except LensforgeError as e:
            return Rewrite(prompt=prompt, text=prompt, ok=False, error=str(e),
                           notes={"unparsed": parsed.unparsed})
        lo, hi = self.config.dense_words or self.world.dense_words
        caption = dense_caption(scene, rng, int(lo), int(hi))
        if parsed.unparsed and self.config.keep_unparsed:
            caption = f"{caption} Also mentioned: {', '.join(parsed.unparsed)}."
        stated = {"objects": parsed.objects, "relation": parsed.relation, "background": parsed.background,
                  "text": parsed.text}
        info: dict[str, Any] = {"unparsed": parsed.unparsed, "stated": stated, "scene": scene}
        if parsed.format_words:
            info["format_words"] = parsed.format_words
        if notes:
            info["layout"] = notes
        return Rewrite(prompt=prompt, text=caption, raw=caption, notes=info)

    def rewrite(self, prompts: Sequence[str], *, system_prompt: str | None = None) -> list[Rewrite]:
        out = [self.rewrite_one(str(p)) for p in prompts]
        for r in out:
            self._counts["rewrites"] += 1
            self._counts["failed"] += int(not r.ok)
            unparsed = r.notes.get("unparsed") or []
            self._counts["with_unparsed"] += int(bool(unparsed))
            self._counts["unparsed_words"] += len(unparsed)
        return out

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._counts.items()}


__all__ = ["Parsed", "STOPWORDS", "SyntheticWorldReasoner", "build_scene", "parse_prompt"]
