"""System-prompt files: the shipped default, reading one, naming one.

A system prompt is a plain UTF-8 text file, used verbatim (surrounding whitespace stripped). The
search's output (``best_system_prompt.txt``) is such a file, so it goes straight back into any
reasoner's ``system_prompt_file``.

The default, ``system_prompts/lens.txt``, states the seven rules of Lens's reasoner system prompt
(``SYSTEM_PROMPT`` in ``lens/reasoner.py`` of the Lens release, summarised in LENS_SPEC §5) in
lensforge's own words; see ``lensforge/reasoners/README.md`` for its provenance and how to use the
release's exact text instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lensforge.errors import LensforgeError

#: Folder of the shipped system prompts.
SYSTEM_PROMPTS_DIR = Path(__file__).resolve().parent / "system_prompts"

#: What Lens's local (GPT-OSS) path appends to the system prompt (LENS_SPEC §5).
PRIVATE_REASONING_SUFFIX = ("Keep any reasoning private. The visible answer must contain only the final "
                            "rewritten prompt.")


def default_system_prompt_path() -> Path:
    """The shipped default system prompt (Lens's seven rules)."""
    return SYSTEM_PROMPTS_DIR / "lens.txt"


def load_system_prompt(path: str | Path | None = None) -> str:
    """The text of a system-prompt file (None = the shipped default), surrounding whitespace stripped.

    A missing, unreadable or empty file is a :class:`LensforgeError` naming it.
    """
    p = Path(path).expanduser() if path is not None else default_system_prompt_path()
    if not p.is_file():
        raise LensforgeError(f"system prompt file '{p}' does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LensforgeError(f"system prompt file '{p}' cannot be read as UTF-8 text: {e}") from None
    if not text.strip():
        raise LensforgeError(f"system prompt file '{p}' is empty")
    return text.strip()


def prompt_id(text: str) -> str:
    """A short stable name of a system prompt's text (first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:12]


__all__ = ["PRIVATE_REASONING_SUFFIX", "SYSTEM_PROMPTS_DIR", "default_system_prompt_path", "load_system_prompt",
           "prompt_id"]
