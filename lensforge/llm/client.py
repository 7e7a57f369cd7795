"""The one client lensforge uses for every OpenAI-compatible chat-completions call.

Built on the official ``openai`` SDK (request building, transport, timeouts, response parsing, error
classes; it speaks to vLLM, SGLang, Ollama, llama.cpp, OpenAI and Azure alike). lensforge adds what a
training run needs around it:

* a batched API usable from synchronous code — requests run on a thread pool of ``concurrency``
  workers, results come back **in input order**, and a request that fails returns a :class:`ChatResult`
  whose ``error`` says why instead of raising (the RL judge drops and counts such samples);
* requests-per-minute and tokens-per-minute token buckets, and a shared pause when a 429 says
  ``Retry-After``;
* retries with exponential backoff and jitter on 429 / 5xx / 408 / 409 / timeouts / connection errors.
  The SDK's own retry loop is switched off (``max_retries=0``) because its retries would bypass the
  rate limiter, its backoff constants cannot be configured, and its retries could not be counted;
  ``Retry-After`` (seconds, milliseconds or an HTTP date) is honoured all the same;
* strict JSON answers: parse, validate with the caller's function, **re-ask** a malformed answer (the
  bad answer and a correction go back to the model) up to ``json_reasks`` times;
* an on-disk response cache (:mod:`lensforge.llm.cache`) so a resumed run never pays twice;
* token counters and latency statistics (:meth:`LLMClient.stats`) for MLflow;
* :meth:`LLMClient.preflight`: an unreachable endpoint or a rejected key is a clear
  :class:`EndpointError` (a :class:`~lensforge.errors.LensforgeError`, CLI exit 2) before any work.

The API key is read from the environment variable ``config.api_key_env`` and handed to the SDK only; it
is never logged, never part of an error message (server messages are scrubbed of it), a cache key or a
cache file.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lensforge.errors import LensforgeError
from lensforge.llm.cache import ResponseCache, request_key
from lensforge.llm.config import EndpointConfig
from lensforge.llm.content import parse_json_answer
from lensforge.llm.ratelimit import TokenBucket

log = logging.getLogger("lensforge.llm")

#: What a validator may raise to reject an answer (anything else is a bug and propagates).
VALIDATION_ERRORS = (ValueError, TypeError, KeyError, IndexError)

#: The correction appended after a malformed or invalid answer; ``{reason}`` is the validator's message.
REASK_MESSAGE = ("Your previous answer could not be used: {reason}. Answer again with only the JSON "
                 "in the required format, and no other text.")

#: Token estimate of one image in a request, for the tokens-per-minute bucket before usage is known.
IMAGE_TOKENS_ESTIMATE = 800
#: Completion-token estimate when no ``max_tokens`` is set.
COMPLETION_TOKENS_ESTIMATE = 512


class EndpointError(LensforgeError):
    """An endpoint cannot be used: unreachable, key rejected, or a request failed for good.

    The message names the endpoint's URL (and the key's variable name), never the key.
    """


@dataclass(frozen=True)
class ChatError:
    """Why one request failed (returned in :attr:`ChatResult.error`, not raised).

    ``kind`` is one of ``timeout``, ``connection``, ``rate_limit``, ``server`` (5xx), ``auth``
    (401/403), ``http`` (another 4xx), ``bad_response`` (no choices in the reply) or
    ``invalid_answer`` (strict JSON still malformed or invalid after the re-asks).
    """

    kind: str
    message: str
    status: int | None = None
    attempts: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass(kw_only=True)
class ChatRequest:
    """One chat-completions request; ``None`` fields take the endpoint config's value."""

    messages: list[dict[str, Any]]
    """OpenAI-style messages; content may be a string or a list of parts (:func:`~lensforge.llm.image_part`)."""
    temperature: float | None = None
    """Overrides ``EndpointConfig.temperature``."""
    max_tokens: int | None = None
    """Overrides ``EndpointConfig.max_tokens``."""
    top_logprobs: int | None = None
    """Ask for the first answer tokens' log-probabilities with this many alternatives (a yes/no judge: P("yes"))."""
    response_format: dict[str, Any] | None = None
    """E.g. ``{"type": "json_object"}`` where the server supports it."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra request fields, merged over ``EndpointConfig.extra_body``."""
    tag: Any = None
    """The caller's own label, copied to the result (not sent, not part of the cache key)."""


@dataclass
class Usage:
    """Tokens of one result (summed over re-asks; zero for a cache hit's spending, see ``ChatResult.cached``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(kw_only=True)
class ChatResult:
    """The outcome of one request, in the order the requests were given."""

    index: int
    """Position of the request in the batch."""
    text: str | None = None
    """The answer's text (for a failed strict-JSON request: the last invalid answer)."""
    value: Any = None
    """Strict-JSON calls: what the validator returned for the parsed answer."""
    top_logprobs: dict[str, float] | None = None
    """First answer token's alternatives ``{token: logprob}`` when ``top_logprobs`` was asked and served."""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    """Tokens of this result's answer (as reported by the server; also for cache hits)."""
    cached: bool = False
    """Answered from the on-disk cache (no request made)."""
    latency_s: float = 0.0
    """Wall time spent on this result, retries, waits and re-asks included."""
    attempts: int = 0
    """HTTP requests made for this result."""
    reasks: int = 0
    """Strict-JSON re-asks made."""
    error: ChatError | None = None
    """Why the request failed (None when it succeeded)."""
    tag: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> "ChatResult":
        """Raise :class:`EndpointError` if the request failed; returns ``self`` otherwise."""
        if self.error is not None:
            raise EndpointError(self.error.message)
        return self

    def token_probability(self, *tokens: str) -> float | None:
        """Summed probability of the first answer token being one of ``tokens``.

        Compared after stripping whitespace and lower-casing ("Yes", " yes" and "YES" all count as
        "yes"). None when no log-probabilities came back.
        """
        if self.top_logprobs is None:
            return None
        want = {t.strip().lower() for t in tokens}
        return float(sum(math.exp(lp) for tok, lp in self.top_logprobs.items() if tok.strip().lower() in want))

    def yes_probability(self, yes: Sequence[str] = ("yes",), no: Sequence[str] = ("no",)) -> float | None:
        """P(yes) / (P(yes) + P(no)) from the first token's alternatives; None when neither appears.

        None (not 0) lets a judge drop the sample instead of scoring it as a "no".
        """
        p_yes, p_no = self.token_probability(*yes), self.token_probability(*no)
        if p_yes is None or p_no is None or p_yes + p_no <= 0.0:
            return None
        return p_yes / (p_yes + p_no)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds a response's ``retry-after-ms`` / ``Retry-After`` (number or HTTP date) asks to wait."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            v = float(value) / scale
            return v if math.isfinite(v) and v >= 0 else None
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


def _count_text(content: Any) -> tuple[int, int]:
    """``(characters of text, number of images)`` in a message's content."""
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                chars += len(str(part.get("text", "")))
            elif part.get("type") in ("image_url", "input_image", "image"):
                images += 1
    return chars, images


class _Stats:
    """Counters and latencies behind :meth:`LLMClient.stats` (thread-safe)."""

    COUNTERS = ("results", "failed", "requests", "responses", "retries", "rate_limited", "timeouts",
                "connection_errors", "server_errors", "http_errors", "invalid_answers", "reasks", "cache_hits",
                "prompt_tokens", "completion_tokens")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.latencies: list[float] = []
        self.wait_s = 0.0

    def add(self, **kv: float) -> None:
        with self._lock:
            for k, v in kv.items():
                if k == "wait_s":
                    self.wait_s += v
                else:
                    self.counts[k] += v

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.latencies.append(seconds)

    def counters(self) -> dict[str, int]:
        """The counters alone (cheap: for a progress bar)."""
        with self._lock:
            return {k: int(v) for k, v in self.counts.items()}

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self.counts.items()}
            out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
            lat = sorted(self.latencies)
            wait_s = self.wait_s
        out["rate_limit_wait_s"] = wait_s
        if lat:
            out["latency_mean_s"] = sum(lat) / len(lat)
            out["latency_p50_s"] = lat[len(lat) // 2]
            out["latency_p95_s"] = lat[min(len(lat) - 1, int(math.ceil(0.95 * len(lat))) - 1)]
            out["latency_max_s"] = lat[-1]
        return out


class LLMClient:
    """Batched, rate-limited, cached chat completions against one endpoint.

    ::

        cfg = EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct", rpm=600)
        with LLMClient(cfg) as llm:
            llm.preflight()
            results = llm.chat_json([ChatRequest(messages=[...]) for ...], validate=my_check, progress="judge")
            scores = [r.value if r.ok else None for r in results]
            mlflow.log_metrics({f"judge/{k}": v for k, v in llm.stats().items()})

    Thread-safe; calls from several threads share the ``concurrency`` workers and the rate limits.
    Do not call it from inside one of its own workers (a validator must not make requests).
    """

    def __init__(self, config: EndpointConfig):
        config.check()
        self._config = config
        api_key = config.api_key()  # missing variable -> LensforgeError naming it
        self._secret = api_key or ""
        import openai

        self._openai = openai
        # max_retries=0: retries happen here, through the rate limiter (see the module docstring).
        # A server without authentication gets a placeholder bearer token (the SDK insists on one), so the
        # SDK never falls back to an OPENAI_API_KEY the user did not name.
        self._sdk = openai.OpenAI(base_url=config.url, api_key=api_key or "no-key",
                                  timeout=config.timeout_s, max_retries=0)
        self._cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._rpm = TokenBucket(config.rpm) if config.rpm > 0 else None
        self._tpm = TokenBucket(config.tpm) if config.tpm > 0 else None
        self._pause_lock = threading.Lock()
        self._pause_until = 0.0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._stats = _Stats()
        self._rng = random.Random()
        log.debug("llm client: %s", config.describe())

    # -- public -------------------------------------------------------------------------------------

    @property
    def config(self) -> EndpointConfig:
        return self._config

    def __repr__(self) -> str:
        return f"LLMClient({self._config.describe()})"

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close the HTTP connections."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._sdk.close()

    def preflight(self) -> list[str]:
        """Check the endpoint answers (``GET {base_url}/models``, no tokens spent); returns the served model ids.

        Raises :class:`EndpointError` when it cannot be reached, answers 5xx, or rejects the key. A
        server without a model list (404) passes. A model missing from a non-empty list is logged as a
        warning, not an error (Azure deployments and some proxies list other names).
        """
        cfg = self._config
        openai = self._openai
        try:
            page = self._sdk.with_options(timeout=min(cfg.timeout_s, 10.0), max_retries=0).models.list()
            ids = [str(getattr(m, "id", "")) for m in (getattr(page, "data", None) or [])]
        except openai.APITimeoutError:
            raise EndpointError(f"cannot reach {cfg.url}: no answer within {min(cfg.timeout_s, 10.0):g} s "
                                f"(is the server running and the URL right?)") from None
        except openai.APIConnectionError as e:
            raise EndpointError(f"cannot reach {cfg.url}: {self._scrub(self._cause(e))} "
                                f"(is the server running and the URL right?)") from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status in (401, 403):
                raise EndpointError(self._auth_message(status)) from None
            if status >= 500:
                raise EndpointError(f"{cfg.url} answered HTTP {status} to GET /models: "
                                    f"{self._scrub(self._server_message(e))}") from None
            log.info("llm: %s has no model list (HTTP %d); reachable, continuing", cfg.url, status)
            return []
        if ids and cfg.model not in ids:
            log.warning("llm: model %r is not among the models %s lists (%s)", cfg.model, cfg.url,
                        ", ".join(ids[:10]) + (" …" if len(ids) > 10 else ""))
        log.info("llm: %s reachable (%d models listed)", cfg.url, len(ids))
        return ids

    def chat(self, requests: Sequence[ChatRequest | list[dict[str, Any]]], *,
             progress: str | None = None) -> list[ChatResult]:
        """Answer ``requests`` (a :class:`ChatRequest` or a plain message list each); results in input order.

        A failed request has ``result.error`` set; nothing is raised for it. ``progress`` is the label of a
        progress bar on stderr (None = no bar).
        """
        return self._run_batch(requests, validate=None, max_reasks=0, progress=progress)

    def chat_json(self, requests: Sequence[ChatRequest | list[dict[str, Any]]],
                  validate: Callable[[Any], Any] | Sequence[Callable[[Any], Any]] | None = None, *,
                  max_reasks: int | None = None, progress: str | None = None) -> list[ChatResult]:
        """Like :meth:`chat`, for answers that must be JSON; ``result.value`` holds the validated value.

        ``validate`` (one callable, or one per request) receives the parsed JSON and returns the value to
        keep, or raises ``ValueError`` (``TypeError``/``KeyError``/``IndexError``) with a message the model
        can act on. A reply that is not JSON or fails validation is re-asked — the bad answer and
        :data:`REASK_MESSAGE` are appended to the conversation — up to ``max_reasks`` times (default
        ``config.json_reasks``); after that the result carries an ``invalid_answer`` error. Only answers
        that passed validation are cached.
        """
        n = len(requests)
        if validate is None:
            validators: list[Callable[[Any], Any]] = [lambda obj: obj] * n
        elif callable(validate):
            validators = [validate] * n
        else:
            validators = list(validate)
            if len(validators) != n:
                raise ValueError(f"chat_json: {len(validators)} validators for {n} requests")
        reasks = self._config.json_reasks if max_reasks is None else max_reasks
        return self._run_batch(requests, validate=validators, max_reasks=reasks, progress=progress)

    def stats(self) -> dict[str, float]:
        """Counters since creation (or :meth:`reset_stats`), ready for ``mlflow.log_metrics`` under a prefix.

        ``results``, ``failed``, ``requests`` (HTTP requests sent), ``responses`` (answered 2xx),
        ``retries``, ``rate_limited`` (429s), ``timeouts``, ``connection_errors``, ``server_errors``,
        ``http_errors``, ``invalid_answers``, ``reasks``, ``cache_hits``, ``prompt_tokens``,
        ``completion_tokens``, ``total_tokens`` (tokens paid for: cache hits add none),
        ``rate_limit_wait_s`` (time spent waiting on the buckets and 429 pauses), and over answered HTTP
        requests ``latency_mean_s``, ``latency_p50_s``, ``latency_p95_s``, ``latency_max_s``.
        """
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters (e.g. per training step)."""
        with self._stats._lock:
            self._stats.reset()

    # -- batch machinery ----------------------------------------------------------------------------

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._config.concurrency, thread_name_prefix="lensforge-llm")
            return self._pool

    def _run_batch(self, requests: Sequence[Any], *, validate: list[Callable[[Any], Any]] | None,
                   max_reasks: int, progress: str | None) -> list[ChatResult]:
        reqs = [r if isinstance(r, ChatRequest) else ChatRequest(messages=list(r)) for r in requests]
        if not reqs:
            return []
        bar = None
        if progress is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(reqs), desc=progress, unit="req", dynamic_ncols=True)
        pool = self._executor()
        futures = {pool.submit(self._run_one, i, r, None if validate is None else validate[i], max_reasks): i
                   for i, r in enumerate(reqs)}
        results: list[ChatResult | None] = [None] * len(reqs)
        try:
            for fut in concurrent.futures.as_completed(futures):
                res = fut.result()  # only a bug (e.g. in a validator) raises here
                results[futures[fut]] = res
                if bar is not None:
                    bar.update(1)
                    c = self._stats.counters()
                    bar.set_postfix(failed=c["failed"], cached=c["cache_hits"],
                                    tokens=c["prompt_tokens"] + c["completion_tokens"], refresh=False)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        return [r for r in results if r is not None]

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        """The request body without ``model`` and ``messages`` (sent as ``extra_body``), config merged in."""
        cfg = self._config
        body: dict[str, Any] = dict(cfg.extra_body)
        temperature = req.temperature if req.temperature is not None else cfg.temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = req.max_tokens if req.max_tokens is not None else cfg.max_tokens
        if max_tokens is not None:
            body[cfg.max_tokens_param] = max_tokens
        if req.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = int(req.top_logprobs)
        if req.response_format is not None:
            body["response_format"] = req.response_format
        body.update(req.params)
        return body

    def _run_one(self, index: int, req: ChatRequest, validate: Callable[[Any], Any] | None,
                 max_reasks: int) -> ChatResult:
        t0 = time.monotonic()
        cfg = self._config
        body = self._body(req)
        key = None
        if self._cache is not None:
            key = request_key({"url": cfg.url, "model": cfg.model, "messages": req.messages, "params": body,
                               "mode": "text" if validate is None else "json"})
            entry = self._cache.get(key)
            if entry is not None:
                res = self._from_entry(index, req, entry)
                if validate is not None:
                    try:
                        res.value = validate(parse_json_answer(res.text))
                    except VALIDATION_ERRORS as e:  # the validator changed since: ask again
                        log.debug("llm cache: entry %s no longer validates (%s); asking again", key[:12], e)
                        res = None
                if res is not None:
                    res.latency_s = time.monotonic() - t0
                    self._stats.add(results=1, cache_hits=1)
                    return res
        messages = list(req.messages)
        usage = Usage()
        attempts = reasks = 0
        while True:
            answer, err, n = self._call(messages, body)
            attempts += n
            if err is not None:
                self._stats.add(results=1, failed=1)
                log.warning("llm: request %d failed: %s", index, err.message)
                return ChatResult(index=index, error=err, attempts=attempts, reasks=reasks, usage=usage,
                                  latency_s=time.monotonic() - t0, tag=req.tag)
            usage.prompt_tokens += answer["usage"]["prompt_tokens"]
            usage.completion_tokens += answer["usage"]["completion_tokens"]
            res = ChatResult(index=index, text=answer["text"], top_logprobs=answer["top_logprobs"],
                             finish_reason=answer["finish_reason"], usage=usage, attempts=attempts,
                             reasks=reasks, tag=req.tag)
            if validate is not None:
                try:
                    res.value = validate(parse_json_answer(answer["text"]))
                except VALIDATION_ERRORS as e:
                    reason = str(e) or type(e).__name__
                    if reasks >= max_reasks:
                        self._stats.add(results=1, failed=1, invalid_answers=1)
                        res.error = ChatError(
                            kind="invalid_answer", attempts=attempts,
                            message=f"{cfg.url}: the answer of {cfg.model} was still invalid after {reasks} "
                                    f"re-ask{'s' if reasks != 1 else ''}: {self._scrub(reason)}")
                        log.warning("llm: request %d failed: %s", index, res.error.message)
                        res.latency_s = time.monotonic() - t0
                        return res
                    reasks += 1
                    self._stats.add(reasks=1)
                    log.info("llm: request %d: invalid answer (%s); re-asking (%d/%d)", index, reason, reasks,
                             max_reasks)
                    messages = messages + [{"role": "assistant", "content": answer["text"] or ""},
                                           {"role": "user", "content": REASK_MESSAGE.format(reason=reason)}]
                    continue
            if key is not None:
                self._cache.put(key, {"model": cfg.model, "text": res.text, "top_logprobs": res.top_logprobs,
                                      "finish_reason": res.finish_reason,
                                      "usage": {"prompt_tokens": usage.prompt_tokens,
                                                "completion_tokens": usage.completion_tokens},
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self._stats.add(results=1)
            res.latency_s = time.monotonic() - t0
            return res

    @staticmethod
    def _from_entry(index: int, req: ChatRequest, entry: dict[str, Any]) -> ChatResult:
        u = entry.get("usage") or {}
        return ChatResult(index=index, text=entry.get("text"), top_logprobs=entry.get("top_logprobs"),
                          finish_reason=entry.get("finish_reason"), cached=True, tag=req.tag,
                          usage=Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))))

    # -- one HTTP exchange with retries ---------------------------------------------------------------

    def _estimate_tokens(self, messages: list[dict[str, Any]], body: dict[str, Any]) -> int:
        chars = images = 0
        for m in messages:
            c, i = _count_text(m.get("content"))
            chars += c
            images += i
        completion = body.get(self._config.max_tokens_param) or COMPLETION_TOKENS_ESTIMATE
        return int(chars / 4) + IMAGE_TOKENS_ESTIMATE * images + int(completion) + 8 * len(messages)

    def _wait_turn(self, est_tokens: int) -> float:
        """Block for a 429 pause and the buckets; returns seconds waited."""
        waited = 0.0
        while True:
            with self._pause_lock:
                delay = self._pause_until - time.monotonic()
            if delay <= 0:
                break
            time.sleep(delay)
            waited += delay
        if self._rpm is not None:
            waited += self._rpm.acquire(1)
        if self._tpm is not None:
            waited += self._tpm.acquire(est_tokens)
        return waited

    def _pause_all(self, seconds: float) -> None:
        with self._pause_lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        cfg = self._config
        if retry_after is not None:  # honour the server; a little jitter on top spreads the herd
            base = min(retry_after, cfg.max_retry_after_s)
            return base + self._rng.uniform(0.0, 0.1 * base)
        delay = min(cfg.max_backoff_s, cfg.backoff_s * (2.0 ** retry))
        return delay * self._rng.uniform(0.5, 1.0)

    def _call(self, messages: list[dict[str, Any]], body: dict[str, Any]
              ) -> tuple[dict[str, Any] | None, ChatError | None, int]:
        """``(answer, None, attempts)`` or ``(None, error, attempts)`` after retries."""
        cfg = self._config
        openai = self._openai
        est = self._estimate_tokens(messages, body)
        attempt = 0
        while True:
            attempt += 1
            waited = self._wait_turn(est)
            if waited:
                self._stats.add(wait_s=waited)
            self._stats.add(requests=1)
            t = time.monotonic()
            status: int | None = None
            retry_after: float | None = None
            try:
                completion = self._sdk.chat.completions.create(model=cfg.model, messages=messages, extra_body=body)
            except openai.APITimeoutError:
                kind, retryable, detail = "timeout", True, f"no answer within {cfg.timeout_s:g} s"
                self._stats.add(timeouts=1)
            except openai.APIConnectionError as e:
                kind, retryable, detail = "connection", True, f"cannot connect ({self._cause(e)})"
                self._stats.add(connection_errors=1)
            except openai.APIStatusError as e:
                status = e.status_code
                retry_after = _retry_after_seconds(getattr(e.response, "headers", None))
                if status == 429:
                    kind, retryable = "rate_limit", True
                    self._stats.add(rate_limited=1)
                    if retry_after is not None:
                        self._pause_all(min(retry_after, cfg.max_retry_after_s))
                elif status >= 500:
                    kind, retryable = "server", True
                    self._stats.add(server_errors=1)
                elif status in (401, 403):
                    kind, retryable = "auth", False
                    self._stats.add(http_errors=1)
                else:
                    kind, retryable = "http", status in (408, 409)
                    self._stats.add(http_errors=1)
                detail = (self._auth_message(status) if kind == "auth"
                          else f"HTTP {status}: {self._server_message(e)}")
            else:
                latency = time.monotonic() - t
                answer = self._read_completion(completion)
                if answer is None:
                    if self._tpm is not None:
                        self._tpm.adjust(-est)
                    return None, ChatError(kind="bad_response", attempts=attempt,
                                           message=f"{cfg.url}: the reply had no choices"), attempt
                self._stats.latency(latency)
                u = answer["usage"]
                self._stats.add(responses=1, prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"])
                if self._tpm is not None and (u["prompt_tokens"] or u["completion_tokens"]):
                    self._tpm.adjust(u["prompt_tokens"] + u["completion_tokens"] - est)
                return answer, None, attempt
            detail = self._scrub(detail)
            if not retryable or attempt > cfg.max_retries:
                tries = f" after {attempt} attempt{'s' if attempt != 1 else ''}" if attempt > 1 else ""
                msg = detail if kind == "auth" else f"{cfg.url}: {detail}{tries}"
                return None, ChatError(kind=kind, message=msg, status=status, attempts=attempt), attempt
            delay = self._backoff(attempt - 1, retry_after)
            self._stats.add(retries=1)
            log.info("llm: %s: %s; retry %d/%d in %.2f s", cfg.url, detail, attempt, cfg.max_retries, delay)
            time.sleep(delay)

    @staticmethod
    def _read_completion(completion: Any) -> dict[str, Any] | None:
        choices = getattr(completion, "choices", None) or []
        if not choices:
            return None
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else None
        top = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            first = content_lp[0]
            alts = getattr(first, "top_logprobs", None) or []
            top = {str(a.token): float(a.logprob) for a in alts if getattr(a, "token", None) is not None}
            if getattr(first, "token", None) is not None:
                top.setdefault(str(first.token), float(first.logprob))
        usage = getattr(completion, "usage", None)
        return {"text": text, "top_logprobs": top, "finish_reason": getattr(choice, "finish_reason", None),
                "usage": {"prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                          "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0)}}

    # -- messages that never carry the key ----------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    @staticmethod
    def _cause(e: BaseException) -> str:
        cause = e.__cause__ or e.__context__ or e
        text = " ".join(str(cause).split())[:200]
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__

    @staticmethod
    def _server_message(e: Any) -> str:
        body = getattr(e, "body", None)
        msg = None
        if isinstance(body, dict):
            err = body.get("error", body)
            msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
        msg = msg or getattr(e, "message", "") or type(e).__name__
        msg = " ".join(str(msg).split())
        return msg[:300] + ("…" if len(msg) > 300 else "")

    def _auth_message(self, status: int) -> str:
        cfg = self._config
        if cfg.api_key_env:
            return (f"{cfg.url} rejected the API key from ${cfg.api_key_env} (HTTP {status}); "
                    f"check the variable's value and that it is meant for this server")
        return (f"{cfg.url} requires an API key (HTTP {status}); name the environment variable that holds "
                f"it with api_key_env (CLI: --api-key-env VAR)")


__all__ = ["ChatError", "ChatRequest", "ChatResult", "EndpointError", "LLMClient", "REASK_MESSAGE", "Usage",
           "VALIDATION_ERRORS"]
