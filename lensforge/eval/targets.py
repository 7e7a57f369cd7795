"""What ``lensforge eval`` scores: a run folder, a checkpoint, or an exported / official Lens folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.eval")


@dataclass
class Target:
    """A model to evaluate."""

    label: str
    """Short unique name used in tables and file names."""
    source: Path
    """The checkpoint or folder the weights came from."""
    dit: Any
    vae: Any
    text_encoder: Any
    recipe: Any = None
    """The training recipe's config (None for an exported folder: no training world is known)."""
    step: int | None = None
    """The checkpoint's optimizer step (None for folders)."""
    run_dir: Path | None = None
    """The training run's folder (its MLflow run receives the evaluation), when known."""
    sampling: Any = None
    """How the model samples by default: its recipe's ``sampling`` (a run, a checkpoint) or an exported folder's
    recorded ``inference`` settings (a Turbo: 4 steps, CFG 1). None when nothing is recorded."""

    def defaults(self) -> tuple[int, float]:
        """``(steps, guidance_scale)`` this model samples with by default (20 and 4.0 when nothing is recorded)."""
        steps = getattr(self.sampling, "steps", None) or 20
        cfg = getattr(self.sampling, "guidance_scale", None)
        return int(steps), float(4.0 if cfg is None else cfg)


def _label(spec: str, path: Path) -> str:
    p = Path(spec.rstrip("/"))
    if p.is_dir() or not p.suffix:
        return p.name or str(p)
    return f"{path.parent.parent.name}@{path.stem}" if path.parent.name == "checkpoints" else p.stem


def load_target(spec: str, *, ema: bool = True, device: str | None = None, dtype: str | None = None) -> Target:
    """Load the models of ``spec`` (anything ``lensforge sample`` accepts)."""
    from lensforge.commands._models import load_models

    dit, vae, te, recipe_cfg, src = load_models(spec, ema=ema)
    src = Path(src)
    run_dir = None
    step = None
    if src.is_file() or (src.is_dir() and (src / ".metadata").exists()):
        run_dir = src.parent.parent if src.parent.name == "checkpoints" else None
        import re

        m = re.match(r"step-(\d+)\.ckpt$", src.name)
        step = int(m.group(1)) if m else None
    recipe = recipe_cfg if hasattr(recipe_cfg, "model") else None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    dit.to(device=dev, dtype=dt).eval()
    vae.to(dev)
    te.to(dev)
    return Target(label=_label(spec, src), source=src, dit=dit, vae=vae, text_encoder=te, recipe=recipe, step=step,
                  run_dir=run_dir, sampling=getattr(recipe_cfg, "sampling", None))


def load_targets(specs: list[str], **kw: Any) -> list[Target]:
    """Load several targets; labels made unique (``run``, ``run#2`` …)."""
    if not specs:
        raise LensforgeError("no TARGET: give a run folder, a checkpoint or an exported folder")
    out: list[Target] = []
    seen: dict[str, int] = {}
    for s in specs:
        t = load_target(s, **kw)
        n = seen.get(t.label, 0)
        seen[t.label] = n + 1
        if n:
            t.label = f"{t.label}#{n + 1}"
        out.append(t)
    return out


def untrained_like(target: Target, seed: int = 0) -> Target:
    """The target's architecture with fresh random weights (the 'untrained model' noise baseline)."""
    cls = type(target.dit)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = cls(target.dit.config)
    p = next(target.dit.parameters())
    dit.to(device=p.device, dtype=p.dtype).eval()
    return Target(label="untrained", source=target.source, dit=dit, vae=target.vae, text_encoder=target.text_encoder,
                  recipe=target.recipe, sampling=target.sampling)


__all__ = ["Target", "load_target", "load_targets", "untrained_like"]
