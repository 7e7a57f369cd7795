"""Local and remote storage for shards and indexes, through fsspec.

A data path is a local path (``/data/shards``, ``file:///data/shards``) or a URL of any fsspec
protocol: ``s3://bucket/prefix/`` (needs ``s3fs``), ``gs://bucket/prefix/`` (``gcsfs``),
``https://host/dir/`` (``aiohttp``) — ``pip install 'lensforge[remote]'``. Filesystem options
(``endpoint_url``, ``anon``, credentials …) come from the source's ``storage_options`` or from
fsspec's environment variables (``FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000`` …) and the
store's own (``AWS_ACCESS_KEY_ID`` …).

Local files are read with ``os.pread`` on a bounded cache of open descriptors (fast, no fsspec
overhead). Remote reads are ranged (``cat_file(url, start, end)``, one GET per sample span; many
at once through ``cat_ranges``); a server that ignores ``Range`` still works (the whole file comes
back and is sliced, with a warning), and sequential reads of whole shards (streaming mode) use a
buffered fsspec file, or a plain stream when the server cannot seek.

Handles are per process: after a ``fork`` (DataLoader workers) every process opens its own.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any, Iterator

from lensforge.errors import LensforgeError
from lensforge.fileio import temp_path

log = logging.getLogger("lensforge.data")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
#: extras that provide a protocol's fsspec implementation
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
             "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}
STREAM_BLOCK = 16 << 20  # bytes per ranged request when a remote shard is read sequentially


def protocol_of(path: str) -> str | None:
    """``"s3"`` for ``s3://b/k``; ``None`` for a local path or ``file://``."""
    m = _SCHEME.match(path)
    if not m:
        return None
    p = m.group(1).lower()
    return None if p in ("file", "local") else p


def is_remote(path: str) -> bool:
    return protocol_of(path) is not None


def local_path(path: str) -> str:
    """``file:///a/b`` → ``/a/b``; other local paths unchanged (``~`` expanded)."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    return os.path.expanduser(path)


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if base else name


def dirname(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0] if is_remote(path) else os.path.dirname(local_path(path).rstrip("/"))


def has_pattern(path: str) -> bool:
    return bool(_GLOB_CHARS.search(path) or _BRACE.search(path))


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: ``a-{000..002}.tar`` → three names; ``{x,y}`` → two; nested ok."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        a, b = int(lo), int(hi)
        step = 1 if b >= a else -1
        parts = [str(i).zfill(width) for i in range(a, b + step, step)]
    else:
        parts = body.split(",")
    return [x for p in parts for x in expand_braces(head + p + tail)]


# --- filesystems --------------------------------------------------------------------------


_FS: dict[tuple[str, str], Any] = {}
_FS_PID = os.getpid()


def filesystem(protocol: str, storage_options: dict[str, Any] | None = None) -> Any:
    """This process's fsspec filesystem for ``protocol`` (a clear error when its package is missing)."""
    global _FS_PID
    if _FS_PID != os.getpid():  # forked: do not share sessions / event loops with the parent
        _FS.clear()
        _FS_PID = os.getpid()
    opts = dict(storage_options or {})
    key = (protocol, json.dumps(opts, sort_keys=True, default=str))
    fs = _FS.get(key)
    if fs is None:
        try:
            import fsspec

            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **opts)
        except ImportError as e:
            pkg = _PACKAGES.get(protocol, "its fsspec implementation")
            raise LensforgeError(f"reading {protocol}:// paths needs {pkg}: pip install 'lensforge[remote]' ({e})") from None
        except ValueError as e:  # unknown protocol
            raise LensforgeError(f"cannot open {protocol}:// paths: {e}") from None
        _FS[key] = fs
    return fs


def fs_and_path(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    protocol = protocol_of(url)
    assert protocol is not None, url
    fs = filesystem(protocol, storage_options)
    # http(s) filesystems take whole URLs; object stores take bucket/key
    return fs, (url if protocol in ("http", "https") else fs._strip_protocol(url))


def _unreachable(e: BaseException) -> BaseException | None:
    """The connection failure behind ``e`` (fsspec reports an unreachable HTTP server as "not found")."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        name = type(cur).__name__
        if isinstance(cur, ConnectionError) or name in ("ClientConnectorError", "ClientConnectionError",
                                                        "ServerDisconnectedError", "EndpointConnectionError",
                                                        "ConnectTimeoutError", "ClientOSError"):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def describe(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# --- listing --------------------------------------------------------------------------------


@dataclass
class FileInfo:
    """A listed shard: full path or URL, size (None when the store does not say) and a change stamp."""

    path: str
    size: int | None
    stamp: int | str | None  # local: mtime in ns; remote: ETag / generation / mtime when listed


def _local_info(p: str) -> FileInfo:
    st = os.stat(p)
    return FileInfo(p, st.st_size, int(st.st_mtime_ns))


def _remote_stamp(info: dict[str, Any]) -> str | None:
    for k in ("ETag", "etag", "generation", "LastModified", "mtime", "last_modified"):
        if info.get(k) is not None:
            return str(info[k]).strip('"')
    return None


def list_files(path: str, suffix: str = ".tar", storage_options: dict[str, Any] | None = None) -> list[FileInfo]:
    """Files named by ``path``, sorted: one file, a folder (searched recursively for ``suffix``), a glob,
    or WebDataset brace notation (``shard-{000000..000099}.tar``). Remote folders and globs are listed
    once; brace names are taken as given (existence is checked when they are read)."""
    if _BRACE.search(path):
        names = expand_braces(path)
        out = []
        for n in names:
            if has_pattern(n):
                out.extend(list_files(n, suffix, storage_options))
            elif is_remote(n):
                out.append(FileInfo(n, None, None))
            elif os.path.isfile(local_path(n)):
                out.append(_local_info(local_path(n)))
        return sorted(out, key=lambda f: f.path)
    if not is_remote(path):
        p = local_path(path)
        if os.path.isdir(p):
            found = glob.glob(os.path.join(p, "**", f"*{suffix}"), recursive=True)
        elif os.path.isfile(p):
            found = [p]
        else:
            found = [q for q in glob.glob(p) if os.path.isfile(q)]
        return [_local_info(q) for q in sorted(found)]
    fs, fpath = fs_and_path(path, storage_options)
    protocol = protocol_of(path)
    try:
        if _GLOB_CHARS.search(fpath.split("://", 1)[-1]):
            listing = fs.glob(fpath, detail=True)
        elif fpath.endswith(suffix) and not path.endswith("/"):
            try:
                info = fs.info(fpath)
            except FileNotFoundError:
                info = None
            listing = {fpath: info} if info and info.get("type") != "directory" else fs.find(fpath, detail=True)
        elif protocol in ("http", "https"):
            listing = _http_find(fs, fpath.rstrip("/") + "/")
        else:
            listing = fs.find(fpath, detail=True)
    except FileNotFoundError as e:
        cause = _unreachable(e)
        if cause is not None:
            raise LensforgeError(f"cannot list '{path}': {describe(cause)}") from None
        return []
    except LensforgeError:
        raise
    except Exception as e:  # noqa: BLE001 - network / credentials: one clear line
        raise LensforgeError(f"cannot list '{path}': {describe(e)}") from None
    out = []
    for name, info in listing.items():
        if not name.endswith(suffix) or (info or {}).get("type") == "directory":
            continue
        url = name if "://" in name else f"{protocol}://{name}"
        size = (info or {}).get("size")
        out.append(FileInfo(url, int(size) if size is not None else None, _remote_stamp(info or {})))
    return sorted(out, key=lambda f: f.path)


def _http_find(fs: Any, url: str, depth: int = 8) -> dict[str, dict[str, Any]]:
    """Files under ``url`` from its HTML index pages (fsspec's ``find`` hides connection errors)."""
    out: dict[str, dict[str, Any]] = {}
    todo, seen = [url], set()
    while todo:
        d = todo.pop()
        if d in seen or d.count("/") - url.count("/") > depth:
            continue
        seen.add(d)
        for info in fs.ls(d, detail=True):
            name = info["name"]
            if not name.startswith(url) or name.rstrip("/") == d.rstrip("/"):
                continue  # links out of the folder (parent, other sites)
            if info.get("type") == "directory" or name.endswith("/"):
                todo.append(name if name.endswith("/") else name + "/")
            else:
                out[name] = info
    return out


def exists(path: str, storage_options: dict[str, Any] | None = None) -> bool:
    if not is_remote(path):
        return os.path.exists(local_path(path))
    return file_info(path, storage_options) is not None if protocol_of(path) in ("http", "https") else _exists(path, storage_options)


def _exists(path: str, storage_options: dict[str, Any] | None) -> bool:
    fs, fpath = fs_and_path(path, storage_options)
    try:
        return bool(fs.exists(fpath))
    except Exception as e:  # noqa: BLE001
        raise LensforgeError(f"cannot reach '{path}': {describe(e)}") from None


def file_info(path: str, storage_options: dict[str, Any] | None = None) -> FileInfo | None:
    """Size and stamp of one file; None when it does not exist."""
    if not is_remote(path):
        p = local_path(path)
        return _local_info(p) if os.path.isfile(p) else None
    fs, fpath = fs_and_path(path, storage_options)
    try:
        info = fs.info(fpath)
    except FileNotFoundError as e:
        cause = _unreachable(e)
        if cause is not None:
            raise LensforgeError(f"cannot reach '{path}': {describe(cause)}") from None
        return None
    except Exception as e:  # noqa: BLE001
        raise LensforgeError(f"cannot reach '{path}': {describe(e)}") from None
    size = info.get("size")
    return FileInfo(path, int(size) if size is not None else None, _remote_stamp(info))


def download(url: str, dest: str, storage_options: dict[str, Any] | None = None) -> None:
    """Copy ``url`` to the local file ``dest`` atomically."""
    fs, fpath = fs_and_path(url, storage_options)
    tmp = str(temp_path(dest, unique=True))  # workers may fetch the same file into one cache at once
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    try:
        fs.get_file(fpath, tmp)
        os.replace(tmp, dest)
    except Exception as e:  # noqa: BLE001
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise LensforgeError(f"cannot download '{url}': {describe(e)}") from None


def upload(src: str, url: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, fpath = fs_and_path(url, storage_options)
    try:
        fs.put_file(src, fpath)
    except Exception as e:  # noqa: BLE001
        raise LensforgeError(f"cannot write '{url}': {describe(e)}") from None


# --- reading ----------------------------------------------------------------------------------


class RangeError(OSError):
    """A ranged read failed (the sample is skipped and counted by the loader)."""


class Reader:
    """Byte ranges and sequential streams of local files or URLs, per process.

    ``read(path, start, end)`` → exactly ``end - start`` bytes, or :class:`RangeError`.
    ``read_many`` fetches several ranges at once (concurrently on async stores).
    ``open_stream(path, start)`` → a binary file positioned at ``start`` for sequential reading.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, max_open: int = 64):
        self.storage_options = dict(storage_options or {})
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()
        self._warned_ranges = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()
        return state

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # inherited descriptors share file offsets: never reuse them
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        fd = os.open(local_path(path), os.O_RDONLY)
        self._fds[path] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            with contextlib.suppress(OSError):
                os.close(old)
        return fd

    def read(self, path: str, start: int, end: int) -> bytes:
        n = end - start
        if not is_remote(path):
            try:
                data = os.pread(self._fd(path), n, start)
            except OSError as e:
                raise RangeError(f"{path}: read failed at {start}: {describe(e)}") from None
        else:
            fs, fpath = fs_and_path(path, self.storage_options)
            try:
                data = fs.cat_file(fpath, start=start, end=end)
            except LensforgeError:
                raise
            except Exception as e:  # noqa: BLE001 - network errors of every kind
                raise RangeError(f"{path}: ranged read {start}-{end} failed: {describe(e)}") from None
            data = self._check_range(path, data, start, end)
        if len(data) != n:
            raise RangeError(f"{path}: truncated: {len(data)} of {n} bytes at {start}")
        return data

    def _check_range(self, path: str, data: bytes, start: int, end: int) -> bytes:
        if len(data) > end - start:  # the server ignored Range and sent the whole file
            if not self._warned_ranges:
                self._warned_ranges = True
                log.warning("%s: the server ignores HTTP Range requests, so every sample downloads its whole shard; "
                            "use data.source.mode=streaming for such a store", path)
            data = data[start:end]
        return data

    def read_many(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        """Several ranges; each entry is the bytes or the exception of that read (never raises for one)."""
        if not paths:
            return []
        if not is_remote(paths[0]):
            out: list[bytes | Exception] = []
            for p, s, e in zip(paths, starts, ends):
                try:
                    out.append(self.read(p, s, e))
                except OSError as err:
                    out.append(err)
            return out
        fs, _ = fs_and_path(paths[0], self.storage_options)
        fpaths = [fs_and_path(p, self.storage_options)[1] for p in paths]
        try:
            got = fs.cat_ranges(fpaths, starts, ends, on_error="return")
        except Exception as e:  # noqa: BLE001
            return [RangeError(f"{paths[0]}: ranged reads failed: {describe(e)}")] * len(paths)
        out = []
        for p, s, e, d in zip(paths, starts, ends, got):
            if isinstance(d, BaseException):
                out.append(RangeError(f"{p}: ranged read {s}-{e} failed: {describe(d)}"))
                continue
            d = self._check_range(p, d, s, e)
            out.append(d if len(d) == e - s else RangeError(f"{p}: truncated: {len(d)} of {e - s} bytes at {s}"))
        return out

    @contextlib.contextmanager
    def open_stream(self, path: str, start: int = 0) -> Iterator[IO[bytes]]:
        """A sequential binary stream of ``path`` from byte ``start`` (seeks when it can, else skips)."""
        if not is_remote(path):
            with open(local_path(path), "rb", buffering=1 << 20) as f:
                f.seek(start)
                yield f
            return
        fs, fpath = fs_and_path(path, self.storage_options)
        f = None
        try:
            if protocol_of(path) in ("http", "https"):
                # one streamed GET per shard (the cheapest on any server, and the only way on one that
                # ignores Range); resuming mid-shard reads and drops the bytes before `start`
                f = fs.open(fpath, "rb", block_size=0)
                _skip(f, start)
            else:
                f = fs.open(fpath, "rb", block_size=STREAM_BLOCK, cache_type="readahead")
                f.seek(start)
        except (LensforgeError, RangeError):
            _close(f)
            raise
        except Exception as e:  # noqa: BLE001 - missing object, network: the caller skips the shard
            _close(f)
            raise RangeError(f"{path}: cannot stream from byte {start}: {describe(e)}") from None
        try:
            yield f
        finally:
            _close(f)


def _close(f: Any) -> None:
    if f is not None:
        with contextlib.suppress(Exception):
            f.close()


def _skip(f: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise RangeError(f"stream ended {n} bytes before the resume position")
        n -= len(chunk)
