"""Image folders with caption sidecars: ``a/b.jpg`` + ``a/b.txt`` (one caption) and/or ``a/b.json``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lensforge.data.sources.common import (
    CAPTION_KEYS, IMAGE_EXTS, RawRecord, captions_from_json, image_header_size, load_resized,
)
from lensforge.errors import LensforgeError
from lensforge.interfaces.data import DataSource, SampleError
from lensforge.registry import register

log = logging.getLogger("lensforge.data")


@register("data", "folder")
class ImageFolderSource(DataSource):
    """A folder of images with .txt/.json caption files next to them (sorted, map-style)."""

    @dataclass(kw_only=True)
    class Config:
        path: str = "???"
        """Folder holding the images (searched recursively)."""
        recursive: bool = True
        """Also look in sub-folders."""
        image_exts: list[str] = field(default_factory=lambda: list(IMAGE_EXTS))
        """Image file extensions (lower case, no dot)."""
        caption_keys: list[str] = field(default_factory=lambda: list(CAPTION_KEYS))
        """Fields of a .json sidecar read as captions; a .txt sidecar becomes the ``caption`` field."""
        resize: Literal["cover", "contain"] = "cover"
        """How a stored image is fitted to the drawn size: ``cover`` (crop) or ``contain`` (pad)."""

    def __init__(self, config: Config):
        super().__init__(config)
        root = Path(config.path)
        if not root.is_dir():
            raise LensforgeError(f"image folder '{config.path}' does not exist or is not a folder")
        exts = {e.lower().lstrip(".") for e in config.image_exts}
        pattern = "**/*" if config.recursive else "*"
        files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower().lstrip(".") in exts)
        self.root = root
        self.files = [p.relative_to(root).as_posix() for p in files]
        if not self.files:
            raise LensforgeError(f"image folder '{config.path}' holds no images ({', '.join(sorted(exts))})")
        log.info("folder source %s: %d images", config.path, len(self.files))

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # a property of the machine, not of the recipe: reported by `lensforge validate` and by
        # `lensforge fit`'s preflight, skipped by `lensforge validate --portable`
        if config.path != "???" and not os.path.isdir(config.path):
            return [("path", f"image folder '{config.path}' does not exist")]
        return []

    def __len__(self) -> int:
        return len(self.files)

    def key(self, index: int) -> str:
        return self.files[index].rsplit(".", 1)[0]

    def _captions(self, index: int) -> tuple[dict[str, str], dict[str, Any]]:
        stem = self.root / self.key(index)
        caps: dict[str, str] = {}
        extra: dict[str, Any] = {}
        js = stem.with_name(stem.name + ".json")
        if js.is_file():
            caps, extra = captions_from_json(js.read_bytes(), self.config.caption_keys, str(js))
        txt = stem.with_name(stem.name + ".txt")
        if txt.is_file():
            try:
                text = txt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise SampleError(f"{txt}: unreadable caption ({e})") from None
            if text:
                caps.setdefault("caption", text)
        return caps, extra

    def _bytes(self, index: int) -> bytes:
        path = self.root / self.files[index]
        try:
            return path.read_bytes()
        except OSError as e:
            raise SampleError(f"{path}: {e}") from None

    def native_size(self, index: int) -> tuple[int, int] | None:
        return image_header_size(self._bytes(index), self.files[index])

    def get(self, index: int, size: tuple[int, int] | None = None) -> Sample:
        caps, extra = self._captions(index)
        image, native = load_resized(self._bytes(index), size, self.config.resize, self.files[index])
        from lensforge.interfaces.batch import Sample

        return Sample(image=image, captions=caps, key=self.key(index),
                      meta={"source": "folder", "path": self.files[index], "native_size": native, **extra})

    def raw(self, index: int) -> RawRecord:
        """The stored bytes and captions of ``index`` (for ``build-shards`` and ``stats``)."""
        caps, extra = self._captions(index)
        ext = self.files[index].rsplit(".", 1)[-1].lower()
        return RawRecord(key=self.key(index), image=self._bytes(index), ext=ext, captions=caps, meta=extra)
