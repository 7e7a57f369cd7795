"""Object stores on 127.0.0.1 for tests and benchmarks (no network needed).

* :class:`HttpFileServer` — a folder served by Python's ``http.server`` (threaded), with or
  without HTTP ``Range`` support (the standard ``SimpleHTTPRequestHandler`` has none).
* :class:`S3Server` — a real S3-compatible server: moto's server mode, in a thread of this process
  (``ThreadedMotoServer``) or as a separate process (``separate_process=True``, for benchmarks, so the
  server does not share the measuring process's interpreter lock). Needs ``moto[server]`` (the
  ``dev`` extra).

::

    with S3Server() as s3:
        s3.upload_folder(shards, "bucket/lens")
        src = WebDatasetSource(WebDatasetSource.Config(path="s3://bucket/lens/", storage_options=s3.storage_options))
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` + single ``Range: bytes=a-b`` requests (206 Partial Content)."""

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[override]
        m = _RANGE.match(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if m is None or os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, b = m.group(1), m.group(2)
        if a == "":
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), min(int(b) if b else size - 1, size - 1)
        if start >= size or start > end:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[override]
        n = getattr(self, "_remaining", None)
        if n is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        while n > 0:
            chunk = source.read(min(n, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            n -= len(chunk)


class _PlainHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # socketserver's default backlog (5) drops concurrent connections (1 s SYN retries)
    daemon_threads = True


class HttpFileServer:
    """Serve ``root`` on ``http://127.0.0.1:<port>/`` in a thread (``ranges=False``: plain ``http.server``)."""

    def __init__(self, root: str | os.PathLike, ranges: bool = True):
        handler = _RangeHandler if ranges else _PlainHandler
        self.httpd = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HttpFileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server on 127.0.0.1 (see the module docstring); ``storage_options`` for s3fs."""

    def __init__(self, separate_process: bool = False, key_buffer: int | None = None):
        self.separate_process = separate_process
        self.key_buffer = key_buffer
        self._proc: Any = None
        self._server: Any = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-west-2"}}

    def __enter__(self) -> "S3Server":
        if self.key_buffer is not None:  # objects larger than this are kept in temporary files, not memory
            os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(self.key_buffer)
        if self.separate_process:
            self.port = _free_port()
            env = dict(os.environ)
            self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (exit {self._proc.poll()})")
                time.sleep(0.2)
        else:
            from moto.server import ThreadedMotoServer

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            self.port = self._server.get_host_and_port()[1]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self._proc.kill()
        if self._server is not None:
            self._server.stop()

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def upload_folder(self, local: str | os.PathLike, dest: str) -> str:
        """Create the bucket of ``dest`` (``bucket/prefix``) and copy every file under ``local`` there;
        returns ``s3://dest/``."""
        fs = self.filesystem()
        bucket = dest.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        files = [os.path.join(d, f) for d, _, fs_ in os.walk(local) for f in fs_]
        rel = [os.path.relpath(p, local).replace(os.sep, "/") for p in files]
        fs.put(files, [f"{dest.rstrip('/')}/{r}" for r in rel])
        return f"s3://{dest.rstrip('/')}/"

