"""Shared pieces of the diffusers-format writer and reader.

Folder layout (diffusers pipeline folder)::

    model_index.json            component name -> [library, class]  (+ "_lensforge" when not the official trio)
    lensforge.json              lensforge's own record: plugin name + config of every component, recipe
    README.md                   model card
    scheduler/scheduler_config.json
    transformer/config.json     (lens_mmdit: the official LensTransformer2DModel schema)
    transformer/diffusion_pytorch_model.safetensors  (or -0000i-of-0000n shards + .index.json)
    vae/ text_encoder/ tokenizer/

The official Lens release (LENS_SPEC §7) is the combination ``lens_mmdit`` + ``flux2`` +
``gpt_oss``; for it ``model_index.json`` lists exactly the official components.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

#: model_index.json of microsoft/Lens (LENS_SPEC §7).
OFFICIAL_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "LensPipeline",
    "_diffusers_version": "0.37.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "LensGptOssEncoder"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "transformer": ["diffusers", "LensTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}

#: registry names of the plugins that read/write the official Lens components.
OFFICIAL_PLUGINS: dict[str, str] = {"dit": "lens_mmdit", "vae": "flux2", "text_encoder": "gpt_oss"}

#: lensforge role -> diffusers folder name
FOLDERS: dict[str, str] = {"dit": "transformer", "vae": "vae", "text_encoder": "text_encoder"}

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
LENSFORGE_JSON = "lensforge.json"


def plugin_record(model: Any) -> dict[str, Any]:
    """``{"plugin": registry name, "config": plain config}`` of a built plugin instance."""
    from lensforge.recipe.plugin_config import config_to_dict

    cls = type(model)
    name = getattr(cls, "plugin_name", None) or f"{cls.__module__}:{cls.__qualname__}"
    cfg = getattr(model, "config", None)
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else {}
    return {"plugin": name, "config": data}


def read_json(path: Path) -> dict[str, Any]:
    from lensforge.errors import LensforgeError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise LensforgeError(f"'{path}' is missing") from e
    except json.JSONDecodeError as e:
        raise LensforgeError(f"'{path}' is not valid JSON: {e}") from e


def write_json(path: Path, data: dict[str, Any]) -> None:
    from lensforge.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def resolve_plugin_path(path: str) -> Path | None:
    """A plugin ``path`` as a real folder; ``pkg:package/sub/dir`` is resolved inside an installed package."""
    if path.startswith("pkg:"):
        import importlib.util

        pkg, _, rest = path[4:].partition("/")
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / rest
    return Path(path).expanduser()


def plugin_path(model_or_ref: Any) -> str | None:
    """The weights folder a plugin's config names (field ``path``), if any."""
    cfg = getattr(model_or_ref, "config", None)
    path = getattr(cfg, "path", None)
    return str(path) if isinstance(path, (str, Path)) and str(path) else None
