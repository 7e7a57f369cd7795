"""The compact sample index of a set of WebDataset shards (``lensforge.index``).

One file beside the shards, written once (``lensforge data index SRC`` or ``lensforge data
build-shards``) and memory-mapped by every process that reads the set — its pages are shared by
all DataLoader workers (and all ranks of a node) through the page cache, never rebuilt per rank
nor pickled per worker.

Per sample it holds one 16-byte row (:data:`ROW`): where the sample's tar members start in its
shard, how many bytes they span, and the image's height/width for the resolution policy. The
shard of sample ``i`` is implicit (per-shard sample counts, a binary search). The key and the
member names are not stored: they are in the tar headers inside the span, which a read fetches in
one request (``pread`` locally, one ranged GET remotely). 1M samples = 16 MB; 800M = 12.8 GB on
disk and at most that much page cache per node.

Layout (little-endian)::

    0   b"LFINDEX\\x01"   magic + format version
    8   u64 footer offset    (= 64 + 16·count)
    16  u64 footer length
    24  u64 count
    32  reserved (zeros) up to 64
    64  count × ROW          rows in sample order: shards in sorted order, samples by first member
    …   footer: UTF-8 JSON   {"format", "count", "row", "shards": [[name, size, stamp, count], …],
                              "image_exts", "bad_shards", "no_image", "created", "lensforge"}

Shard names are relative to the data path's base folder, so shards and index can be copied
elsewhere (a bucket) together. ``stamp`` is the shard's mtime in ns (local) or its ETag
(object stores): with ``size`` it tells a stale index from a current one.

Sample order and grouping are the WebDataset convention (key = member name up to the basename's
first dot) with the same order the map-style reader always had: shards sorted by path, samples in
the order of their first member; a key without an image member is not a sample.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import struct
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable

import numpy as np

from lensforge.data.remote import (
    FileInfo, Reader, dirname, download, file_info, has_pattern, is_remote, join, list_files, local_path, upload,
)
from lensforge.errors import LensforgeError
from lensforge.fileio import temp_path

log = logging.getLogger("lensforge.data")

MAGIC = b"LFINDEX\x01"
PREAMBLE = 64
FORMAT = 1
INDEX_NAME = "lensforge.index"
#: one row per sample: span offset/size in its shard, image height/width (0 = not known at indexing)
ROW = np.dtype([("offset", "<u8"), ("size", "<u4"), ("height", "<u2"), ("width", "<u2")])
HEAD_BYTES = 4096  # image bytes read while indexing for the header's size (more on demand)
_PAD = 512


def split_key(name: str) -> tuple[str, str]:
    """``"a/b.c.jpg"`` → ``("a/b", "c.jpg")`` (WebDataset: key up to the basename's first dot)."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


def _align(n: int) -> int:
    return (n + _PAD - 1) // _PAD * _PAD


# --- locations ----------------------------------------------------------------------------


def base_dir(path: str) -> str:
    """The folder shard names are relative to: the path itself for a folder, else the folder above
    the first component that is a pattern (glob or braces) or the file."""
    p = path.rstrip("/")
    if not has_pattern(p) and not p.endswith(".tar"):
        return p
    parts = p.split("/")
    for i, part in enumerate(parts):
        if has_pattern(part):
            return "/".join(parts[:i])
    return dirname(p)


def default_index_path(path: str) -> str:
    """``<base>/lensforge.index``: for a folder, inside it; for one ``.tar``, a glob or a brace pattern,
    in the folder above (one index serves every subset of the shards it holds)."""
    base = base_dir(path)
    return join(base, INDEX_NAME) if is_remote(base) else os.path.join(local_path(base) or ".", INDEX_NAME)


def select_names(names: list[str], path: str) -> list[int] | None:
    """Positions in ``names`` (relative to ``base_dir(path)``) that ``path`` selects; None = all of them.
    Used without a listing (``verify_index: false``): glob and brace patterns are matched by name."""
    import fnmatch

    base = base_dir(path).rstrip("/")
    p = path.rstrip("/")
    if p == base:
        return None
    from lensforge.data.remote import expand_braces

    rel = [q[len(base):].lstrip("/") for q in expand_braces(p)]
    def hit(n: str, r: str) -> bool:  # a glob's `*` stays within a folder; `**` crosses folders
        return fnmatch.fnmatchcase(n, r) and ("**" in r or n.count("/") == r.count("/"))

    return [i for i, n in enumerate(names) if any(hit(n, r) for r in rel)]


def relative_name(full: str, base: str) -> str:
    b = base.rstrip("/")
    if not is_remote(full):
        full, b = local_path(full), local_path(b)
        return os.path.relpath(full, b or ".").replace(os.sep, "/")
    return full[len(b) + 1:] if full.startswith(b + "/") else full


def resolve_name(name: str, base: str) -> str:
    if "://" in name or os.path.isabs(name):
        return name
    return join(base, name) if is_remote(base) else os.path.join(local_path(base) or ".", name)


# --- scanning one shard -------------------------------------------------------------------


@dataclass
class ShardScan:
    """The rows of one shard and what went wrong reading it."""

    rows: np.ndarray
    no_image: int = 0
    problem: str | None = None


@dataclass
class _Group:
    first: int
    end: int
    image: tuple[int, int] | None = None
    head: bytes = b""
    hw: tuple[int, int] | None = None


def _json_hw(data: bytes) -> tuple[int, int] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict):
        h, w = obj.get("height"), obj.get("width")
        if isinstance(h, int) and isinstance(w, int) and not isinstance(h, bool) and 0 < h < 65536 and 0 < w < 65536:
            return h, w
    return None


def _header_hw(data: bytes) -> tuple[int, int] | None:
    from lensforge.data.sources.common import image_header_size
    from lensforge.interfaces.data import SampleError

    try:
        h, w = image_header_size(data, "")
    except SampleError:
        return None
    return (h, w) if 0 < h < 65536 and 0 < w < 65536 else None


def scan_tar(f: IO[bytes], image_exts: Iterable[str], *, seekable: bool, base_offset: int = 0,
             size: int | None = None) -> ShardScan:
    """Index one tar stream: one row per key with an image member, in first-appearance order.

    Reads member headers, ``.json`` members (for ``width``/``height``) and the first bytes of each
    image (for its header when the json has no size); skips image data when ``f`` can seek.
    A read or format error keeps the samples complete before it and reports the problem.
    """
    exts = {e.lower().lstrip(".") for e in image_exts}
    groups: dict[str, _Group] = {}
    problem = None
    last_key = None
    try:
        with tarfile.open(fileobj=f, mode="r:" if seekable else "r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_key(m.name)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(first=m.offset, end=m.offset_data + m.size)
                g.end = max(g.end, m.offset_data + m.size)
                last_key = key
                if ext in exts:
                    g.image = (m.offset_data, m.size)
                    if g.hw is None or not g.head:
                        fo = tf.extractfile(m)
                        g.head = fo.read(min(HEAD_BYTES, m.size)) if fo is not None else b""
                elif ext == "json":
                    fo = tf.extractfile(m)
                    hw = _json_hw(fo.read()) if fo is not None else None
                    if hw is not None:
                        g.hw, g.head = hw, b""
                last_key = None  # this member was read completely
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        problem = f"{type(e).__name__}: {e}"
        if last_key is not None:  # the member being read when it failed: its sample is incomplete
            groups.pop(last_key, None)
    rows = np.zeros(len(groups), dtype=ROW)
    n = 0
    no_image = 0
    for g in groups.values():
        if g.image is None:
            no_image += 1
            continue
        end = _align(g.end)
        if size is not None and base_offset + g.end > size:
            continue  # past the end of a truncated shard
        if size is not None:
            end = min(end, size - base_offset)
        hw = g.hw
        if hw is None and g.head:
            hw = _header_hw(g.head)
            if hw is None and seekable and g.image[1] > len(g.head):  # header beyond the first bytes
                pos = f.tell()
                f.seek(g.image[0])
                hw = _header_hw(f.read(min(g.image[1], 256 << 10)))
                f.seek(pos)
        rows[n] = (base_offset + g.first, end - g.first, *(hw or (0, 0)))
        n += 1
    return ShardScan(rows[:n], no_image, problem)


def scan_shard(path: str, image_exts: Iterable[str], storage_options: dict[str, Any] | None = None,
               size: int | None = None) -> ShardScan:
    """:func:`scan_tar` of one local or remote shard; an unreadable shard gives no rows and a problem."""
    from lensforge.data.remote import protocol_of

    reader = Reader(storage_options)
    try:
        with reader.open_stream(path) as f:
            return scan_tar(f, image_exts, seekable=protocol_of(path) not in ("http", "https"), size=size)
    except (OSError, LensforgeError) as e:
        return ShardScan(np.zeros(0, dtype=ROW), 0, f"{type(e).__name__}: {e}")


# --- writing ------------------------------------------------------------------------------


class IndexWriter:
    """Writes an index shard by shard (rows streamed to disk: constant memory at any size)."""

    def __init__(self, out: str, *, image_exts: Iterable[str], storage_options: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None):
        self.out = out
        self.storage_options = storage_options
        self.image_exts = sorted({e.lower().lstrip(".") for e in image_exts})
        self.extra = dict(extra or {})
        if is_remote(out):
            import tempfile

            fd, self._local = tempfile.mkstemp(suffix=".lensforge.index")
            os.close(fd)
        else:
            self._local = local_path(out)
        self._tmp = str(temp_path(self._local, unique=True))  # several builders may race on one index
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self._local)), exist_ok=True)
            self._f: IO[bytes] = open(self._tmp, "wb")
        except OSError as e:
            raise LensforgeError(f"cannot write the index '{out}': {e}") from None
        self._f.write(b"\0" * PREAMBLE)
        self.count = 0
        self.shards: list[list[Any]] = []
        self.bad: dict[str, str] = {}
        self.no_image = 0

    def add(self, name: str, info: FileInfo | None, scan: ShardScan) -> None:
        rows = np.ascontiguousarray(scan.rows, dtype=ROW)
        self._f.write(rows.tobytes())
        self.count += len(rows)
        self.shards.append([name, info.size if info else None, info.stamp if info else None, int(len(rows))])
        self.no_image += scan.no_image
        if scan.problem:
            self.bad[name] = scan.problem

    def close(self) -> dict[str, Any]:
        from lensforge import __version__

        meta = {"format": FORMAT, "count": self.count, "row": [[n, ROW.fields[n][0].str] for n in ROW.names],
                "shards": self.shards, "image_exts": self.image_exts, "bad_shards": self.bad,
                "no_image": self.no_image, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "lensforge": __version__, **self.extra}
        body = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        footer_off = PREAMBLE + self.count * ROW.itemsize
        self._f.write(body)
        self._f.seek(0)
        self._f.write(MAGIC + struct.pack("<QQQ", footer_off, len(body), self.count))
        self._f.close()
        os.replace(self._tmp, self._local)
        if is_remote(self.out):
            try:
                upload(self._local, self.out, self.storage_options)
            finally:
                os.unlink(self._local)
        return meta

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


# --- reading ------------------------------------------------------------------------------


class ShardIndex:
    """A memory-mapped index: ``len()``, :meth:`locate`, shard names and stamps.

    Pickles without its rows (a worker started with ``spawn`` maps the file again), so it is never
    copied per worker.
    """

    def __init__(self, file: str, origin: str | None = None, *, rows: np.ndarray | None = None,
                 meta: dict[str, Any] | None = None):
        self.file = file
        self.origin = origin or file
        if meta is None:
            meta = read_meta(file, self.origin)
        self.meta = meta
        self.count = int(meta["count"])
        shards = meta["shards"]
        self.names: list[str] = [s[0] for s in shards]
        self.stamps: list[tuple[int | None, int | str | None]] = [(s[1], s[2]) for s in shards]
        counts = np.fromiter((s[3] for s in shards), dtype=np.int64, count=len(shards))
        self.starts = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        if int(self.starts[-1]) != self.count:
            raise LensforgeError(f"index '{self.origin}' is damaged (shard counts do not add up): rebuild it")
        self._rows = rows

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = (np.memmap(self.file, dtype=ROW, mode="r", offset=PREAMBLE, shape=(self.count,))
                          if self.count else np.zeros(0, dtype=ROW))
        return self._rows

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.file:  # mapped from a file: the receiving process maps it again
            state["_rows"] = None
        return state

    def shard_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def locate(self, i: int) -> tuple[int, int, int, int, int]:
        """``(shard, offset, size, height, width)`` of sample ``i``."""
        if not 0 <= i < self.count:
            raise IndexError(f"sample {i} outside the index of {self.count}")
        off, size, h, w = self.rows[i].item()
        return self.shard_of(i), int(off), int(size), int(h), int(w)

    @property
    def bad_shards(self) -> dict[str, str]:
        return dict(self.meta.get("bad_shards") or {})

    def match(self, listing: list[FileInfo], base: str, image_exts: Iterable[str]) -> tuple[list[int] | None, str | None]:
        """``(positions of the listed shards in this index, None)``, or ``(None, why it is stale)``.

        Every listed shard must be in the index with the same size and mtime / ETag (the index may
        hold more shards: a glob or a single ``.tar`` selects a subset)."""
        exts = sorted({e.lower().lstrip(".") for e in image_exts})
        if exts != list(self.meta.get("image_exts", exts)):
            return None, f"it was built for image_exts {self.meta.get('image_exts')}, the source reads {exts}"
        pos = {n: i for i, n in enumerate(self.names)}
        out: list[int] = []
        missing: list[str] = []
        for f in listing:
            name = relative_name(f.path, base)
            i = pos.get(name)
            if i is None:
                missing.append(name)
                continue
            size, stamp = self.stamps[i]
            if f.size is not None and size is not None and f.size != size:
                return None, f"'{name}' is {f.size} bytes, the index was built when it had {size}"
            if f.stamp is not None and stamp is not None and type(f.stamp) is type(stamp) and f.stamp != stamp:
                return None, f"'{name}' changed after the index was built"
            out.append(i)
        if missing:
            return None, f"{len(missing)} shard(s) are not in it, e.g. '{missing[0]}'"
        if out != sorted(out):
            return None, "its shard order differs from the listing"
        return (None if out == list(range(len(self.names))) else out), None


class IndexView:
    """The samples of some of an index's shards (all by default), numbered from 0 in shard order."""

    def __init__(self, index: ShardIndex, shards: list[int] | None = None):
        self.index = index
        if shards is None:
            self.shard_ids = None
            self.names = list(index.names)
            self.starts = index.starts
        else:
            self.shard_ids = np.asarray(shards, dtype=np.int64)
            self.names = [index.names[i] for i in shards]
            counts = index.starts[self.shard_ids + 1] - index.starts[self.shard_ids]
            self.starts = np.zeros(len(shards) + 1, dtype=np.int64)
            np.cumsum(counts, out=self.starts[1:])
        self.count = int(self.starts[-1])

    def __len__(self) -> int:
        return self.count

    def locate(self, i: int) -> tuple[int, int, int, int, int]:
        """``(shard position in this view, offset, size, height, width)`` of sample ``i``."""
        if self.shard_ids is None:
            return self.index.locate(i)
        if not 0 <= i < self.count:
            raise IndexError(f"sample {i} outside the {self.count} selected samples")
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        row = int(self.index.starts[self.shard_ids[j]]) + (i - int(self.starts[j]))
        off, size, h, w = self.index.rows[row].item()
        return j, int(off), int(size), int(h), int(w)


def read_meta(file: str, origin: str | None = None) -> dict[str, Any]:
    where = origin or file
    try:
        with open(file, "rb") as f:
            pre = f.read(PREAMBLE)
            if len(pre) < PREAMBLE or pre[:8] != MAGIC:
                raise LensforgeError(f"'{where}' is not a lensforge index (rebuild it with `lensforge data index`)")
            footer_off, footer_len, count = struct.unpack("<QQQ", pre[8:32])
            if footer_off != PREAMBLE + count * ROW.itemsize:
                raise LensforgeError(f"index '{where}' is damaged: rebuild it with `lensforge data index`")
            f.seek(footer_off)
            body = f.read(footer_len)
        meta = json.loads(body)
    except (OSError, ValueError) as e:
        raise LensforgeError(f"cannot read the index '{where}': {e}") from None
    if meta.get("format") != FORMAT or int(meta.get("count", -1)) != count:
        raise LensforgeError(f"index '{where}' has format {meta.get('format')}; this lensforge reads {FORMAT}: "
                             "rebuild it with `lensforge data index`")
    return meta


def cache_root(cache_dir: str | None = None) -> str:
    if cache_dir:
        return os.path.expanduser(cache_dir)
    base = os.environ.get("LENSFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lensforge")
    return os.path.join(base, "index")


def open_index(location: str, storage_options: dict[str, Any] | None = None,
               cache_dir: str | None = None) -> ShardIndex | None:
    """The index at ``location`` (local, or remote: copied once into the local cache and mapped);
    None when it does not exist."""
    if not is_remote(location):
        p = local_path(location)
        return ShardIndex(p, location) if os.path.isfile(p) else None
    info = file_info(location, storage_options)
    if info is None:
        return None
    tag = hashlib.sha1(f"{location}|{info.size}|{info.stamp}".encode()).hexdigest()[:20]
    local = os.path.join(cache_root(cache_dir), f"{tag}.lensforge.index")
    if not os.path.isfile(local) or (info.size is not None and os.path.getsize(local) != info.size):
        log.info("copying the index %s to %s", location, local)
        download(location, local, storage_options)
    return ShardIndex(local, location)


def in_memory_index(scans: list[tuple[str, FileInfo, ShardScan]], image_exts: Iterable[str]) -> ShardIndex:
    """An index held in memory (small sets indexed at start-up without a writable folder)."""
    rows = np.concatenate([s.rows for _, _, s in scans]) if scans else np.zeros(0, dtype=ROW)
    meta = {"format": FORMAT, "count": int(len(rows)), "image_exts": sorted({e.lower().lstrip('.') for e in image_exts}),
            "shards": [[n, i.size, i.stamp, int(len(s.rows))] for n, i, s in scans],
            "bad_shards": {n: s.problem for n, _, s in scans if s.problem},
            "no_image": sum(s.no_image for _, _, s in scans)}
    return ShardIndex("", "<in memory>", rows=rows, meta=meta)


# --- building -----------------------------------------------------------------------------


@dataclass
class BuildResult:
    out: str
    samples: int
    shards: int
    bad_shards: dict[str, str] = field(default_factory=dict)
    no_image: int = 0
    seconds: float = 0.0


def _scan_task(args: tuple[str, list[str], dict[str, Any], int | None]) -> ShardScan:
    path, exts, opts, size = args
    return scan_shard(path, exts, opts, size)


def scan_all(listing: list[FileInfo], image_exts: Iterable[str], storage_options: dict[str, Any] | None = None,
             workers: int = 1, progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None) -> Iterable[ShardScan]:
    """:func:`scan_shard` of every listed shard, in order (``workers`` processes)."""
    exts = sorted({e.lower().lstrip(".") for e in image_exts})
    tasks = [(f.path, exts, dict(storage_options or {}), f.size) for f in listing]
    if workers <= 1 or len(tasks) <= 1:
        it: Iterable[ShardScan] = map(_scan_task, tasks)
        yield from (progress(it, len(tasks)) if progress else it)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(tasks))) as pool:
        it = pool.imap(_scan_task, tasks, chunksize=1)
        yield from (progress(it, len(tasks)) if progress else it)


def build_index(path: str, out: str | None = None, *, image_exts: Iterable[str], workers: int = 1,
                storage_options: dict[str, Any] | None = None, progress: bool = False) -> BuildResult:
    """Scan the shards at ``path`` and write their index to ``out`` (default: beside them)."""
    import time

    t0 = time.perf_counter()
    out = out or default_index_path(path)
    listing = list_files(path, ".tar", storage_options)
    if not listing:
        raise LensforgeError(f"no .tar shards found at '{path}'")
    base = base_dir(path)
    prog = None
    if progress:
        from tqdm import tqdm

        def prog(it: Iterable[Any], total: int) -> Iterable[Any]:
            return tqdm(it, total=total, desc="index", unit="shard", dynamic_ncols=True)

    w = IndexWriter(out, image_exts=image_exts, storage_options=storage_options, extra={"path": path})
    try:
        for f, scan in zip(listing, scan_all(listing, image_exts, storage_options, workers, prog)):
            w.add(relative_name(f.path, base), f, scan)
            if scan.problem:
                log.warning("index: shard %s is damaged (%s); its %d complete samples are indexed, the rest skipped",
                            f.path, scan.problem, len(scan.rows))
        meta = w.close()
    except BaseException:
        w.abort()
        raise
    return BuildResult(out, int(meta["count"]), len(listing), meta["bad_shards"], int(meta["no_image"]),
                       time.perf_counter() - t0)


# --- reading one sample -------------------------------------------------------------------


_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_NUL_BLOCK = b"\0" * _PAD


def parse_span(data: bytes, where: str) -> tuple[str, list[tuple[str, bytes]]]:
    """``(key, [(ext, bytes), …])`` of the sample whose first member starts ``data`` (tar bytes).

    The usual span — plain file members with ordinary headers — is walked block by block, each
    header decoded by ``tarfile.TarInfo.frombuf`` (half the cost of opening a ``TarFile``); any
    other header (GNU long names, pax, links …) goes through ``tarfile`` itself."""
    from lensforge.interfaces.data import SampleError

    key0: str | None = None
    members: list[tuple[str, bytes]] = []
    pos, n = 0, len(data)
    try:
        while pos + _PAD <= n:
            block = data[pos:pos + _PAD]
            if block == _NUL_BLOCK:
                break
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            if info.type not in _PLAIN_TYPES:
                return _parse_span_tarfile(data, where)
            start, end = pos + _PAD, pos + _PAD + info.size
            if end > n:
                raise SampleError(f"{where}: truncated tar member '{info.name}'")
            key, ext = split_key(info.name)
            if key0 is None:
                key0 = key
            if key == key0:
                members.append((ext, data[start:end]))
            pos = start + _align(info.size)
    except tarfile.HeaderError as e:
        raise SampleError(f"{where}: corrupt tar data ({type(e).__name__}: {e})") from None
    if key0 is None:
        raise SampleError(f"{where}: no tar member at this position")
    return key0, members


def _parse_span_tarfile(data: bytes, where: str) -> tuple[str, list[tuple[str, bytes]]]:
    from lensforge.interfaces.data import SampleError

    key0: str | None = None
    members: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_key(m.name)
                if key0 is None:
                    key0 = key
                if key == key0:
                    fo = tf.extractfile(m)
                    members.append((ext, fo.read() if fo is not None else b""))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise SampleError(f"{where}: corrupt tar data ({type(e).__name__}: {e})") from None
    if key0 is None:
        raise SampleError(f"{where}: no tar member at this position")
    return key0, members
