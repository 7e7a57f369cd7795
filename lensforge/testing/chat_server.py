"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests (no network needed).

It speaks just enough of the protocol for :mod:`lensforge.llm` (and so the ``openai`` SDK):
``POST /v1/chat/completions`` and ``GET /v1/models``. Each chat request is recorded (arrival time,
headers, JSON body) and answered by, in order of precedence, the next queued :class:`Reply`
(:meth:`ChatServer.push`) or the ``handler`` function, which receives a :class:`ChatCall` and returns a
:class:`Reply`, a string (the answer text) or a dict/list (sent as JSON text)::

    from lensforge.testing.chat_server import ChatServer, Reply

    def judge(call):                       # answer from the request itself
        return {"answer": "yes"} if "red" in call.last_user_text() else {"answer": "no"}

    with ChatServer(judge) as server:
        server.push(Reply.error(429, retry_after=0.2))          # the first request is rate-limited
        cfg = EndpointConfig(base_url=server.base_url, model=server.model)
        ...
        assert server.num_calls == 2

Error replies carry an OpenAI-style ``{"error": {...}}`` body. A handler that raises answers 500 and the
exception is kept in :attr:`ChatServer.handler_errors`, so a test can assert it stayed empty.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    """How the server answers one chat request."""

    content: str | None = "ok"
    """The assistant message text (None = a null content)."""
    status: int = 200
    """HTTP status; not 200 = an error reply with ``message``."""
    message: str = "scripted error"
    """Error message in the ``{"error": {"message": …}}`` body of a non-200 reply."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (``Retry-After`` …)."""
    delay_s: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""
    top_logprobs: dict[str, float] | None = None
    """First token's alternatives ``{token: logprob}``, sent when the request asked for logprobs."""
    usage: tuple[int, int] | None = None
    """``(prompt_tokens, completion_tokens)``; default: about one token per 4 characters."""
    finish_reason: str = "stop"
    body: dict[str, Any] | None = None
    """A raw JSON body to send instead of a built one (for malformed replies)."""

    @classmethod
    def error(cls, status: int, message: str = "scripted error", *, retry_after: float | str | None = None,
              delay_s: float = 0.0) -> "Reply":
        """An error reply, optionally with a ``Retry-After`` header."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(content=None, status=status, message=message, headers=headers, delay_s=delay_s)

    @classmethod
    def json(cls, value: Any, **kw: Any) -> "Reply":
        """A reply whose text is ``value`` as JSON."""
        return cls(content=json.dumps(value), **kw)


@dataclass
class ChatCall:
    """One recorded request."""

    index: int
    time: float
    """``time.monotonic()`` at arrival."""
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @staticmethod
    def _texts(content: Any) -> list[str]:
        if isinstance(content, str):
            return [content]
        return [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]

    def text(self) -> str:
        """All text of all messages, joined by newlines."""
        return "\n".join(t for m in self.messages for t in self._texts(m.get("content")))

    def first_user_text(self) -> str:
        """Text of the first user message (the question; re-asks append later user messages)."""
        for m in self.messages:
            if m.get("role") == "user":
                return "\n".join(self._texts(m.get("content")))
        return ""

    def last_user_text(self) -> str:
        """Text of the last user message."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return "\n".join(self._texts(m.get("content")))
        return ""

    def images(self) -> list[Any]:
        """PIL images decoded from the ``image_url`` data-URL parts, in order."""
        from PIL import Image

        out = []
        for m in self.messages:
            content = m.get("content")
            if not isinstance(content, list):
                continue
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    url = (p.get("image_url") or {}).get("url", "")
                    if url.startswith("data:") and "," in url:
                        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                        img.load()
                        out.append(img)
        return out


Handler = Callable[[ChatCall], "Reply | str | dict | list"]


class ChatServer:
    """A threaded HTTP server on ``127.0.0.1`` (a free port) answering chat completions from a script."""

    def __init__(self, handler: Handler | None = None, *, replies: list[Reply] | tuple[Reply, ...] = (),
                 model: str = "test-model", api_key: str | None = None):
        """``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>`` (else 401)."""
        self.handler = handler
        self.model = model
        self.api_key = api_key
        self.calls: list[ChatCall] = []
        self.model_list_calls = 0
        self.handler_errors: list[BaseException] = []
        self._queue: list[Reply] = list(replies)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> "ChatServer":
        server = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    with server._lock:
                        server.model_list_calls += 1
                    if not server._authorised(self.headers):
                        return server._send(self, 401, server._error_body(401, server._auth_message(self.headers)))
                    return server._send(self, 200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "created": 0, "owned_by": "lensforge-test"}]})
                server._send(self, 404, server._error_body(404, f"no route {self.path}"))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return server._send(self, 404, server._error_body(404, f"no route {self.path}"))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return server._send(self, 400, server._error_body(400, "request body is not JSON"))
                server._answer(self, body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="chat-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- script -----------------------------------------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests (before the handler is asked)."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def num_calls(self) -> int:
        """Chat requests received so far."""
        with self._lock:
            return len(self.calls)

    # -- internals ----------------------------------------------------------------------------------------

    def _authorised(self, headers: Any) -> bool:
        return self.api_key is None or headers.get("Authorization", "") == f"Bearer {self.api_key}"

    @staticmethod
    def _auth_message(headers: Any) -> str:
        # like OpenAI's, the message quotes the key it was given (the client must scrub it)
        given = headers.get("Authorization", "").removeprefix("Bearer ")
        return f"Incorrect API key provided: {given}."

    @staticmethod
    def _error_body(status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "scripted_error", "code": status}}

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        with contextlib.suppress(OSError):
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

    def _answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            call = ChatCall(index=len(self.calls), time=time.monotonic(), path=h.path,
                            headers={k: v for k, v in h.headers.items()}, body=body)
            self.calls.append(call)
            if not self._authorised(h.headers):
                reply = Reply.error(401, self._auth_message(h.headers))
            else:
                reply = self._queue.pop(0) if self._queue else None
        if reply is None:
            if self.handler is None:
                return self._send(h, 500, self._error_body(500, "ChatServer: no reply scripted for this request"))
            try:
                got = self.handler(call)
            except Exception as e:  # noqa: BLE001 - reported to the client as a 500 and kept for the test
                with self._lock:
                    self.handler_errors.append(e)
                return self._send(h, 500, self._error_body(500, f"handler raised {type(e).__name__}: {e}"))
            reply = got if isinstance(got, Reply) else (Reply(content=got) if isinstance(got, str) or got is None
                                                        else Reply.json(got))
        if reply.delay_s:
            self._closing.wait(reply.delay_s)
        if reply.status != 200:
            return self._send(h, reply.status, self._error_body(reply.status, reply.message), reply.headers)
        if reply.body is not None:
            return self._send(h, 200, reply.body, reply.headers)
        text = reply.content
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": reply.finish_reason}
        if body.get("logprobs") and reply.top_logprobs:
            k = int(body.get("top_logprobs") or len(reply.top_logprobs))
            alts = sorted(reply.top_logprobs.items(), key=lambda kv: -kv[1])[:max(k, 1)]
            choice["logprobs"] = {"content": [{
                "token": alts[0][0], "logprob": alts[0][1], "bytes": list(alts[0][0].encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts]}]}
        if reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            prompt_tokens = max(1, len(call.text()) // 4)
            completion_tokens = max(1, len(text or "") // 4)
        self._send(h, 200, {
            "id": f"chatcmpl-test-{call.index}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, reply.headers)


__all__ = ["ChatCall", "ChatServer", "Reply"]
