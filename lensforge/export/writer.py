"""Write a diffusers-format Hugging Face folder from built lensforge models.

How each component is written (first rule that applies):

transformer (DiT)
    ``config.json`` = ``dit.official_config()`` when the plugin offers it (``lens_mmdit``: the
    official ``LensTransformer2DModel`` schema), else ``{"_class_name": ..., "_lensforge": record}``;
    weights = ``dit.state_dict()`` (for ``lens_mmdit`` exactly the official key layout) as
    ``diffusion_pytorch_model.safetensors``, sharded with an ``.index.json`` above ``max_shard_size``.
vae, text_encoder (frozen)
    1. the plugin's config names an existing weights folder (``path``): the folder is copied as is
       (exact, keeps the original format, e.g. GPT-OSS in MXFP4); when ``path`` is a whole pipeline
       folder (an official Lens snapshot), only its ``vae/`` or ``text_encoder/`` is copied;
    2. the plugin wraps a Hugging Face model (a child with ``save_pretrained``, e.g. diffusers'
       ``AutoencoderKLFlux2``): ``save_pretrained`` into the folder;
    3. otherwise: ``config.json`` with the plugin record + safetensors of its ``state_dict``.
tokenizer
    ``save_pretrained`` of the text encoder's tokenizer (any attribute with ``save_pretrained``
    that is not a module), else the tokenizer files of the copied source folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_path
from lensforge.export.common import (
    FOLDERS,
    LENSFORGE_JSON,
    OFFICIAL_MODEL_INDEX,
    OFFICIAL_PLUGINS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    plugin_path,
    plugin_record,
    resolve_plugin_path,
    write_json,
)

log = logging.getLogger("lensforge.export")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "chat_template.jinja", "tokenizer.model", "added_tokens.json",
)


def save_state_dict(state_dict: dict[str, torch.Tensor], folder: Path, *, max_shard_size: int | str = "5GB",
                    progress: bool = False) -> list[str]:
    """Write ``state_dict`` as diffusers safetensors (sharded + index when larger than ``max_shard_size``)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pattern = WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    if not state_dict:  # a parameter-free model still gets its (empty) weights file
        save_file({}, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern=pattern, max_shard_size=max_shard_size)
    seen: set[tuple[int, int]] = set()
    items = list(split.filename_to_tensors.items())
    it: Any = items
    if progress and len(items) > 1:
        from tqdm import tqdm

        it = tqdm(items, desc=f"writing {folder.name} shards", unit="shard")
    for filename, names in it:
        shard = {}
        for n in names:
            t = state_dict[n].detach().cpu()
            key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
            # safetensors refuses tensors sharing memory: copy the second and later views
            t = t.clone() if key in seen or not t.is_contiguous() else t
            seen.add(key)
            shard[n] = t
        with atomic_path(folder / filename) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
    if split.is_sharded:
        write_json(folder / WEIGHTS_INDEX_NAME, {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
            "weight_map": dict(sorted(split.tensor_to_filename.items())),
        })
    return [f for f, _ in items]


def find_hf_model(module: nn.Module) -> nn.Module | None:
    """The wrapped Hugging Face model of a plugin (a direct child with save/from_pretrained), if any."""
    for _, child in module.named_children():
        if callable(getattr(child, "save_pretrained", None)) and callable(getattr(type(child), "from_pretrained", None)):
            return child
    return None


def find_tokenizer(module: nn.Module) -> Any | None:
    """A tokenizer-like attribute (has ``save_pretrained``, is not a module) of a plugin, if any."""
    for name, val in vars(module).items():
        if name.startswith("_") and name not in ("_tokenizer",):
            continue
        if isinstance(val, (nn.Module, type)):
            continue
        if callable(getattr(val, "save_pretrained", None)) and callable(val):
            return val
    return None


def _copy_folder(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache", "__pycache__", "*.pyc", ".git*"))


def _library_class(obj: Any, default: tuple[str, str]) -> list[str]:
    mod = type(obj).__module__.split(".")[0]
    return [mod if mod in ("diffusers", "transformers") else default[0], type(obj).__name__]


def _write_frozen(role: str, model: nn.Module, out: Path, record: dict[str, Any], *, max_shard_size: int | str) -> tuple[list[str], str]:
    """Write a frozen component; return its model_index entry and how it was written."""
    folder = out / FOLDERS[role]
    src = plugin_path(model)
    hf = find_hf_model(model)
    if src is not None:
        resolved = resolve_plugin_path(src)
        if resolved is not None and (resolved / FOLDERS[role]).is_dir() and (resolved / "model_index.json").is_file():
            resolved = resolved / FOLDERS[role]  # the plugin points at a whole pipeline folder: take its component
        if resolved is not None and resolved.is_dir():
            _copy_folder(resolved, folder)
            entry = _library_class(hf, ("lensforge", type(model).__name__)) if hf is not None else ["lensforge", type(model).__name__]
            return entry, f"copied {resolved}"
    if hf is not None:
        hf.save_pretrained(str(folder), safe_serialization=True)
        return _library_class(hf, ("lensforge", type(model).__name__)), f"save_pretrained of {type(hf).__name__}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", {"_class_name": type(model).__name__, "_lensforge": record})
    save_state_dict(model.state_dict(), folder, max_shard_size=max_shard_size)
    return ["lensforge", type(model).__name__], "plugin state_dict"


def _write_tokenizer(text_encoder: nn.Module, out: Path) -> list[str] | None:
    folder = out / "tokenizer"
    tok = find_tokenizer(text_encoder)
    if tok is not None:
        tok.save_pretrained(str(folder))
        return _library_class(tok, ("transformers", type(tok).__name__))
    src_dir = out / FOLDERS["text_encoder"]
    files = [f for f in TOKENIZER_FILES if (src_dir / f).is_file()]
    if not files:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(src_dir / f, folder / f)
    return ["transformers", "PreTrainedTokenizerFast"]


def inference_defaults(recipe_config: Any) -> dict[str, Any] | None:
    """The sampling defaults of the exported model (``lensforge.json`` → ``inference``): its stage's
    ``inference_defaults`` (a distilled Turbo: 4 steps, CFG 1), None without a recipe."""
    stage = getattr(recipe_config, "stage", None)
    hook = getattr(getattr(stage, "schema", None), "inference_defaults", None)
    return dict(hook(recipe_config)) if callable(hook) else None


def is_official_combination(dit: Any, vae: Any, text_encoder: Any) -> bool:
    """Whether the three plugins are exactly the official Lens trio (lens_mmdit + flux2 + gpt_oss)."""
    names = {role: getattr(type(m), "plugin_name", None) for role, m in (("dit", dit), ("vae", vae), ("text_encoder", text_encoder))}
    return names == OFFICIAL_PLUGINS and callable(getattr(dit, "official_config", None))


def export_folder(
    dit: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    out_dir: str | Path,
    *,
    recipe_config: Any = None,
    max_shard_size: int | str = "5GB",
    progress: bool = False,
    source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``dit``/``vae``/``text_encoder`` as a diffusers-format folder at ``out_dir``.

    ``recipe_config`` (a :class:`~lensforge.recipe.schema.RecipeConfig`) goes into the model card
    and ``lensforge.json``. Pass the EMA DiT to export EMA weights (what ``lensforge export`` does).
    Returns the folder.
    """
    from lensforge import __version__
    from lensforge.export.card import model_card
    from lensforge.sampling.schedule import scheduler_config

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LensforgeError(f"export folder '{out}' exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    records = {role: plugin_record(m) for role, m in (("dit", dit), ("vae", vae), ("text_encoder", text_encoder))}
    official = is_official_combination(dit, vae, text_encoder)
    steps = ["scheduler", "transformer", "vae", "text_encoder", "tokenizer", "model card"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc="export", unit="part")

    def done(what: str) -> None:
        log.info("export: %s", what)
        if bar is not None:
            bar.set_postfix_str(what[:40])
            bar.update(1)

    index: dict[str, Any] = {"_class_name": "LensforgePipeline", "_diffusers_version": OFFICIAL_MODEL_INDEX["_diffusers_version"]}
    write_json(out / "scheduler" / "scheduler_config.json", scheduler_config())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    done("scheduler/scheduler_config.json")

    tdir = out / FOLDERS["dit"]
    official_cfg = getattr(dit, "official_config", None)
    if callable(official_cfg):
        cfg = dict(official_cfg())
        index["transformer"] = ["diffusers", cfg.get("_class_name", "LensTransformer2DModel")]
    else:
        cfg = {"_class_name": type(dit).__name__, "_lensforge": records["dit"]}
        index["transformer"] = ["lensforge", type(dit).__name__]
    write_json(tdir / "config.json", cfg)
    shards = save_state_dict(dit.state_dict(), tdir, max_shard_size=max_shard_size, progress=progress)
    done(f"transformer/ ({len(shards)} file(s))")

    how: dict[str, str] = {}
    for role in ("vae", "text_encoder"):
        model = vae if role == "vae" else text_encoder
        index[role], how[role] = _write_frozen(role, model, out, records[role], max_shard_size=max_shard_size)
        done(f"{FOLDERS[role]}/ ({how[role]})")
    tok = _write_tokenizer(text_encoder, out)
    if tok is not None:
        index["tokenizer"] = tok
    done("tokenizer/" if tok else "tokenizer/ (none: the text encoder has no tokenizer)")

    if official:
        index = {k: OFFICIAL_MODEL_INDEX[k] for k in OFFICIAL_MODEL_INDEX}
    else:
        index["_lensforge"] = records
    write_json(out / "model_index.json", dict(sorted(index.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0]))))
    from lensforge.recipe.plugin_config import config_to_dict

    inference = inference_defaults(recipe_config)
    write_json(out / LENSFORGE_JSON, {
        "lensforge_version": __version__,
        "components": records,
        "official_layout": official,
        "written_as": how,
        "source": source,
        "inference": inference,
        "recipe": config_to_dict(recipe_config) if recipe_config is not None else None,
    })
    (out / "README.md").write_text(
        model_card(records, recipe_config=recipe_config, official=official, source=source,
                   num_params=sum(p.numel() for p in dit.parameters()), inference=inference),
        encoding="utf-8",
    )
    done("README.md")
    if bar is not None:
        bar.close()
    log.info("exported %s (%s layout)", out, "official Lens" if official else "lensforge")
    return out
