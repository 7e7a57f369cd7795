"""Shared helpers of the Hugging Face based text encoders (path resolution, dtypes, prefix length).

No torch at import: the validation halves (:mod:`.schemas`) use the path and config checks.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lensforge.errors import LensforgeError

#: dtype names the text encoders accept.
DTYPE_NAMES = ("float32", "bfloat16", "float16")

PKG_PREFIX = "pkg:"


def resolve_path(path: str) -> str:
    """Resolve ``pkg:<package>/<sub/dir>`` to a folder inside an installed package (without importing it).

    Any other string is returned unchanged (``~`` expanded). Raises :class:`LensforgeError` when the
    package is not installed.
    """
    if not path.startswith(PKG_PREFIX):
        return os.path.expanduser(path)
    rest = path[len(PKG_PREFIX):].strip("/")
    pkg, _, sub = rest.partition("/")
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LensforgeError(f"'{path}': package '{pkg}' is not installed (pip install {pkg.replace('_', '-')})")
    base = list(spec.submodule_search_locations)[0]
    return os.path.join(base, sub) if sub else base


def check_folder(path: str | None, field: str = "path", need: tuple[str, ...] = ("config.json",)) -> list[tuple[str, str]]:
    """Validate-time checks of a model folder: exists and holds ``need`` files."""
    if path is None:
        return [(field, "a local model folder is required")]
    try:
        p = resolve_path(path)
    except LensforgeError as e:
        return [(field, str(e))]
    if not os.path.isdir(p):
        return [(field, f"folder '{path}' does not exist")]
    missing = [n for n in need if not os.path.isfile(os.path.join(p, n))]
    if missing:
        return [(field, f"folder '{path}' has no {', '.join(missing)}")]
    return []


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable (cheap validate-time reads)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_dtype_and_length(config: Any) -> list[tuple[str, str]]:
    """The ``dtype`` / ``max_length`` checks every text encoder's ``check_config`` shares."""
    out = []
    if config.dtype not in DTYPE_NAMES:
        out.append(("dtype", f"'{config.dtype}' is not float32, bfloat16 or float16"))
    if config.max_length < 1:
        out.append(("max_length", "must be >= 1"))
    return out


def dtype_of(name: str) -> Any:
    """The torch dtype called ``name`` (one of :data:`DTYPE_NAMES`)."""
    import torch

    if name not in DTYPE_NAMES:
        raise LensforgeError(f"dtype '{name}' is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def num_leading_specials(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts *before* the text (e.g. BERT's [CLS], Llama's BOS)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    specials = set(tokenizer.all_special_ids)
    n = 0
    for i in ids:
        if i not in specials:
            break
        n += 1
    return n


def prefix_token_count(tokenizer: Any, prefix_text: str) -> int:
    """Number of tokens the rendered ``prefix_text`` occupies at the start of a full tokenisation.

    Counts the tokenizer's leading special tokens plus the prefix's own tokens. Exact when the
    prefix ends on a special token (as harmony's ``<|message|>`` does) or on a word boundary.
    """
    body = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    return num_leading_specials(tokenizer) + len(body)


def freeze_module(m: Any) -> None:
    m.requires_grad_(False)
    m.eval()
