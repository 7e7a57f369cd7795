"""Evaluation suites: which prompts, at which sizes and seeds, scored how.

Built-in suites (on the synthetic world; the world is the first target's training world when it
was one, else the default world):

``validation``
    the held-out prompts of the target's training world (the prompts validation sampling draws,
    from a namespace training never uses), at the recipe's sampling size, scored attribute by
    attribute by the verifier. Needs a target with a training recipe.
``geneval_synth``
    GenEval's six categories (single object, two objects, counting, colours, position, colour
    attribution) with GenEval's scoring rule — an image is correct only if every check passes —
    plus the per-check-kind verifier means.
``ar_sweep``
    held-out prompts of the world rendered at aspect ratios 1:2 … 2:1 and resolutions below, at and
    above the training base (×0.5, ×1, ×1.5, ×2), including sizes no training batch held — Lens's
    generalisation claim — as a ratio × resolution table and heatmap.

Any other value is a prompt-set JSONL file (:mod:`lensforge.data.prompt_sets`), scored with the
chosen reward plugin; rows without a size use the default size, rows with only an ``aspect_ratio`` that
ratio at the default size's area.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensforge.data.prompt_sets import row_size
from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.eval")

SUITES = ("validation", "geneval_synth", "ar_sweep")
#: Lens's nine aspect ratios (W:H), narrow to wide.
AR_SWEEP_RATIOS = ("1:2", "9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "2:1")
#: Resolutions of the sweep as multiples of the training base resolution.
AR_SWEEP_SCALES = (0.5, 1.0, 1.5, 2.0)
DEFAULT_PROMPTS = {"validation": 48, "geneval_synth": 96, "ar_sweep": 12}


@dataclass
class EvalItem:
    """One image to generate and score."""

    row: dict[str, Any]
    """The prompt-set row (id, prompt, category, rubric and/or scene …)."""
    size: tuple[int, int]
    """``(H, W)`` in pixels."""
    seed: int
    """Seed of the image's initial noise."""
    cell: tuple[int, int] | None = None
    """Aspect-ratio sweep: the ``(H, W)`` size cell of the item."""

    @property
    def key(self) -> str:
        cell = f"@{self.cell[0]}x{self.cell[1]}" if self.cell else ""
        return f"{self.row['id']}{cell}/s{self.seed}"


@dataclass
class Suite:
    """Items plus what the summary should compute."""

    name: str
    items: list[EvalItem]
    kind: str
    """``validation`` | ``geneval`` | ``ar_sweep`` | ``prompt_set``."""
    trained_sizes: set[tuple[int, int]] = field(default_factory=set)
    """AR sweep: the ``(H, W)`` sizes training batches held."""
    grid: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """AR sweep: ``(ratio, base)`` → the size generated for it."""
    ratios: tuple[str, ...] = ()
    bases: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)


def _world_of(recipe: Any) -> tuple[Any, str]:
    """The synthetic world config of a training recipe (or the default world) and a description."""
    from lensforge.data.sources.synthetic import SyntheticWorld

    src = getattr(getattr(recipe, "data", None), "source", None) if recipe is not None else None
    if src is not None and src.name == "synthetic":
        return src.config, "the training world of the first target"
    return SyntheticWorld.Config(), "the default synthetic world (no training world known)"


def _recipe_size(recipe: Any, default: tuple[int, int]) -> tuple[int, int]:
    sc = getattr(recipe, "sampling", None)
    return (int(sc.height), int(sc.width)) if sc is not None else default


def _scene_rows(recipe: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """Held-out prompts of the world as rows (``scene`` + the caption the training data uses)."""
    from lensforge.data.sources.synthetic import SyntheticWorld

    world, _ = _world_of(recipe)
    field_ = "dense"
    if recipe is not None and recipe.data.captions.field in ("dense", "short"):
        field_ = recipe.data.captions.field
    rows = []
    for ep in SyntheticWorld(world).eval_prompts(n, seed, field_):
        rows.append({"id": ep.key, "prompt": ep.prompt, "category": "held-out", "rubric": [], "scene": ep.scene,
                     "short": ep.short})
    return rows


def expand(rows: list[dict[str, Any]], seeds: list[int], size: tuple[int, int], multiple: int = 16) -> list[EvalItem]:
    """One item per row and seed; image seed = seed + row index (validation sampling's convention). A row's
    own size wins; one stating only ``aspect_ratio`` is drawn at that ratio with ``size``'s area."""
    base = int(round(math.sqrt(size[0] * size[1])))
    items = []
    for s in seeds:
        for i, r in enumerate(rows):
            items.append(EvalItem(row=r, size=row_size(r, base, multiple) or size, seed=int(s) + i))
    return items


def build_suite(name: str, recipe: Any, *, num_prompts: int | None = None, seeds: list[int] | None = None,
                size: tuple[int, int] | None = None, multiple: int = 16, prompt_seed: int = 0) -> Suite:
    """The items of suite ``name`` (or a prompt-set file) for targets whose first recipe is ``recipe``."""
    seeds = list(seeds) if seeds else [0]
    if name == "validation":
        if recipe is None:
            raise LensforgeError("suite 'validation' needs a target with a training recipe (a run folder or a "
                                 "checkpoint); for an exported folder choose --suite geneval_synth, ar_sweep or a prompt set")
        n = num_prompts or DEFAULT_PROMPTS[name]
        rows = _scene_rows(recipe, n, prompt_seed)
        if not rows:
            raise LensforgeError("the training world gives no held-out prompts")
        return Suite(name, expand(rows, seeds, size or _recipe_size(recipe, (256, 256)), multiple), "validation",
                     notes=[f"{n} held-out prompts of the training world (seed {prompt_seed})"])
    if name == "geneval_synth":
        from lensforge.data.synthetic_prompts import geneval_rows

        world, what = _world_of(recipe)
        n = num_prompts or DEFAULT_PROMPTS[name]
        rows = geneval_rows(n, seed=prompt_seed, world=world)
        return Suite(name, expand(rows, seeds, size or _recipe_size(recipe, (256, 256)), multiple), "geneval",
                     notes=[f"{n} GenEval-style prompts from {what} (seed {prompt_seed})"])
    if name == "ar_sweep":
        from lensforge.data.resolution import ResolutionPolicy, resolve_resolution

        n = num_prompts or DEFAULT_PROMPTS[name]
        rows = _scene_rows(recipe, n, prompt_seed)
        res = getattr(getattr(recipe, "data", None), "resolution", None)
        base = int(max(res.base_resolutions)) if res is not None else int(size[0] if size else 256)
        multiple = int(res.multiple_of) if res is not None else multiple
        table = bool(res.lens_table) if res is not None else True
        bases = tuple(sorted({max(multiple, int(round(base * s / multiple)) * multiple) for s in AR_SWEEP_SCALES}))
        grid = {(r, b): resolve_resolution(b, r, multiple, table) for r in AR_SWEEP_RATIOS for b in bases}
        # the sizes training batches held (the resolution policy's buckets)
        trained = ResolutionPolicy(res).sizes if res is not None else set()
        sizes = sorted(set(grid.values()), key=lambda hw: (hw[1] / hw[0], hw[0] * hw[1]))
        items = [EvalItem(row=r, size=hw, seed=int(s) + i, cell=hw) for s in seeds for hw in sizes for i, r in enumerate(rows)]
        notes = [f"{n} held-out prompts × {len(sizes)} distinct sizes: {len(AR_SWEEP_RATIOS)} aspect ratios × bases "
                 f"{list(bases)} px (training base {base} px; at small bases several ratios round to one size)"]
        if trained:
            notes.append("sizes training batches held (marked *): " + ", ".join(f"{h}x{w}" for h, w in sorted(trained)))
        return Suite(name, items, "ar_sweep", trained_sizes=trained, grid=grid, ratios=AR_SWEEP_RATIOS, bases=bases,
                     notes=notes)
    path = Path(name)
    if path.suffix in (".jsonl", ".json") or path.exists():
        from lensforge.data.prompt_sets import load_prompt_set

        ps = load_prompt_set(path)
        rows = [r.to_dict() for r in ps]
        if num_prompts:
            rows = rows[:num_prompts]
        return Suite(path.stem, expand(rows, seeds, size or _recipe_size(recipe, (256, 256)), multiple), "prompt_set",
                     notes=[f"{len(rows)} prompts of {path} ({len(ps.categories)} categories)"])
    raise LensforgeError(f"unknown suite '{name}': choose {', '.join(SUITES)} or give a prompt-set .jsonl file")


__all__ = ["AR_SWEEP_RATIOS", "EvalItem", "SUITES", "Suite", "build_suite", "expand"]
