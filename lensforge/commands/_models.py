"""Shared by ``sample`` and ``export``: load ``(dit, vae, text_encoder)`` from a checkpoint,
a run folder or an exported / official Lens folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.commands")


def load_models(source: str, *, ema: bool = True, overrides: dict[str, dict[str, Any]] | None = None):
    """``(dit, vae, text_encoder, recipe_config or None, resolved source path)``.

    ``source`` is a ``.ckpt`` file, a run folder (its newest checkpoint), or a diffusers folder
    (lensforge export or official Lens folder).
    """
    from lensforge.export import is_export_folder, load_folder

    p = Path(source)
    if not p.exists():
        raise LensforgeError(f"'{source}' does not exist (expected a .ckpt, a run folder or an exported folder)")
    if p.is_dir() and is_export_folder(p):
        dit, vae, te = load_folder(p, overrides=overrides)
        recipe_cfg = _recipe_of_folder(p)
        log.info("loaded exported folder %s", p)
        return dit, vae, te, recipe_cfg, p
    from lensforge.stages.checkpoint_io import find_checkpoint, load_models_from_checkpoint

    try:
        p = find_checkpoint(p)
    except LensforgeError:
        if p.is_dir():
            raise LensforgeError(f"'{source}' holds no model_index.json and no checkpoints/step-*.ckpt") from None
        raise
    dit, vae, te, recipe_cfg = load_models_from_checkpoint(p, ema=ema, map_location="cpu")
    if overrides and overrides.get("dit"):
        log.info("overrides for checkpoint models are not applied: %s", overrides)
    log.info("loaded checkpoint %s (%s weights)", p, "EMA" if ema else "trained")
    return dit, vae, te, recipe_cfg, p


def _recipe_of_folder(p: Path):
    """The SamplingConfig-bearing recipe recorded in ``lensforge.json`` (None if absent/invalid); its steps and
    guidance are the folder's ``inference`` defaults when recorded (a distilled Turbo: 4 steps, CFG 1)."""
    import dataclasses
    import json

    lf = p / "lensforge.json"
    if not lf.is_file():
        return None
    try:
        record = json.loads(lf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = record.get("recipe") if isinstance(record, dict) else None
    inference = record.get("inference") if isinstance(record, dict) else None
    if not isinstance(data, dict) and not isinstance(inference, dict):
        return None
    data = data if isinstance(data, dict) else {}
    from lensforge.recipe.plugin_config import validate_dataclass
    from lensforge.recipe.schema import SamplingConfig

    problems: list = []
    sampling = validate_dataclass(SamplingConfig, data.get("sampling") or {}, "sampling", problems, origin=lambda k: None)
    if problems or sampling is None:
        return None
    if isinstance(inference, dict):
        keep = {k: inference[k] for k in ("steps", "guidance_scale") if isinstance(inference.get(k), (int, float))}
        sampling = dataclasses.replace(sampling, **keep)

    class _Recorded:
        """Just what ``sample`` reads from a recorded recipe."""

    rec = _Recorded()
    rec.sampling = sampling  # type: ignore[attr-defined]
    rec.name = data.get("name", "run")  # type: ignore[attr-defined]
    return rec
