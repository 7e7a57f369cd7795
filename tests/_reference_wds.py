"""Today's map-style WebDataset reader (lensforge 61a08f7 ``WebDatasetSource``), frozen as the reference
the compact index and the streaming mode are compared with: it scans every shard's tar headers into a
list of per-sample dicts (``self.records``) — the implementation issue 21 replaces. Not registered;
sidecars off. Only ``get``/``native_size``/``raw`` are kept, unchanged in behaviour."""

from __future__ import annotations

import glob
import os
import tarfile
from typing import Any

from lensforge.data.sources.common import CAPTION_KEYS, IMAGE_EXTS, RawRecord, captions_from_json, image_header_size, load_resized
from lensforge.interfaces import DataSource, Sample, SampleError


def shard_paths(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.tar"), recursive=True))
    if os.path.isfile(path):
        return [path]
    return sorted(p for p in glob.glob(path) if os.path.isfile(p))


def split_key(name: str) -> tuple[str, str]:
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


class ReferenceTarSource(DataSource):
    def __init__(self, path: str, image_exts=IMAGE_EXTS, caption_keys=CAPTION_KEYS, resize: str = "cover"):
        super().__init__(None)
        self.caption_keys, self.resize = list(caption_keys), resize
        self.shards = shard_paths(path)
        exts = {e.lower().lstrip(".") for e in image_exts}
        self.records: list[dict[str, Any]] = []
        for si, p in enumerate(self.shards):
            groups: dict[str, dict[str, Any]] = {}
            with tarfile.open(p, "r:") as tf:
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
            for key, g in groups.items():
                if "image" in g:
                    self.records.append({"shard": si, "key": key, **g})

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, shard: int, loc: tuple[int, int]) -> bytes:
        with open(self.shards[shard], "rb") as f:
            f.seek(loc[0])
            data = f.read(loc[1])
        if len(data) != loc[1]:
            raise SampleError(f"{self.shards[shard]}: truncated member at {loc[0]}")
        return data

    def _captions(self, rec: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        caps: dict[str, str] = {}
        extra: dict[str, Any] = {}
        where = f"{self.shards[rec['shard']]}:{rec['key']}"
        if "json" in rec:
            caps, extra = captions_from_json(self._read(rec["shard"], rec["json"]), self.caption_keys, where)
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
        image, native = load_resized(self._read(rec["shard"], rec["image"]), size, self.resize, rec["key"])
        return Sample(image=image, captions=caps, key=rec["key"],
                      meta={"source": "webdataset", "shard": os.path.basename(self.shards[rec["shard"]]),
                            "native_size": native, **extra})

    def raw(self, index: int) -> RawRecord:
        rec = self.records[index]
        caps, extra = self._captions(rec)
        return RawRecord(key=rec["key"], image=self._read(rec["shard"], rec["image"]), ext=rec["ext"],
                         captions=caps, meta=extra)
