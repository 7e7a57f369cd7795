"""Prompt sets: one JSONL format for evaluation, RL and the reasoner search.

One row per line::

    {"id": "p0001", "prompt": "a red cat on a blue chair", "category": "animals",
     "rubric": [{"id": "r1", "question": "Is the cat red?", "weight": 2},
                {"id": "r2", "question": "Is the chair blue?", "weight": 1, "check": {"attr": "colour", "object": 1}}],
     "aspect_ratio": "4:3"}

Required: ``id`` (a string, unique in the file), ``prompt`` and ``category`` (non-empty strings),
``rubric`` (at least one item: ``id`` unique within the row, ``question`` non-empty, ``weight`` a number
> 0, optional ``check`` — a free-form dict the synthetic verifier reads). Optional: ``scene`` (the
synthetic world's scene graph, a dict), ``height`` and ``width`` (positive ints, both or neither) or
``aspect_ratio`` (``"W:H"``; not together with height/width), ``negative``, ``short`` (strings),
``meta`` (a dict). Any other key is an error with a did-you-mean suggestion.

:func:`load_prompt_set` checks every row and, when any is bad, raises one :class:`PromptSetError`
listing every problem as ``file:line: what is wrong``. :meth:`PromptSet.split` assigns each row to
train or held-out by a seeded hash of its id alone, so the split does not move when rows are added,
removed or reordered, and RL never trains on the prompts it is evaluated on.

Lens appends one global item to every prompt's rubric ("is the whole image natural and structurally
sound?"); :data:`GLOBAL_STRUCTURAL_ITEM` is that item, and files hold only the prompt-specific ones —
a judge appends it with :meth:`PromptRow.with_global_item` when scoring.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_path

#: Keys a row may have, and keys a rubric item may have.
ROW_KEYS = ("id", "prompt", "category", "rubric", "scene", "height", "width", "aspect_ratio", "negative",
            "short", "meta")
ITEM_KEYS = ("id", "question", "weight", "check")
#: Most problems one error message lists (the count of the rest follows).
MAX_LISTED_PROBLEMS = 200

_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


class PromptSetError(LensforgeError):
    """A prompt-set file has bad rows; ``problems`` holds every ``file:line: what is wrong``."""

    def __init__(self, path: str | os.PathLike, problems: list[str], num_bad_rows: int):
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        head = (f"prompt set {self.path}: {num_bad_rows} bad row{'s' if num_bad_rows != 1 else ''} "
                f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):")
        lines = [head] + [f"  {p}" for p in shown] + ([f"  … and {more} more"] if more else [])
        super().__init__("\n".join(lines))


@dataclass(kw_only=True)
class RubricItem:
    """One yes/no check of a prompt's rubric."""

    id: str
    """Unique within its row (``r1``, ``colour_0`` …)."""
    question: str
    """A yes/no question about the image ("Is the cat orange?")."""
    weight: float = 1.0
    """Relative importance (> 0) in the row's weighted mean."""
    check: dict[str, Any] | None = None
    """Optional machine-checkable spec the synthetic verifier reads (free-form)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "question": self.question, "weight": self.weight}
        if self.check is not None:
            d["check"] = self.check
        return d


#: Lens's global structural-integrity item, appended to every prompt's rubric when judging.
GLOBAL_STRUCTURAL_ITEM = RubricItem(
    id="global_structural_integrity",
    question=("Is the whole image natural and structurally sound, free of distorted anatomy, malformed or "
              "merged objects, garbled text and visual artifacts?"),
    weight=1.0,
)


@dataclass(kw_only=True)
class PromptRow:
    """One prompt with its category and rubric."""

    id: str
    prompt: str
    category: str
    rubric: list[RubricItem]
    scene: dict[str, Any] | None = None
    """Synthetic-world scene graph (what the verifier checks the image against)."""
    height: int | None = None
    width: int | None = None
    aspect_ratio: str | None = None
    """``"W:H"``; the sampler picks the size (not together with height/width)."""
    negative: str | None = None
    """Negative prompt."""
    short: str | None = None
    """A short, alt-text-like variant of the prompt (reasoner experiments)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else (source, generator, seed …)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON row (optional fields only when set)."""
        d: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "category": self.category,
                             "rubric": [it.to_dict() for it in self.rubric]}
        for k in ("scene", "height", "width", "aspect_ratio", "negative", "short"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.meta:
            d["meta"] = self.meta
        return d

    @property
    def total_weight(self) -> float:
        return float(sum(it.weight for it in self.rubric))

    def with_global_item(self, item: RubricItem = GLOBAL_STRUCTURAL_ITEM) -> "PromptRow":
        """A copy whose rubric ends with ``item`` (unchanged if an item with its id is already there)."""
        if any(it.id == item.id for it in self.rubric):
            return self
        return dataclasses.replace(self, rubric=[*self.rubric, item])

    def aspect(self) -> float | None:
        """Width / height from ``height``/``width`` or ``aspect_ratio`` (None when neither is given)."""
        if self.height and self.width:
            return self.width / self.height
        if self.aspect_ratio:
            m = _ASPECT.match(self.aspect_ratio)
            if m:
                return float(m.group(1)) / float(m.group(2))
        return None


def row_size(row: dict[str, Any], base: int | None = None, multiple_of: int = 16,
             lens_table: bool = True) -> tuple[int, int] | None:
    """A row's own ``(height, width)`` in pixels (evaluation generates it at that size and RL rolls it out at it):
    its ``height``/``width`` when it states both; for a row stating only ``aspect_ratio``, that ratio at the
    caller's ``base`` resolution (Lens's table, else sides rounded to ``multiple_of``); else None (the
    caller's default size)."""
    if row.get("height") and row.get("width"):
        return int(row["height"]), int(row["width"])
    if row.get("aspect_ratio") and base:
        from lensforge.data.resolution import resolve_resolution

        return resolve_resolution(int(base), str(row["aspect_ratio"]), int(multiple_of), bool(lens_table))
    return None


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(known)})"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def row_problems(obj: Any) -> list[str]:
    """Everything wrong with one parsed JSON row (empty when it is a valid row)."""
    if not isinstance(obj, dict):
        return [f"a row must be a JSON object, got {type(obj).__name__}"]
    out: list[str] = []
    for k in obj:
        if k not in ROW_KEYS:
            out.append(f"unknown key {k!r}{_suggest(k, ROW_KEYS)}")
    for k in ("id", "prompt", "category"):
        if k not in obj:
            out.append(f"missing {k!r}")
        elif not _nonempty_str(obj[k]):
            out.append(f"{k!r} must be a non-empty string, got {obj[k]!r}"[:200])
    if "rubric" not in obj:
        out.append("missing 'rubric'")
    elif not isinstance(obj["rubric"], list):
        out.append(f"'rubric' must be a list of items, got {type(obj['rubric']).__name__}")
    elif not obj["rubric"]:
        out.append("'rubric' is empty (at least one item)")
    else:
        seen: dict[str, int] = {}
        for i, it in enumerate(obj["rubric"]):
            where = f"rubric[{i}]"
            if not isinstance(it, dict):
                out.append(f"{where} must be an object, got {type(it).__name__}")
                continue
            for k in it:
                if k not in ITEM_KEYS:
                    out.append(f"{where}: unknown key {k!r}{_suggest(k, ITEM_KEYS)}")
            if "id" not in it:
                out.append(f"{where}: missing 'id'")
            elif not _nonempty_str(it["id"]):
                out.append(f"{where}: 'id' must be a non-empty string, got {it['id']!r}")
            elif it["id"] in seen:
                out.append(f"{where}: duplicate item id {it['id']!r} (also rubric[{seen[it['id']]}])")
            else:
                seen[it["id"]] = i
            if "question" not in it:
                out.append(f"{where}: missing 'question'")
            elif not _nonempty_str(it["question"]):
                out.append(f"{where}: 'question' must be a non-empty string")
            if "weight" not in it:
                out.append(f"{where}: missing 'weight'")
            elif not _is_number(it["weight"]) or not math.isfinite(it["weight"]) or it["weight"] <= 0:
                out.append(f"{where}: 'weight' must be a number > 0, got {it['weight']!r}")
            if "check" in it and not isinstance(it["check"], dict):
                out.append(f"{where}: 'check' must be an object, got {type(it['check']).__name__}")
    for k in ("scene", "meta"):
        if k in obj and not isinstance(obj[k], dict):
            out.append(f"{k!r} must be an object, got {type(obj[k]).__name__}")
    for k in ("negative", "short"):
        if k in obj and not isinstance(obj[k], str):
            out.append(f"{k!r} must be a string, got {type(obj[k]).__name__}")
    for k in ("height", "width"):
        if k in obj and (not isinstance(obj[k], int) or isinstance(obj[k], bool) or obj[k] <= 0):
            out.append(f"{k!r} must be a positive integer, got {obj[k]!r}")
    if ("height" in obj) != ("width" in obj):
        out.append("'height' and 'width' go together (give both or neither)")
    if "aspect_ratio" in obj:
        ar = obj["aspect_ratio"]
        m = _ASPECT.match(ar) if isinstance(ar, str) else None
        if m is None or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
            out.append(f"'aspect_ratio' must be a 'W:H' string of positive numbers, got {ar!r}")
        if "height" in obj or "width" in obj:
            out.append("'aspect_ratio' cannot be combined with 'height'/'width' (give one or the other)")
    return out


def row_from_dict(obj: dict[str, Any]) -> PromptRow:
    """A :class:`PromptRow` from a row dict; raises ``ValueError`` listing its problems."""
    probs = row_problems(obj)
    if probs:
        raise ValueError("; ".join(probs))
    return PromptRow(
        id=obj["id"], prompt=obj["prompt"], category=obj["category"],
        rubric=[RubricItem(id=it["id"], question=it["question"], weight=it["weight"], check=it.get("check"))
                for it in obj["rubric"]],
        scene=obj.get("scene"), height=obj.get("height"), width=obj.get("width"),
        aspect_ratio=obj.get("aspect_ratio"), negative=obj.get("negative"), short=obj.get("short"),
        meta=dict(obj.get("meta") or {}),
    )


def held_out_score(row_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from ``(seed, id)`` alone (SHA-256), deciding a row's split."""
    digest = hashlib.sha256(f"lensforge-split:{int(seed)}:{row_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


class PromptSet:
    """The rows of a prompt-set file, in file order."""

    def __init__(self, rows: Iterable[PromptRow], path: str | os.PathLike | None = None):
        self.rows: list[PromptRow] = list(rows)
        self.path = Path(path) if path is not None else None
        self._by_id: dict[str, PromptRow] = {}
        dups = []
        for r in self.rows:
            if r.id in self._by_id:
                dups.append(r.id)
            self._by_id[r.id] = r
        if dups:
            raise LensforgeError(f"prompt set{'' if self.path is None else ' ' + str(self.path)}: duplicate ids "
                                 + ", ".join(repr(d) for d in sorted(set(dups))[:20]))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> PromptRow:
        return self.rows[i]

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._by_id

    def __repr__(self) -> str:
        src = f" from {self.path}" if self.path else ""
        return f"PromptSet({len(self)} rows{src}, {len(self.category_counts())} categories)"

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]

    def by_id(self, row_id: str) -> PromptRow:
        """The row with ``row_id`` (``KeyError`` if absent)."""
        return self._by_id[row_id]

    def category_counts(self) -> dict[str, int]:
        """Rows per category, most frequent first (ties by name)."""
        c = Counter(r.category for r in self.rows)
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def categories(self) -> list[str]:
        """Category names, sorted."""
        return sorted({r.category for r in self.rows})

    def filter(self, categories: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> "PromptSet":
        """Rows in ``categories`` and/or with ``ids`` (file order kept)."""
        cats = set(categories) if categories is not None else None
        keep = set(ids) if ids is not None else None
        return PromptSet([r for r in self.rows if (cats is None or r.category in cats)
                          and (keep is None or r.id in keep)], self.path)

    def split(self, seed: int, held_out_fraction: float) -> tuple["PromptSet", "PromptSet"]:
        """``(train, held_out)`` by a seeded hash of each row's id.

        A row is held out when :func:`held_out_score` ``(id, seed) < held_out_fraction``, a decision
        that depends on nothing but the id and the seed: adding, removing or reordering rows never moves
        another row across the split. The held-out share is therefore ``held_out_fraction`` on average
        (binomially spread), not exactly. File order is kept within each part.
        """
        if not (0.0 <= float(held_out_fraction) <= 1.0):
            raise LensforgeError(f"held_out_fraction must be within [0, 1], got {held_out_fraction}")
        train, held = [], []
        for r in self.rows:
            (held if held_out_score(r.id, seed) < held_out_fraction else train).append(r)
        return PromptSet(train, self.path), PromptSet(held, self.path)

    def with_global_item(self, item: RubricItem = GLOBAL_STRUCTURAL_ITEM) -> "PromptSet":
        """Every row with ``item`` appended to its rubric."""
        return PromptSet([r.with_global_item(item) for r in self.rows], self.path)

    def write(self, path: str | os.PathLike) -> Path:
        """Write these rows to ``path`` (see :func:`write_prompt_set`)."""
        return write_prompt_set(path, self.rows)


def load_prompt_set(path: str | os.PathLike) -> PromptSet:
    """Read and validate a prompt-set JSONL file.

    Blank lines are skipped. Every bad row — invalid JSON, a missing or mistyped field, an unknown key,
    an empty rubric, a weight ≤ 0, a duplicate id — is reported at once in one :class:`PromptSetError`
    (``file:line: what is wrong`` per problem). A missing or empty file is a :class:`LensforgeError`.
    """
    p = Path(path)
    if not p.is_file():
        raise LensforgeError(f"prompt set {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LensforgeError(f"prompt set {p}: not UTF-8 text ({e})") from None
    problems: list[str] = []
    bad_lines: set[int] = set()
    rows: list[PromptRow] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(f"{where}: not valid JSON ({e})")
            bad_lines.add(lineno)
            continue
        probs = row_problems(obj)
        if isinstance(obj, dict) and _nonempty_str(obj.get("id")):
            rid = obj["id"]
            if rid in first_line:
                probs.append(f"duplicate id {rid!r} (first on line {first_line[rid]})")
            else:
                first_line[rid] = lineno
        if probs:
            problems += [f"{where}: {m}" for m in probs]
            bad_lines.add(lineno)
            continue
        rows.append(row_from_dict(obj))
    if problems:
        raise PromptSetError(p, problems, len(bad_lines))
    if not rows:
        raise LensforgeError(f"prompt set {p}: no rows (the file is empty)")
    return PromptSet(rows, p)


def write_prompt_set(path: str | os.PathLike, rows: Iterable[PromptRow | dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically (a temporary file, then ``os.replace``); returns ``path``.

    Rows are checked first (dicts by :func:`row_problems`, ids unique), so what is written always
    loads back; a bad row raises :class:`LensforgeError` naming it and nothing is written.
    """
    p = Path(path)
    lines, seen, problems = [], set(), []
    for i, r in enumerate(rows):
        d = r.to_dict() if isinstance(r, PromptRow) else r
        probs = row_problems(d)
        rid = d.get("id") if isinstance(d, dict) else None
        if isinstance(rid, str):
            if rid in seen:
                probs.append(f"duplicate id {rid!r}")
            seen.add(rid)
        if probs:
            problems += [f"row {i}: {m}" for m in probs]
            continue
        lines.append(json.dumps(d, ensure_ascii=False))
    if problems:
        raise LensforgeError(f"not writing prompt set {p}: " + "; ".join(problems[:MAX_LISTED_PROBLEMS]))
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


__all__ = ["GLOBAL_STRUCTURAL_ITEM", "ITEM_KEYS", "PromptRow", "PromptSet", "PromptSetError", "ROW_KEYS",
           "RubricItem", "held_out_score", "load_prompt_set", "row_from_dict", "row_problems", "row_size",
           "write_prompt_set"]
