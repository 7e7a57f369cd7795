"""Settings of one OpenAI-compatible endpoint (the rubric writer, the RL judge, the reasoner, the proposer).

:class:`EndpointConfig` is a keyword-only dataclass with a docstring per field, so a plugin can embed it
in its recipe ``Config`` and ``lensforge validate`` checks its ranges. The API key is **never** a field:
``api_key_env`` names the environment variable that holds it, so a recipe, MLflow params and cache files
can be written and shared without leaking it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

from lensforge.errors import LensforgeError
from lensforge.recipe.plugin_config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass(kw_only=True)
class EndpointConfig:
    """One OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, llama.cpp, OpenAI, Azure)."""

    base_url: str
    """API root the SDK appends ``/chat/completions`` to, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """Model name as the server knows it (vLLM ``--served-model-name``, an Ollama tag, ``gpt-4.1``)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never configured); None = no key (a local server)."""
    timeout_s: PositiveFloat = 60.0
    """Seconds one HTTP request may take before it counts as a timeout (and is retried)."""
    max_retries: NonNegativeInt = 5
    """Retries of one request after a 429, a 5xx, 408/409, a timeout or a connection error (0 = try once)."""
    backoff_s: PositiveFloat = 1.0
    """First retry delay when the server sends no ``Retry-After``; doubles per retry, with jitter."""
    max_backoff_s: PositiveFloat = 60.0
    """Longest computed retry delay."""
    max_retry_after_s: PositiveFloat = 120.0
    """Longest ``Retry-After`` honoured; a longer one is waited for this long."""
    temperature: NonNegativeFloat | None = 0.0
    """Sampling temperature sent with every request (None = the server's default)."""
    max_tokens: PositiveInt | None = None
    """Completion-token cap sent with every request (None = the server's default)."""
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """Request field carrying ``max_tokens``: OpenAI's reasoning models want ``max_completion_tokens``."""
    concurrency: PositiveInt = 8
    """Requests in flight at once."""
    rpm: NonNegativeFloat = 0.0
    """Requests-per-minute limit (token bucket, one second of burst); 0 = unlimited."""
    tpm: NonNegativeFloat = 0.0
    """Tokens-per-minute limit (prompt + completion; estimated before, corrected after each call); 0 = unlimited."""
    json_reasks: NonNegativeInt = 2
    """Strict-JSON calls: how many times a malformed or invalid answer is re-asked before the request fails."""
    cache_dir: str | None = None
    """Folder of the on-disk response cache (None = no cache); a resumed run reads answers from it instead of paying again."""
    extra_body: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra request fields for every call (``seed``, vLLM's ``top_k`` …); part of the cache key."""

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when usable); ranges are also checked by recipe validation."""
        out = []
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            out.append(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            out.append("model must be a non-empty string")
        if self.api_key_env is not None and (not self.api_key_env or "=" in self.api_key_env or " " in self.api_key_env):
            out.append(f"api_key_env must be the NAME of an environment variable, got {self.api_key_env!r}")
        for name in ("timeout_s", "backoff_s", "max_backoff_s", "max_retry_after_s"):
            if not getattr(self, name) > 0:
                out.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_retries", "json_reasks", "rpm", "tpm"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.concurrency < 1:
            out.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens is not None and self.max_tokens < 1:
            out.append(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            out.append(f"temperature must be >= 0 or None, got {self.temperature}")
        return out

    def check(self) -> None:
        """Raise :class:`LensforgeError` listing every problem of :meth:`problems`."""
        probs = self.problems()
        if probs:
            raise LensforgeError("endpoint settings: " + "; ".join(probs))

    def api_key(self) -> str | None:
        """The key read from ``api_key_env`` now (None without one); a missing variable is a clear error.

        The value is handed to the SDK and nowhere else; never log or store it.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env, "")
        if not value.strip():
            raise LensforgeError(
                f"environment variable {self.api_key_env} is not set; it must hold the API key for {self.base_url} "
                f"(or drop api_key_env / --api-key-env for a server without authentication)"
            )
        return value.strip()

    @property
    def url(self) -> str:
        """``base_url`` without a trailing slash (how errors and logs name the endpoint)."""
        return self.base_url.rstrip("/")

    def describe(self) -> str:
        """One line for logs: ``model @ url`` and the limits (never the key)."""
        limits = [f"concurrency {self.concurrency}"]
        if self.rpm:
            limits.append(f"{self.rpm:g} rpm")
        if self.tpm:
            limits.append(f"{self.tpm:g} tpm")
        key = f", key from ${self.api_key_env}" if self.api_key_env else ", no key"
        cache = f", cache {self.cache_dir}" if self.cache_dir else ""
        return f"{self.model} @ {self.url} ({', '.join(limits)}{key}{cache})"


__all__ = ["EndpointConfig"]
