"""WebDataset-style tar shards, read map-style through an index of tar members.

A shard is a plain tar whose members are grouped into samples by *key* (the member name up to the
first dot of its basename, as WebDataset does): ``{key}.jpg|jpeg|png|webp`` is the image,
``{key}.json`` holds caption fields (``dense``, ``short``, ``caption`` …, see ``caption_keys``) and
optionally ``width``/``height``, ``{key}.txt`` is a single caption. On construction every shard's
member headers are scanned once (no data is read) to record ``(shard, offset, size)`` of each
member, so ``get(i)`` is one ``pread`` per member and the source shards by index like any other.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, Literal

from lensforge.data.sources.common import (
    CAPTION_KEYS, IMAGE_EXTS, RawRecord, captions_from_json, image_header_size, load_resized,
)
from lensforge.errors import LensforgeError
from lensforge.interfaces.data import DataSource, SampleError  # light: validation imports this module
from lensforge.registry import register

log = logging.getLogger("lensforge.data")


def shard_paths(path: str) -> list[str]:
    """Tar files named by ``path``: one ``.tar`` file, a folder of them, or a glob pattern."""
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.tar"), recursive=True))
    if os.path.isfile(path):
        return [path]
    return sorted(p for p in glob.glob(path) if os.path.isfile(p))


def split_key(name: str) -> tuple[str, str]:
    """``"a/b.c.jpg"`` → ``("a/b", "c.jpg")`` (WebDataset: key up to the basename's first dot)."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


@register("data", "webdataset")
class WebDatasetSource(DataSource):
    """WebDataset-style tar shards (image + json/txt captions), indexed for map-style access."""

    @dataclass(kw_only=True)
    class Config:
        path: str = "???"
        """A .tar shard, a folder of shards (searched recursively) or a glob such as ``data/shard-*.tar``."""
        image_exts: list[str] = field(default_factory=lambda: list(IMAGE_EXTS))
        """Member extensions treated as the sample's image."""
        caption_keys: list[str] = field(default_factory=lambda: list(CAPTION_KEYS))
        """Fields of the .json member read as captions; a .txt member becomes the ``caption`` field."""
        resize: Literal["cover", "contain"] = "cover"
        """How a stored image is fitted to the drawn size: ``cover`` (crop) or ``contain`` (pad)."""
        index_cache: bool = True
        """Keep each shard's member index in a ``<shard>.idx.json`` sidecar (rebuilt when the shard changes)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.shards = shard_paths(config.path)
        if not self.shards:
            raise LensforgeError(f"no .tar shards found at '{config.path}'")
        exts = {e.lower().lstrip(".") for e in config.image_exts}
        self.records: list[dict[str, Any]] = []
        no_image = 0
        for si, path in enumerate(self.shards):
            groups = self._shard_index(path, exts)
            for key, g in groups.items():
                if "image" in g:
                    self.records.append({"shard": si, "key": key, **g})
                else:
                    no_image += 1
        if no_image:
            log.warning("webdataset %s: %d keys without an image member ignored", config.path, no_image)
        if not self.records:
            raise LensforgeError(f"the shards at '{config.path}' hold no samples with an image")
        log.info("webdataset source %s: %d samples in %d shards", config.path, len(self.records), len(self.shards))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _shard_index(self, path: str, exts: set[str]) -> dict[str, dict[str, Any]]:
        """``key -> {image: (offset, size), ext, json?, txt?}`` for one shard, in member order."""
        st = os.stat(path)
        stamp = [st.st_size, int(st.st_mtime_ns), sorted(exts)]
        side = path + ".idx.json"
        if self.config.index_cache and os.path.isfile(side):
            try:
                with open(side, encoding="utf-8") as f:
                    cached = json.load(f)
                if cached.get("stamp") == stamp:
                    return {k: {m: (tuple(v) if isinstance(v, list) else v) for m, v in g.items()}
                            for k, g in cached["groups"].items()}
            except (OSError, ValueError, KeyError, AttributeError):
                log.info("webdataset: ignoring unreadable index %s", side)
        groups: dict[str, dict[str, Any]] = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = split_key(m.name)
                    g = groups.setdefault(key, {})
                    loc = (m.offset_data, m.size)
                    if ext in exts:
                        g["image"], g["ext"] = loc, ext
                    elif ext in ("json", "txt"):
                        g[ext] = loc
        except (tarfile.TarError, OSError) as e:
            raise LensforgeError(f"cannot read shard '{path}': {e}") from None
        if self.config.index_cache:
            try:
                tmp = f"{side}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump({"stamp": stamp, "groups": groups}, f)
                os.replace(tmp, side)
            except OSError as e:  # read-only dataset folder: index again next time
                log.info("webdataset: cannot write index %s (%s)", side, e)
        return groups

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # a property of the machine, not of the recipe: reported by `lensforge validate` and by
        # `lensforge fit`'s preflight, skipped by `lensforge validate --portable`
        if config.path != "???" and not shard_paths(config.path):
            return [("path", f"no .tar shards found at '{config.path}'")]
        return []

    def __getstate__(self) -> dict[str, Any]:  # file descriptors are per process
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, shard: int, loc: tuple[int, int]) -> bytes:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        off, size = loc
        try:
            data = os.pread(fd, size, off)
        except OSError as e:
            raise SampleError(f"{self.shards[shard]}: read failed at {off}: {e}") from None
        if len(data) != size:
            raise SampleError(f"{self.shards[shard]}: truncated member at {off}")
        return data

    def _captions(self, rec: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        caps: dict[str, str] = {}
        extra: dict[str, Any] = {}
        where = f"{self.shards[rec['shard']]}:{rec['key']}"
        if "json" in rec:
            caps, extra = captions_from_json(self._read(rec["shard"], rec["json"]), self.config.caption_keys, where)
        if "txt" in rec:
            try:
                text = self._read(rec["shard"], rec["txt"]).decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise SampleError(f"{where}: caption is not utf-8 ({e})") from None
            if text:
                caps.setdefault("caption", text)
        return caps, extra

    def native_size(self, index: int) -> tuple[int, int] | None:
        rec = self.records[index]
        return image_header_size(self._read(rec["shard"], rec["image"]), rec["key"])

    def get(self, index: int, size: tuple[int, int] | None = None) -> Sample:
        rec = self.records[index]
        caps, extra = self._captions(rec)
        image, native = load_resized(self._read(rec["shard"], rec["image"]), size, self.config.resize, rec["key"])
        from lensforge.interfaces.batch import Sample

        return Sample(image=image, captions=caps, key=rec["key"],
                      meta={"source": "webdataset", "shard": os.path.basename(self.shards[rec["shard"]]),
                            "native_size": native, **extra})

    def raw(self, index: int) -> RawRecord:
        """The stored bytes and captions of ``index`` (for ``build-shards`` and ``stats``)."""
        rec = self.records[index]
        caps, extra = self._captions(rec)
        return RawRecord(key=rec["key"], image=self._read(rec["shard"], rec["image"]), ext=rec["ext"],
                         captions=caps, meta=extra)
