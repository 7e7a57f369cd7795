"""WebDataset-style tar shards, local or remote, read through a compact shared index or streamed.

A shard is a plain tar whose members are grouped into samples by *key* (the member name up to the
first dot of its basename, as WebDataset does): ``{key}.jpg|jpeg|png|webp`` is the image,
``{key}.json`` holds caption fields (``dense``, ``short``, ``caption`` …, see ``caption_keys``) and
optionally ``width``/``height``, ``{key}.txt`` is a single caption.

``path`` is a local folder / ``.tar`` / glob, or a URL (``s3://bucket/prefix/``, ``gs://…``,
``https://host/dir/``, WebDataset brace notation ``…/shard-{000000..000999}.tar``) read through
fsspec (:mod:`lensforge.data.remote`).

``mode: indexed`` (the default) is map-style: the set's :mod:`~lensforge.data.index`
(``lensforge.index`` beside the shards, written by ``lensforge data index`` or ``build-shards``) is
memory-mapped — 16 bytes per sample, shared by every worker — and ``get(i)`` is one read of the
sample's span (one ``pread``, or one ranged GET; the loader fetches the next ``readahead`` samples
of a remote set concurrently). Loading orders, sharding by index and exact resume are the loader's.
A missing or stale index is built at start-up for small sets (``auto_index`` shards, with a
warning) and is otherwise a clear error naming the command that builds it.

``mode: streaming`` needs no index: each worker of each rank reads whole shards of its own
(disjoint) in a seeded order through a shuffle buffer (:mod:`lensforge.data.streaming`), resuming
exactly at shard + member position.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

from lensforge.data.index import (
    IndexView, IndexWriter, ShardIndex, base_dir, default_index_path, in_memory_index, open_index, parse_span,
    relative_name, resolve_name, scan_all, select_names, split_key,
)
from lensforge.data.remote import FileInfo, RangeError, Reader, describe, is_remote, list_files, local_path
from lensforge.data.sources.common import (
    CAPTION_KEYS, IMAGE_EXTS, RawRecord, captions_from_json, image_header_size, load_resized,
)
from lensforge.errors import LensforgeError
from lensforge.interfaces.data import DataSource, SampleError  # light: validation imports this module
from lensforge.recipe.plugin_config import NonNegativeInt, PositiveInt
from lensforge.registry import register

log = logging.getLogger("lensforge.data")

__all__ = ["WebDatasetSource", "shard_paths", "split_key"]

Members = list[tuple[str, bytes]]


def shard_paths(path: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Tar files named by ``path``: one ``.tar``, a folder of them (recursive), a glob, braces or a URL."""
    return [f.path for f in list_files(path, ".tar", storage_options)]


@register("data", "webdataset")
class WebDatasetSource(DataSource):
    """WebDataset-style tar shards (image + json/txt captions), local or remote, indexed or streamed."""

    @dataclass(kw_only=True)
    class Config:
        path: str = "???"
        """Shards: a .tar, a folder (searched recursively), a glob, or a URL (``s3://bucket/prefix/``,
        ``gs://…``, ``https://…/shard-{000000..000999}.tar``; remote stores need the ``remote`` extra)."""
        mode: Literal["indexed", "streaming"] = "indexed"
        """``indexed``: map-style reads through the set's index (exact order, any shuffle); ``streaming``:
        whole shards per worker through a shuffle buffer, for sets that cannot be indexed up front."""
        index: str | None = None
        """The index file (default ``lensforge.index`` beside the shards; may be a URL)."""
        auto_index: NonNegativeInt = 64
        """Sets of at most this many shards are indexed at start-up (with a warning) when the index is missing
        or stale; larger ones stop with the command that builds it. 0 = never."""
        index_cache: bool = True
        """Write an index built at start-up beside the shards (local, writable folders), so the next start reads it."""
        verify_index: bool = True
        """Compare the index with a listing of the shards (names, sizes, mtimes / ETags) at start-up."""
        storage_options: dict[str, Any] = field(default_factory=dict)
        """fsspec options of a remote store, e.g. ``{endpoint_url: 'http://127.0.0.1:9000', anon: false}``."""
        cache_dir: str | None = None
        """Where a remote index is copied to be memory-mapped (default ``~/.cache/lensforge/index``)."""
        readahead: NonNegativeInt = 64
        """Indexed remote sets: samples fetched concurrently ahead of the loader (0 = one request at a time)."""
        shuffle_buffer: PositiveInt = 512
        """Streaming: samples held (as bytes) per worker to shuffle the stream (1 = shard order)."""
        image_exts: list[str] = field(default_factory=lambda: list(IMAGE_EXTS))
        """Member extensions treated as the sample's image."""
        caption_keys: list[str] = field(default_factory=lambda: list(CAPTION_KEYS))
        """Fields of the .json member read as captions; a .txt member becomes the ``caption`` field."""
        resize: Literal["cover", "contain"] = "cover"
        """How a stored image is fitted to the drawn size: ``cover`` (crop) or ``contain`` (pad)."""

    def __init__(self, config: Config):
        super().__init__(config)
        for name in ("auto_index", "readahead", "shuffle_buffer"):  # also schema ranges (validate reports them)
            if getattr(config, name) < (1 if name == "shuffle_buffer" else 0):
                raise LensforgeError(f"webdataset {name} is out of range: {getattr(config, name)}")
        self.exts = {e.lower().lstrip(".") for e in config.image_exts}
        self.base = base_dir(config.path)
        self.reader = Reader(config.storage_options)
        self.streaming = config.mode == "streaming"
        self._ahead: dict[int, bytes | Exception] = {}  # fetched spans not yet used
        self._pending: deque[tuple[list[int], Future]] = deque()  # background fetches, oldest first
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self._last: tuple[int, bytes] | None = None
        self.index: IndexView | None = None
        if self.streaming:
            listing = self._list()
            if not listing:
                raise LensforgeError(f"no .tar shards found at '{config.path}'")
            self.shards = [f.path for f in listing]
            log.info("webdataset source %s: %d shards, streamed", config.path, len(self.shards))
            return
        self.index = self._open_index()
        self.shards = [resolve_name(n, self.base) for n in self.index.names]
        bad = self.index.index.bad_shards
        if bad:
            name, why = next(iter(bad.items()))
            log.warning("webdataset %s: %d shard(s) were damaged when indexed (e.g. %s: %s); their unreadable "
                        "samples are not in the index", config.path, len(bad), name, why)
        if not len(self.index):
            raise LensforgeError(f"the shards at '{config.path}' hold no samples with an image")
        log.info("webdataset source %s: %d samples in %d shards (index %s)", config.path, len(self.index),
                 len(self.shards), self.index.index.origin)

    # --- the index --------------------------------------------------------------------------
    def _list(self) -> list[FileInfo]:
        return list_files(self.config.path, ".tar", self.config.storage_options)

    def index_location(self) -> str:
        return self.config.index or default_index_path(self.config.path)

    def _open_index(self) -> IndexView:
        cfg = self.config
        loc = self.index_location()
        idx = open_index(loc, cfg.storage_options, cfg.cache_dir)
        listing: list[FileInfo] | None = None
        if idx is not None:
            if not cfg.verify_index:  # trust it: no listing of the store at start-up
                return IndexView(idx, select_names(idx.names, cfg.path))
            listing = self._list()
            if not listing:
                raise LensforgeError(f"no .tar shards found at '{cfg.path}' (the index '{loc}' names {len(idx.names)}); "
                                     "if the store cannot be listed, set data.source.verify_index=false to trust the index")
            selected, reason = idx.match(listing, self.base, self.exts)
            if reason is None:
                return IndexView(idx, selected)
            why = f"the index '{loc}' is stale: {reason}"
        else:
            why = f"no index at '{loc}'"
        listing = listing if listing is not None else self._list()
        if not listing:
            raise LensforgeError(f"no .tar shards found at '{cfg.path}'")
        build = f"lensforge data index {cfg.path}" + (f" --out {loc}" if cfg.index else "")
        if len(listing) > cfg.auto_index:
            raise LensforgeError(f"{why} for the {len(listing)} shards at '{cfg.path}': build it once with `{build}`")
        log.warning("webdataset %s: %s; indexing its %d shard(s) now (auto_index=%d; `%s` writes it once)",
                    cfg.path, why, len(listing), cfg.auto_index, build)
        return IndexView(self._index_now(listing, loc))

    def _index_now(self, listing: list[FileInfo], loc: str) -> ShardIndex:
        cfg = self.config
        scans = [(relative_name(f.path, self.base), f, s)
                 for f, s in zip(listing, scan_all(listing, self.exts, cfg.storage_options))]
        for (name, f, s) in scans:
            if s.problem:
                log.warning("webdataset: shard %s is damaged (%s); %d complete samples kept", f.path, s.problem, len(s.rows))
        if cfg.index_cache and not is_remote(loc):
            try:
                w = IndexWriter(loc, image_exts=self.exts, extra={"path": cfg.path})
            except LensforgeError as e:  # a read-only dataset folder: keep the index in memory
                log.info("webdataset: %s; keeping the index in memory", e)
            else:
                try:
                    for name, f, s in scans:
                        w.add(name, f, s)
                    w.close()
                except BaseException:
                    w.abort()
                    raise
                return ShardIndex(local_path(loc), loc)
        return in_memory_index(scans, self.exts)

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # a property of the machine, not of the recipe: reported by `lensforge validate` and by
        # `lensforge fit`'s preflight, skipped by `lensforge validate --portable`
        if config.path == "???":
            return []
        try:
            if config.mode == "streaming":
                return [] if list_files(config.path, ".tar", config.storage_options) else [
                    ("path", f"no .tar shards found at '{config.path}'")]
            from lensforge.data.index import MAGIC
            from lensforge.data.remote import exists

            loc = config.index or default_index_path(config.path)
            if exists(loc, config.storage_options):
                if not is_remote(loc):
                    with open(local_path(loc), "rb") as f:
                        if f.read(len(MAGIC)) != MAGIC:
                            return [("index", f"'{loc}' is not a lensforge index: rebuild it with "
                                              f"`lensforge data index {config.path}`")]
                return []
            shards = list_files(config.path, ".tar", config.storage_options)
            if not shards:
                return [("path", f"no .tar shards found at '{config.path}'")]
            if len(shards) <= config.auto_index:
                return []  # indexed at start-up
            return [("index", f"no index at '{loc}' for the {len(shards)} shards at '{config.path}': "
                              f"build it once with `lensforge data index {config.path}`")]
        except LensforgeError as e:
            return [("path", str(e))]
        except OSError as e:
            return [("path", f"cannot read '{config.path}': {describe(e)}")]

    # --- map-style access (indexed mode) ------------------------------------------------------
    def __len__(self) -> int:
        if self.index is None:
            raise LensforgeError(f"webdataset {self.config.path}: the number of samples of a streamed set is not known "
                                 "(mode: streaming); use mode: indexed for map-style access")
        return len(self.index)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def readahead(self) -> int:
        """Samples the loader should ask :meth:`prefetch` for at a time (0: local files, no need)."""
        return 0 if self.streaming or not is_remote(self.base) else int(self.config.readahead)

    def __getstate__(self) -> dict[str, Any]:  # fetches in flight and their thread belong to this process
        state = dict(self.__dict__)
        state.update(_ahead={}, _pending=deque(), _pool=None, _last=None)
        return state

    def prefetch(self, indices: list[int]) -> None:
        """Start fetching the spans of ``indices`` (remote stores): one background thread per process
        runs the requests, concurrently, while the loader decodes; ``get`` waits for them when needed."""
        if not indices or self.index is None:
            return
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="lensforge-readahead"))
            self._pending, self._ahead = deque(), {}
        idx = [int(i) for i in indices]
        self._pending.append((idx, self._pool[1].submit(self._fetch, idx)))

    def _fetch(self, indices: list[int]) -> dict[int, bytes | Exception]:
        assert self.index is not None
        locs = [self.index.locate(i) for i in indices]
        got = self.reader.read_many([self.shards[si] for si, *_ in locs], [off for _, off, *_ in locs],
                                    [off + size for _, off, size, *_ in locs])
        return dict(zip(indices, got))

    def _fetched(self, index: int) -> bytes | Exception | None:
        data = self._ahead.pop(index, None)
        if data is not None or not self._pending:
            return data
        for n, (idx, fut) in enumerate(self._pending):
            if index in idx:
                for _ in range(n + 1):  # this fetch and the older ones are done with: keep what was not used
                    old_idx, old = self._pending.popleft()
                    try:
                        self._ahead.update(old.result())
                    except Exception as e:  # noqa: BLE001 - reported per sample below
                        self._ahead.update({i: RangeError(f"readahead failed: {describe(e)}") for i in old_idx})
                while len(self._ahead) > 4 * max(1, self.readahead):  # never-used spans (skipped samples)
                    self._ahead.pop(next(iter(self._ahead)))
                return self._ahead.pop(index, None)
        return None

    def _span(self, index: int) -> tuple[int, bytes]:
        if self.index is None:
            raise LensforgeError("map-style access needs mode: indexed")
        si, off, size, _, _ = self.index.locate(index)
        if self._last is not None and self._last[0] == index:
            return si, self._last[1]
        data = self._fetched(index)
        if isinstance(data, Exception):
            raise data
        if data is None:
            data = self.reader.read(self.shards[si], off, off + size)
        self._last = (index, data)
        return si, data

    def _where(self, si: int, key: str = "") -> str:
        return f"{self.shards[si]}:{key}" if key else self.shards[si]

    def _pick(self, members: Members, where: str) -> tuple[str, bytes, bytes | None, bytes | None]:
        """``(image ext, image, json, txt)``; like the tar order, a later member of a kind wins."""
        img_ext, img, js, txt = "", None, None, None
        for ext, data in members:
            if ext in self.exts:
                img_ext, img = ext, data
            elif ext == "json":
                js = data
            elif ext == "txt":
                txt = data
        if img is None:
            raise SampleError(f"{where}: no image member")
        return img_ext, img, js, txt

    def _captions(self, js: bytes | None, txt: bytes | None, where: str) -> tuple[dict[str, str], dict[str, Any]]:
        caps: dict[str, str] = {}
        extra: dict[str, Any] = {}
        if js is not None:
            caps, extra = captions_from_json(js, self.config.caption_keys, where)
        if txt is not None:
            try:
                text = txt.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise SampleError(f"{where}: caption is not utf-8 ({e})") from None
            if text:
                caps.setdefault("caption", text)
        return caps, extra

    def native_size(self, index: int) -> tuple[int, int] | None:
        if self.index is None:
            raise LensforgeError("map-style access needs mode: indexed")
        _, _, _, h, w = self.index.locate(index)  # recorded when indexing: no read
        if h and w:
            return h, w
        si, data = self._span(index)
        key, members = parse_span(data, self._where(si))
        return self.native_of(si, key, members)

    def get(self, index: int, size: tuple[int, int] | None = None) -> Sample:
        si, data = self._span(index)
        self._last = None
        key, members = parse_span(data, self._where(si))
        return self.decode(si, key, members, size)

    def raw(self, index: int) -> RawRecord:
        """The stored bytes and captions of ``index`` (for ``build-shards`` and ``stats``)."""
        si, data = self._span(index)
        self._last = None
        key, members = parse_span(data, self._where(si))
        where = self._where(si, key)
        ext, img, js, txt = self._pick(members, where)
        caps, extra = self._captions(js, txt, where)
        return RawRecord(key=key, image=img, ext=ext, captions=caps, meta=extra)

    # --- decoding (both modes) ----------------------------------------------------------------
    def native_of(self, si: int, key: str, members: Members) -> tuple[int, int]:
        """The stored ``(H, W)`` of a sample from its members (the image header)."""
        where = self._where(si, key)
        _, img, _, _ = self._pick(members, where)
        return image_header_size(img, key)

    def decode(self, si: int, key: str, members: Members, size: tuple[int, int] | None) -> Sample:
        from lensforge.interfaces.batch import Sample

        where = self._where(si, key)
        _, img, js, txt = self._pick(members, where)
        caps, extra = self._captions(js, txt, where)
        image, native = load_resized(img, size, self.config.resize, key)
        return Sample(image=image, captions=caps, key=key,
                      meta={"source": "webdataset", "shard": os.path.basename(self.shards[si]),
                            "native_size": native, **extra})

    # --- streaming ----------------------------------------------------------------------------

    def stream_class(self) -> type:
        """The loader's stream for this source: whole shards per worker when streaming, else map-style reads."""
        if self.streaming:
            from lensforge.data.streaming import ShardStream

            return ShardStream
        from lensforge.data.loader import PackedStream

        return PackedStream
    def read_ref(self, si: int, offset: int, size: int) -> tuple[str, Members]:
        """The sample whose span is ``(offset, size)`` in shard ``si`` (to restore a streaming position)."""
        return parse_span(self.reader.read(self.shards[si], offset, offset + size), self._where(si))

    def stream_shard(self, si: int, start: int = 0, k0: int = 0,
                     on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, int, int, str, Members, int]]:
        """Samples of shard ``si`` read in order from byte ``start`` (where sample ``k0`` begins):
        ``(k, offset, span size, key, members, next offset)``; ``next offset`` is -1 after the last.

        Members are grouped as WebDataset does (consecutive members with one key). Keys without an
        image member are passed over (still numbered). A read or format error ends the shard: the
        samples before it were yielded; ``on_error`` hears about it.
        """
        if start < 0:
            return
        path = self.shards[si]
        k = k0
        cur: list[Any] | None = None  # [key, first offset, end, members]
        try:
            with self.reader.open_stream(path, start) as f, tarfile.open(fileobj=f, mode="r|") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = split_key(m.name)
                    if cur is not None and key != cur[0]:
                        if any(e in self.exts for e, _ in cur[3]):
                            yield k, cur[1], _align(cur[2]) - cur[1], cur[0], cur[3], start + m.offset
                        k += 1
                        cur = None
                    if cur is None:
                        cur = [key, start + m.offset, 0, []]
                    fo = tf.extractfile(m)
                    cur[3].append((ext, fo.read() if fo is not None else b""))
                    cur[2] = start + m.offset_data + m.size
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            if on_error is not None:
                on_error(f"{path}: {describe(e)} (after {k - k0} samples from byte {start})")
            return
        if cur is not None and any(e in self.exts for e, _ in cur[3]):
            yield k, cur[1], _align(cur[2]) - cur[1], cur[0], cur[3], -1


def _align(n: int) -> int:
    return (n + 511) // 512 * 512
