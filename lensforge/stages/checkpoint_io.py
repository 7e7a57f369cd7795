"""Reading lensforge checkpoints — the one module stages, ``export`` and the commands use.

Layout of a run's checkpoint folder (default ``<output_dir>/checkpoints``)::

    step-0000100.ckpt      a complete checkpoint (a file, or a folder for sharded FSDP2 runs)
    step-0000200.ckpt
    latest                 text file: the name of the newest complete checkpoint

Only names matching ``step-*.ckpt`` count (a crash mid-write leaves ``.step-*.ckpt.tmp``, never a
real name; see :mod:`lensforge.stages.checkpointing`). A checkpoint is Lightning's training
state plus what the stage adds: ``state_dict`` with one prefix per saved role (``dit.``,
``ema_dit.``, ``critic.`` …, and ``vae.``/``text_encoder.`` when small), ``hyper_parameters``
(``recipe``: the resolved recipe as plain data, ``stage``: the stage Config) and ``lensforge``
(RNG states, loader positions, metadata) — plain types and tensors only.

**Safe by default.** Checkpoints are read with ``torch.load(weights_only=True)``: tensors and
plain containers, plus the few classes allow-listed in :data:`SAFE_GLOBALS`. A file whose pickle
names anything else (a class, a function such as ``os.system``) is refused with
:class:`UnsafeCheckpointError` before any of it runs, so ``lensforge sample``, ``export`` and
``init_from`` can be given a checkpoint from someone else.

No Lightning import here: ``sample``/``export`` stay light.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

from lensforge.errors import LensforgeError, RecipeError

log = logging.getLogger("lensforge.checkpoint")

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
LATEST = "latest"


class UnsafeCheckpointError(LensforgeError):
    """A checkpoint's pickle references code or classes outside the allow-list; it was not run."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.ckpt"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``ckpt_dir`` as ``(step, path)``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and (p.is_file() or p.is_dir()):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (by step number; the ``latest`` pointer is a convenience)."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(resume: str, ckpt_dir: str | os.PathLike) -> Path | None:
    """``auto`` → newest checkpoint in ``ckpt_dir`` (None if none); ``never`` → None; else the path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_dir)
    p = Path(resume)
    if p.name == LATEST and p.is_file():
        p = p.parent / p.read_text().strip()
    if not p.exists():
        raise LensforgeError(f"resume: checkpoint '{resume}' does not exist")
    return p


def is_sharded_checkpoint(path: Path) -> bool:
    """A distributed-checkpoint folder written by FSDP2 runs."""
    return path.is_dir() and (path / ".metadata").exists()


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint ``path`` names: a ``.ckpt`` file or sharded folder, a ``latest`` pointer, a
    checkpoints folder or a run folder (its newest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise LensforgeError(f"'{path}' does not exist (expected a checkpoint, a checkpoints folder or a run folder)")
    if p.is_dir() and not is_sharded_checkpoint(p):
        for d in (p / "checkpoints", p):
            found = latest_checkpoint(d)
            if found is not None:
                return found
        raise LensforgeError(f"no checkpoints (step-*.ckpt) in '{p}' or '{p / 'checkpoints'}'")
    resolved = resolve_resume(str(p), p.parent)
    assert resolved is not None
    return resolved


# ------------------------------------------------------------------------------------ safe reading


def safe_globals() -> list[Any]:
    """Classes a checkpoint may reference besides tensors and plain containers.

    Lightning's ``AttributeDict`` (what ``save_hyperparameters`` stores) and ``OrderedDict``;
    everything lensforge itself stores is plain data.
    """
    import collections

    allowed: list[Any] = [collections.OrderedDict]
    try:
        from lightning.fabric.utilities.data import AttributeDict

        allowed.append(AttributeDict)
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    return allowed


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with :func:`safe_globals`; refuses anything else, naming the file."""
    import torch

    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()
        why = next((ln.strip() for ln in detail if "GLOBAL" in ln or "Unsupported" in ln), detail[0] if detail else "")
        raise UnsafeCheckpointError(
            f"refusing to load '{path}': its pickle references code or classes that are not tensors or plain "
            f"data ({why[:200]}); lensforge never runs a checkpoint's pickle. Re-save it as plain tensors "
            "(or as safetensors) if you trust where it came from"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise LensforgeError(f"'{path}' is not a readable checkpoint: {str(e).splitlines()[0][:200]}") from e


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file or sharded folder as one dict, read safely (see the module docstring)."""
    p = Path(path)
    if is_sharded_checkpoint(p):
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as td:
            out = Path(td) / "full.ckpt"
            dcp_to_torch_save(str(p), str(out))
            ckpt = safe_torch_load(out, map_location)
        meta = p / "meta.pt"
        if meta.exists():
            ckpt.update({k: v for k, v in safe_torch_load(meta, map_location).items() if k not in ckpt})
    else:
        ckpt = safe_torch_load(p, map_location)
    if not isinstance(ckpt, dict):
        raise LensforgeError(f"'{p}' is not a lensforge checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


# ------------------------------------------------------------------------------------ contents


def prefixed(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state_dict`` under ``prefix`` (a role name + "."), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def role_weights(ckpt: dict[str, Any], role: str = "dit", *, ema: bool = True) -> tuple[dict[str, Any], bool]:
    """``(state_dict, is_ema)`` of a DiT role: its EMA copy (``ema_<role>.``) when ``ema`` and stored,
    else the trained weights (``<role>.``). Empty when the role is not in the checkpoint."""
    sd = ckpt.get("state_dict") or {}
    if ema:
        found = prefixed(sd, f"ema_{role}.")
        if found:
            return found, True
    return prefixed(sd, f"{role}."), False


def stored_frozen(ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The frozen VAE / text-encoder weights a checkpoint stored (small models only)."""
    sd = ckpt.get("state_dict") or {}
    return {role: part for role in ("vae", "text_encoder") if (part := prefixed(sd, f"{role}."))}


def recipe_from_dict(data: dict[str, Any], *, source: str = "<stored recipe>") -> Any:
    """Validate a resolved recipe dict (as stored in checkpoints) back into a :class:`Recipe`.

    Problems are reported against ``source`` (e.g. the run's own ``recipe.yaml``), never against the
    temporary file the dict is read through.
    """
    import yaml

    from lensforge.errors import Problem
    from lensforge.recipe import load_recipe

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / "recipe.yaml"
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            recipe = load_recipe(tmp)
        except RecipeError as e:
            fixed = [Problem(p.key, p.message, source if p.file in (None, str(tmp)) else p.file) for p in e.problems]
            raise RecipeError(fixed) from None
    recipe.path = source
    recipe.files = [source]
    recipe._origin = lambda key: source
    return recipe


def recipe_source_label(ckpt_path: Path, data: dict[str, Any]) -> str:
    """How to name a checkpoint's stored recipe in messages: the run's ``recipe.yaml`` when it exists."""
    candidates = []
    out = data.get("output_dir") if isinstance(data, dict) else None
    if isinstance(out, str):
        candidates.append(Path(out) / "recipe.yaml")
    candidates += [ckpt_path.parent.parent / "recipe.yaml", ckpt_path.parent / "recipe.yaml"]
    for c in candidates:
        if c.is_file():
            return str(c)
    return f"{ckpt_path} (stored recipe)"


def stored_recipe(ckpt: dict[str, Any], path: Path) -> Any:
    """The validated recipe a checkpoint was trained with."""
    hp = ckpt.get("hyper_parameters") or {}
    data = hp.get("recipe")
    if not isinstance(data, dict):
        raise LensforgeError(f"{path} is not a lensforge checkpoint (no hyper_parameters.recipe)")
    return recipe_from_dict(data, source=recipe_source_label(path, data))


def load_models_from_checkpoint(path: str | os.PathLike, *, ema: bool = True, map_location: Any = "cpu",
                                role: str = "dit") -> tuple[Any, Any, Any, Any]:
    """Rebuild ``(dit, vae, text_encoder, recipe_config)`` from a lensforge checkpoint.

    ``path`` is anything :func:`find_checkpoint` accepts. The DiT is the recipe's ``model.dit``
    plugin with the weights of ``role`` (its EMA copy when ``ema`` and stored). The frozen VAE/text
    encoder are built from the recipe (their own pretrained weights) and then get the checkpoint's
    copy when it stored one.
    """
    p = find_checkpoint(path)
    ckpt = read_checkpoint(p, map_location)
    recipe = stored_recipe(ckpt, p)
    cfg = recipe.config
    dit_sd, used_ema = role_weights(ckpt, role, ema=ema)
    if not dit_sd:
        raise LensforgeError(f"{p} has no weights for the '{role}' role")
    dit = cfg.model.dit.build()
    dit.load_state_dict(dit_sd, strict=True)
    vae = cfg.model.vae.build()
    te = cfg.model.text_encoder.build()
    frozen = stored_frozen(ckpt)
    for m, name in ((vae, "vae"), (te, "text_encoder")):
        if name in frozen:
            m.load_state_dict(frozen[name], strict=True)
        m.requires_grad_(False)
        m.eval()
    dit.eval()
    log.info("loaded %s %s weights from %s (step %s)", "EMA" if used_ema else "raw", role, p, ckpt.get("global_step"))
    return dit, vae, te, cfg


__all__ = [
    "LATEST", "UnsafeCheckpointError", "checkpoint_name", "find_checkpoint", "is_sharded_checkpoint",
    "latest_checkpoint", "list_checkpoints", "load_models_from_checkpoint", "prefixed", "read_checkpoint",
    "recipe_from_dict", "resolve_resume", "role_weights", "safe_torch_load", "stored_frozen", "stored_recipe",
]
