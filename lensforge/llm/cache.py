"""On-disk response cache: one small JSON file per answered request, keyed by a hash of the request.

The key is the SHA-256 of the canonical JSON of ``(base URL, model, messages — image data URLs, i.e.
the image bytes, included — and every request parameter)``; the API key is not part of a request and
never reaches the cache. Only successful answers are stored (a strict-JSON call stores only an answer
that passed validation), so a resumed run replays what it already paid for and retries what failed.

Files live at ``DIR/ab/abcdef….json`` and are written to a unique temporary name then ``os.replace``-d,
so concurrent writers and ``kill -9`` never leave a truncated entry. A corrupt entry reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("lensforge.llm")

#: Bumped when the entry layout or the key recipe changes (old entries then simply miss).
CACHE_FORMAT = 1


def request_key(payload: dict[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    blob = json.dumps({"format": CACHE_FORMAT, **payload}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A folder of cached answers; ``get(key)`` / ``put(key, entry)`` are thread-safe."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives."""
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None (missing or unreadable)."""
        p = self.path(key)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("llm cache: ignoring unreadable entry %s (%s)", p, e)
            return None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return None
        return data

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` (a JSON-able dict) under ``key`` atomically."""
        from lensforge.fileio import atomic_write_text

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": CACHE_FORMAT, **entry}, ensure_ascii=False, sort_keys=True)
        atomic_write_text(p, text, unique=True)  # several workers may answer the same request at once

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("??/*.json"))


__all__ = ["CACHE_FORMAT", "ResponseCache", "request_key"]
