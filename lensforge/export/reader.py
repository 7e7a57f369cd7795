"""Load a diffusers-format folder back into lensforge: our exports and the official Lens release.

Which plugin builds each component:

* ``model_index.json`` has a ``_lensforge`` entry (our export of a non-official combination):
  the plugin and config recorded there.
* otherwise ``lensforge.json`` (our export of the official trio) records them.
* otherwise the folder must be an official Lens folder (``_class_name: LensPipeline`` with a
  ``LensTransformer2DModel``): ``lens_mmdit`` from ``transformer/config.json``
  (``config_from_official``), ``flux2`` on ``vae/``, ``gpt_oss`` on ``text_encoder/`` +
  ``tokenizer/`` — named through the registry, never imported directly.

Folder-backed plugins (a ``path`` config field) are pointed at the component's subfolder
(``tokenizer_path`` at ``tokenizer/`` when the plugin has one); others are rebuilt from their
recorded config and get the folder's safetensors with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from lensforge.errors import LensforgeError
from lensforge.stages.checkpoint_io import (
    find_checkpoint, is_sharded_checkpoint, read_checkpoint, role_weights, stored_frozen,
)
from lensforge.export.common import (
    FOLDERS,
    LENSFORGE_JSON,
    OFFICIAL_PLUGINS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    read_json,
)

log = logging.getLogger("lensforge.export")

OFFICIAL_TRANSFORMER_CLASS = "LensTransformer2DModel"


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (has ``model_index.json``)."""
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def load_safetensors_folder(folder: str | Path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict stored in a diffusers component folder (single file or index + shards)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise LensforgeError(f"'{folder}' is missing shard '{shard}' listed in {WEIGHTS_INDEX_NAME}")
            out.update(load_file(str(folder / shard), device=str(device)))
        missing = set(weight_map) - set(out)
        if missing:
            raise LensforgeError(f"'{folder}': {len(missing)} tensor(s) of the index are in no shard, e.g. {min(missing)}")
        return out
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return load_file(str(single), device=str(device))
    raise LensforgeError(f"'{folder}' has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")


def _records(root: Path) -> tuple[dict[str, dict[str, Any]], str]:
    index = read_json(root / "model_index.json")
    if isinstance(index.get("_lensforge"), dict):
        return index["_lensforge"], "lensforge export"
    lf = root / LENSFORGE_JSON
    if lf.is_file():
        comps = read_json(lf).get("components")
        if isinstance(comps, dict):
            return comps, "lensforge export (official layout)"
    transformer = index.get("transformer")
    if index.get("_class_name") == "LensPipeline" or (isinstance(transformer, list) and transformer[-1] == OFFICIAL_TRANSFORMER_CLASS):
        recs: dict[str, dict[str, Any]] = {role: {"plugin": name, "config": {}} for role, name in OFFICIAL_PLUGINS.items()}
        # as LensPipeline: the encoder captures the layers the transformer config selects
        tcfg = root / FOLDERS["dit"] / "config.json"
        layers = read_json(tcfg).get("selected_layer_index") if tcfg.is_file() else None
        if isinstance(layers, list) and layers:
            recs["text_encoder"]["config"] = {"layers": [int(i) for i in layers]}
        return recs, "official Lens folder"
    raise LensforgeError(
        f"'{root}' is a {index.get('_class_name', 'diffusers')} folder that lensforge cannot map to plugins "
        "(expected a lensforge export or an official Lens folder)"
    )


def _plugin_config(kind: str, record: dict[str, Any], folder: Path, root: Path, overrides: dict[str, Any]) -> tuple[type, Any, bool]:
    """(plugin class, validated config, whether weights come from the folder through ``path``)."""
    from lensforge import registry
    from lensforge.recipe.plugin_config import build_config

    cls = registry.get(kind, str(record["plugin"]))
    params = dict(record.get("config") or {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    stored = folder / "config.json"
    # a folder written from the plugin's state_dict carries its record; else it is a weights folder
    as_state_dict = stored.is_file() and isinstance(read_json(stored).get("_lensforge"), dict)
    via_path = "path" in fields and not as_state_dict
    if not via_path and not as_state_dict:
        raise LensforgeError(f"'{folder}' is a model folder but plugin '{record['plugin']}' has no 'path' to load it from")
    if via_path:
        params["path"] = str(folder)
        if "tokenizer_path" in fields and (root / "tokenizer").is_dir():
            params["tokenizer_path"] = str(root / "tokenizer")
    params.update(overrides)
    return cls, build_config(cls, params, file=str(folder)), via_path


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
        raise LensforgeError(f"weights in '{where}' do not match the model: " + ", ".join(parts))


def _load_dit(root: Path, record: dict[str, Any], overrides: dict[str, Any], device: Any) -> torch.nn.Module:
    from lensforge import registry
    from lensforge.recipe.plugin_config import build_config

    folder = root / FOLDERS["dit"]
    cfg_json = read_json(folder / "config.json")
    cls = registry.get("dit", str(record["plugin"]))
    if record.get("config"):
        params = dict(record["config"])
        params.update(overrides)
        config = build_config(cls, params, file=str(folder / "config.json"))
    elif callable(getattr(cls, "config_from_official", None)):
        config = cls.config_from_official(cfg_json, **overrides)
    else:
        raise LensforgeError(f"'{folder}/config.json' names no lensforge plugin config and {record['plugin']} cannot read it")
    model = cls(config)
    state = load_safetensors_folder(folder, device="cpu")
    _load_strict(model, state, folder)
    if callable(getattr(model, "official_config", None)) and cfg_json.get("_class_name") == OFFICIAL_TRANSFORMER_CLASS:
        mine = {k: v for k, v in model.official_config().items() if not k.startswith("_")}
        theirs = {k: v for k, v in cfg_json.items() if not k.startswith("_") and k in mine}
        if theirs != {k: mine[k] for k in theirs}:
            raise LensforgeError(f"'{folder}/config.json' does not describe the model rebuilt from it: {theirs} vs {mine}")
    return model.to(device)


def _load_frozen(role: str, root: Path, record: dict[str, Any], overrides: dict[str, Any], device: Any) -> torch.nn.Module:
    folder = root / FOLDERS[role]
    if not folder.is_dir():
        raise LensforgeError(f"'{root}' has no {FOLDERS[role]}/ folder")
    cls, config, via_path = _plugin_config(role, record, folder, root, overrides)
    model = cls(config)
    if not via_path:
        _load_strict(model, load_safetensors_folder(folder), folder)
    return model.to(device)


def load_folder(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """``(dit, vae, text_encoder)`` from a lensforge export or an official Lens folder.

    ``overrides`` sets plugin config fields per role, e.g. ``{"dit": {"attention": "xformers"}}``.
    The VAE and text encoder come back frozen, the DiT in eval mode.
    """
    root = Path(path)
    if not is_export_folder(root):
        raise LensforgeError(f"'{root}' is not a diffusers-format folder (no model_index.json)")
    records, what = _records(root)
    overrides = overrides or {}
    log.info("loading %s (%s): %s", root, what, {r: rec["plugin"] for r, rec in records.items()})
    for role in ("dit", "vae", "text_encoder"):
        if role not in records:
            raise LensforgeError(f"'{root}' does not record a {role} component")
    dit = _load_dit(root, records["dit"], overrides.get("dit", {}), device)
    vae = _load_frozen("vae", root, records["vae"], overrides.get("vae", {}), device)
    te = _load_frozen("text_encoder", root, records["text_encoder"], overrides.get("text_encoder", {}), device)
    for m in (vae, te):
        if callable(getattr(m, "freeze", None)):
            m.freeze()
    dit.eval()
    return dit, vae, te


def latest_checkpoint_in(run_dir: Path) -> bool:
    """Whether ``run_dir`` (a run folder or a checkpoints folder) holds a checkpoint."""
    from lensforge.stages.checkpoint_io import latest_checkpoint

    return latest_checkpoint(run_dir / "checkpoints") is not None or latest_checkpoint(run_dir) is not None


def init_from_path(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Weights to initialise a stage from: ``{"dit": state_dict, …}`` (CPU tensors).

    Accepts

    * a lensforge checkpoint (``.ckpt``, a sharded folder, or a run folder — its newest checkpoint),
      read safely (:mod:`lensforge.stages.checkpoint_io`): the EMA DiT weights when the checkpoint has them, else the
      trained ones, read from its state dict without building anything (plus the frozen
      VAE/text-encoder weights when the checkpoint stored them);
    * an exported folder or an official Lens folder: ``transformer/`` read directly from its
      safetensors (for ``lens_mmdit`` the official key layout, loaded with ``strict=True``, no
      remapping), plus ``vae``/``text_encoder`` when they were stored as plugin state dicts.
      Folder-backed frozen encoders (FLUX.2, GPT-OSS, HF folders) are not returned: the recipe's
      own ``path`` decides where they load from.
    """
    p = Path(path)
    if not p.exists():
        raise LensforgeError(f"init_from: '{p}' does not exist")
    if p.is_file() or is_sharded_checkpoint(p) or (p.is_dir() and not is_export_folder(p) and latest_checkpoint_in(p)):
        # a checkpoint (file, sharded folder, or a run folder's newest): read the state dict only, build nothing
        ckpt_path = find_checkpoint(p)
        ckpt = read_checkpoint(ckpt_path, "cpu")
        dit, used_ema = role_weights(ckpt, "dit", ema=True)
        if not dit:
            raise LensforgeError(f"init_from: checkpoint '{ckpt_path}' holds no DiT weights")
        out: dict[str, dict[str, torch.Tensor]] = {"dit": dit, **stored_frozen(ckpt)}
        log.info("init_from %s: checkpoint %s weights (%d DiT tensors)", ckpt_path, "EMA" if used_ema else "trained", len(dit))
        return out
    if not is_export_folder(p):
        raise LensforgeError(f"init_from: '{p}' is neither a checkpoint file nor a diffusers folder (no model_index.json)")
    out = {"dit": load_safetensors_folder(p / FOLDERS["dit"])}
    for role in ("vae", "text_encoder"):
        cfg = p / FOLDERS[role] / "config.json"
        if cfg.is_file() and isinstance(read_json(cfg).get("_lensforge"), dict):
            out[role] = load_safetensors_folder(p / FOLDERS[role])
    log.info("init_from %s: %s", p, {k: len(v) for k, v in out.items()})
    return out
