"""Writing WebDataset-style shards and opening any data path as a source.

``build_shards(source, out)`` copies every sample's stored image bytes unchanged (no re-encode, so a
corrupt image stays corrupt and is counted the same way by ``stats`` before and after) next to a
json holding its captions, the original key and, when the header is readable, ``width``/``height``,
and writes the set's compact index (``lensforge.index``, :mod:`lensforge.data.index`) from the
offsets it wrote — no second pass over the shards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from lensforge.data.sources.common import IMAGE_EXTS, RawRecord
from lensforge.errors import LensforgeError
from lensforge.interfaces.data import DataSource, SampleError

log = logging.getLogger("lensforge.data")


def open_source(spec: str, **params: Any) -> DataSource:
    """A source from a command-line spec.

    ``synthetic`` or ``synthetic:N`` (N samples), a folder of ``.tar`` shards or one ``.tar`` /
    a glob / a URL (``s3://…``, ``https://…``: WebDataset), or a folder of images (image folder).
    """
    from lensforge.data.remote import is_remote
    from lensforge.data.sources.folder import ImageFolderSource
    from lensforge.data.sources.synthetic import SyntheticWorld
    from lensforge.data.sources.webdataset import WebDatasetSource, shard_paths

    if spec == "synthetic" or spec.startswith("synthetic:"):
        n = spec.partition(":")[2]
        try:
            num = int(n) if n else 1000
        except ValueError:
            raise LensforgeError(f"'{spec}': expected synthetic:N with an integer N") from None
        return SyntheticWorld(SyntheticWorld.Config(num_samples=num, **params))
    if is_remote(spec):
        return WebDatasetSource(WebDatasetSource.Config(path=spec, **params))
    if not os.path.exists(spec) and not shard_paths(spec):
        raise LensforgeError(f"data path '{spec}' does not exist")
    if os.path.isdir(spec):
        has_tar = any(p.suffix == ".tar" for p in Path(spec).rglob("*.tar"))
        if has_tar:
            return WebDatasetSource(WebDatasetSource.Config(path=spec, **params))
        return ImageFolderSource(ImageFolderSource.Config(path=spec, **params))
    return WebDatasetSource(WebDatasetSource.Config(path=spec, **params))


def raw_record(source: DataSource, index: int) -> RawRecord:
    """Stored bytes of ``index``; sources without ``raw`` are not shardable."""
    raw = getattr(source, "raw", None)
    if raw is None:
        raise LensforgeError(f"{type(source).__name__} cannot export raw samples")
    return raw(index)


_SAFE = re.compile(r"[^A-Za-z0-9_/\-]")


def shard_key(key: str) -> str:
    """A WebDataset-safe key: no dots (the key ends at the first dot), no odd characters."""
    return _SAFE.sub("_", key).strip("/") or "_"


class ShardWriter:
    """Writes ``{prefix}-{n:06d}.tar`` files of at most ``samples_per_shard`` samples each, and
    remembers every sample's span for :meth:`write_index`."""

    def __init__(self, out_dir: str | os.PathLike, samples_per_shard: int = 1000, prefix: str = "shard"):
        if samples_per_shard < 1:
            raise LensforgeError(f"samples per shard must be >= 1, got {samples_per_shard}")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._keys: set[str] = set()
        self._rows: list[list[tuple[int, int, int, int]]] = []  # per shard: (offset, size, height, width)

    def _add(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # reproducible shards
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, rec: RawRecord, extra: dict[str, Any] | None = None) -> str:
        """Add one sample; returns the key it was stored under."""
        if self._tar is None or self._count >= self.samples_per_shard:
            self.close()
            path = self.out / f"{self.prefix}-{len(self.paths):06d}.tar"
            self._tar = tarfile.open(path, "w")
            self.paths.append(str(path))
            self._rows.append([])
            self._count = 0
        key = shard_key(rec.key)
        base, n = key, 1
        while key in self._keys:
            key, n = f"{base}_{n}", n + 1
        self._keys.add(key)
        meta = {**{k: v for k, v in rec.meta.items() if _jsonable(v)}, **rec.captions, **(extra or {}), "key": rec.key}
        js = json.dumps(meta, sort_keys=True).encode("utf-8")
        assert self._tar is not None
        start = self._tar.offset
        self._add(f"{key}.{rec.ext}", rec.image)
        self._add(f"{key}.json", js)
        self._count += 1
        if rec.ext.lower() in IMAGE_EXTS:  # what the index (and the reader) counts as a sample
            from lensforge.data.index import HEAD_BYTES, _header_hw, _json_hw

            hw = _json_hw(js) or _header_hw(rec.image[:HEAD_BYTES])
            if hw is None and len(rec.image) > HEAD_BYTES:
                hw = _header_hw(rec.image[: 256 << 10])
            self._rows[-1].append((start, self._tar.offset - start, *(hw or (0, 0))))
        return key

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def write_index(self, out: str | None = None) -> str:
        """Write the index of the shards written so far (closes the current shard)."""
        import numpy as np

        from lensforge.data.index import ROW, IndexWriter, ShardScan, default_index_path
        from lensforge.data.remote import _local_info

        self.close()
        out = out or default_index_path(str(self.out))
        w = IndexWriter(out, image_exts=IMAGE_EXTS, extra={"path": str(self.out)})
        try:
            for path, rows in zip(self.paths, self._rows):
                w.add(os.path.relpath(path, self.out).replace(os.sep, "/"), _local_info(path),
                      ShardScan(np.array(rows, dtype=ROW) if rows else np.zeros(0, dtype=ROW)))
            w.close()
        except BaseException:
            w.abort()
            raise
        return out

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def build_shards(source: DataSource, out_dir: str | os.PathLike, samples_per_shard: int = 1000,
                 progress: bool = True, index: bool = True) -> dict[str, Any]:
    """Write every sample of ``source`` into shards and (``index``) their index beside them;
    returns ``{shards, samples, no_header, index}``."""
    from lensforge.data.sources.common import image_header_size

    n = len(source)
    no_header = 0
    with ShardWriter(out_dir, samples_per_shard) as w:
        it = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="build-shards", unit="sample", dynamic_ncols=True)
        for i in it:
            rec = raw_record(source, i)
            extra: dict[str, Any] = {}
            try:
                h, wd = image_header_size(rec.image, rec.key)
                extra = {"width": wd, "height": h}
            except SampleError:
                no_header += 1
            w.write(rec, extra)
        paths = list(w.paths)
        index_path = w.write_index() if index and paths else None
    log.info("wrote %d samples into %d shards under %s (%d without a readable header)", n, len(paths), out_dir, no_header)
    return {"shards": paths, "samples": n, "no_header": no_header, "index": index_path}
