"""Crash-safe file writes: write under a hidden temporary name, then :func:`os.replace`.

A reader (or a resumed run after ``kill -9``) sees either the old file or the complete new one,
never a truncated file under the real name. Every file lensforge writes that a later run or
command reads back goes through here (recipes, summaries, pointers, sidecars, images, JSON).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def temp_path(path: str | os.PathLike, *, unique: bool = False) -> Path:
    """The hidden temporary name used while ``path`` is being written (``.name.tmp`` beside it).

    ``unique``: a name no other process or thread writing the same ``path`` uses (``.name.<pid>.<random>.tmp``),
    for files several writers may produce at once (a shared cache); the last rename wins.
    """
    p = Path(path)
    if unique:
        import uuid

        return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    return p.with_name(f".{p.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was::

        with atomic_path(out / "grid.png") as tmp:
            image.save(tmp, format="PNG")
    """
    final = Path(path)
    tmp = temp_path(final, unique=unique)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", *, unique: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (``unique``: see :func:`temp_path`); returns ``path``."""
    with atomic_path(path, unique=unique) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "temp_path"]
