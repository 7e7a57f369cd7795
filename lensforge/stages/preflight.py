"""Cheap checks that this machine can run a recipe, done before anything heavy is built.

Each check returns human-readable reasons; :func:`preflight_reasons` collects all of them.
Checked: CUDA present when the recipe needs it (GPU accelerator, FSDP2 unless explicitly on CPU,
fp16 precision), enough CUDA devices, local weight folders of the plugins (any
``path``/``*_path`` field of a plugin ``Config`` that names a local folder), and an estimate of
training state per device (DiT weights, gradients, AdamW moments and EMA, sharded by FSDP2: the
memory model of :mod:`lensforge.distributed.memory`, shared with ``lensforge plan``, for every DiT role the
stage holds: a distillation run trains a student and a critic beside a frozen teacher) against the
device's memory — the DiT is built on the ``meta`` device to count its parameters, which
allocates nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from lensforge.distributed.env import planned_world_size
from lensforge.distributed.memory import stage_keeps_ema, training_state_bytes

log = logging.getLogger("lensforge.preflight")


def _needs_cuda(tc: Any) -> str | None:
    if tc.accelerator in ("gpu", "cuda"):
        return f"trainer.accelerator={tc.accelerator}"
    if tc.strategy == "fsdp2" and tc.accelerator != "cpu":
        return "trainer.strategy=fsdp2 (FSDP2 over NCCL; set trainer.accelerator=cpu for a gloo test run)"
    if str(tc.precision) in ("16-mixed", "16-true", "16"):
        return f"trainer.precision={tc.precision}"
    return None


def _path_fields(ref: Any) -> list[tuple[str, str]]:
    out = []
    cfg = getattr(ref, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return out
    for f in dataclasses.fields(cfg):
        if f.name == "path" or f.name.endswith("_path") or f.name.endswith("_dir"):
            v = getattr(cfg, f.name)
            if isinstance(v, str) and v:
                out.append((f.name, v))
    return out


def _looks_local(v: str) -> bool:
    return not (":" in v.split("/")[0] and not os.path.isabs(v)) and not v.startswith(("pkg:", "hf:", "http"))


def dit_param_count(recipe: Any) -> int | None:
    """Parameters of the recipe's DiT, counted on the meta device (no memory used)."""
    try:
        with torch.device("meta"):
            dit = recipe.config.model.dit.build()
        return sum(p.numel() for p in dit.parameters())
    except Exception as e:  # counting is best effort; the real build reports real errors
        log.debug("preflight: could not count DiT parameters on meta: %s", e)
        return None


def _device_memory(cuda: bool) -> int | None:
    if cuda:
        try:
            return int(torch.cuda.get_device_properties(0).total_memory)
        except Exception:
            return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def role_state_bytes(recipe: Any, n_params: int, shards: int) -> tuple[int, int]:
    """``(bytes per device, DiT copies)`` of every DiT role the stage holds: trained roles with gradients, AdamW
    and (when EMA'd) an EMA copy; frozen roles (an RL reference, a distillation teacher) with their weights only."""
    cfg = recipe.config
    tc = cfg.trainer
    stage_cfg = getattr(cfg.stage, "config", None)
    keeps_ema = stage_keeps_ema(stage_cfg)
    active = getattr(cfg.stage.cls, "active_roles", None)
    roles = active(stage_cfg) if callable(active) else {"dit": None}
    total = 0
    for spec in roles.values():
        if spec is None or spec.trained:
            ema = keeps_ema and (spec is None or spec.ema)
            total += sum(training_state_bytes(n_params, precision=str(tc.precision), shard=shards, ema=ema).values())
        else:
            total += training_state_bytes(n_params, precision=str(tc.precision), shard=shards, ema=False)["weights"]
    return total, len(roles)


def preflight_reasons(recipe: Any) -> list[str]:
    """Every reason this machine cannot run ``recipe`` (empty list = go)."""
    cfg = recipe.config
    tc = cfg.trainer
    reasons: list[str] = []
    has_cuda = torch.cuda.is_available()
    need = _needs_cuda(tc)
    if need and not has_cuda:
        reasons.append(f"{need} needs a CUDA GPU, but this machine has none (torch.cuda.is_available() is False)")
    if has_cuda and tc.accelerator in ("gpu", "cuda", "auto") and isinstance(tc.devices, int):
        n = torch.cuda.device_count()
        if tc.devices > n and (need or tc.accelerator != "auto"):
            reasons.append(f"trainer.devices={tc.devices} but this machine has {n} CUDA device(s)")
    for slot in ("vae", "text_encoder", "dit"):
        ref = getattr(cfg.model, slot)
        for field, v in _path_fields(ref):
            if _looks_local(v) and not Path(v).expanduser().exists():
                reasons.append(f"model.{slot}.{field}: weights folder '{v}' does not exist on this machine")
    if cfg.init_from and _looks_local(cfg.init_from) and not Path(cfg.init_from).expanduser().exists():
        reasons.append(f"init_from: '{cfg.init_from}' does not exist")
    if cfg.data.cache_dir and not Path(cfg.data.cache_dir).exists():
        reasons.append(f"data.cache_dir: '{cfg.data.cache_dir}' does not exist (run `lensforge cache` first)")
    if not reasons:
        n_params = dit_param_count(recipe)
        cuda_run = bool(need) or (has_cuda and tc.accelerator in ("auto", "gpu", "cuda"))
        mem = _device_memory(cuda_run)
        if n_params and mem:
            world = planned_world_size(tc, auto_counts_cuda=False)[0]
            shards = max(1, world) if tc.strategy == "fsdp2" and world else 1
            est, copies = role_state_bytes(recipe, n_params, shards)
            where = "GPU" if cuda_run else "RAM"
            log.info("preflight: DiT %.3gM params × %d role(s), ~%.2f GiB of training state per device (%s has %.1f GiB)",
                     n_params / 1e6, copies, est / 2**30, where, mem / 2**30)
            if est > 0.9 * mem:
                several = f", {copies} copies: the stage's DiT roles" if copies > 1 else ""
                reasons.append(
                    f"the DiT ({n_params / 1e9:.2f}B params{several}) "
                    f"needs about {est / 2**30:.0f} GiB per device for weights, "
                    f"gradients, AdamW and EMA (sharded over {shards}), but the {where} has {mem / 2**30:.0f} GiB"
                )
    return reasons


__all__ = ["dit_param_count", "preflight_reasons", "role_state_bytes"]
