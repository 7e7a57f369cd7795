"""``openai_compatible``: rewrite prompts with any chat-completions server (vLLM, SGLang, llama.cpp, Ollama, OpenAI).

Lens's API path (LENS_SPEC §5): ``[system: SYSTEM_PROMPT, user: prompt]``, no "keep reasoning private"
suffix, ``max_tokens`` 4096. Requests go through :mod:`lensforge.llm` — one client for every
OpenAI-compatible call: batched and concurrent, rate limits, retries honouring ``Retry-After``, the
on-disk response cache (a resumed search pays nothing for rewrites it already has), token counters and
the key read from the environment variable named by ``endpoint.api_key_env``.

Answers are cleaned with Lens's output parsing (:mod:`lensforge.reasoners.parsing`); a failed request
or an empty answer falls back to the user's prompt and is reported on the :class:`Rewrite` (``ok``
False, ``error``) and in :meth:`OpenAICompatibleReasoner.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lensforge.interfaces.reasoner import Reasoner, Rewrite
from lensforge.llm.config import EndpointConfig
from lensforge.recipe.plugin_config import PositiveInt


class OpenAICompatibleReasoner(Reasoner):
    """Rewrites prompts with a chat-completions endpoint (Lens's API path), through lensforge.llm."""

    @dataclass(kw_only=True)
    class Config:
        endpoint: EndpointConfig
        """The chat-completions server: base_url, model, api_key_env (the variable's NAME), limits, cache_dir."""
        system_prompt_file: str | None = None
        """Plain-text system prompt (null = the shipped Lens-style prompt; a search's best_system_prompt.txt works)."""
        max_tokens: PositiveInt = 4096
        """Completion-token cap of one rewrite (Lens's API path: 4096)."""

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        return [("endpoint", p) for p in config.endpoint.problems()]

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        from pathlib import Path

        f = config.system_prompt_file
        return [] if f is None or Path(f).expanduser().is_file() else [("system_prompt_file", f"'{f}' does not exist")]

    def __init__(self, config: Any = None):
        super().__init__(config)
        from lensforge.llm.client import LLMClient

        _ = self.system_prompt  # a missing or empty system-prompt file fails here, before any request
        self.client = LLMClient(self.config.endpoint)
        self._counts = {"rewrites": 0, "failed": 0, "empty": 0, "request_errors": 0}

    def describe(self) -> str:
        return f"openai_compatible: {self.config.endpoint.describe()}"

    def preflight(self) -> None:
        self.client.preflight()

    def rewrite(self, prompts: Sequence[str], *, system_prompt: str | None = None) -> list[Rewrite]:
        from lensforge.llm.client import ChatRequest
        from lensforge.reasoners.parsing import rewrite_from_answer

        sp = self.system_prompt if system_prompt is None else system_prompt
        unique = list(dict.fromkeys(str(p) for p in prompts))
        requests = [ChatRequest(messages=[{"role": "system", "content": sp}, {"role": "user", "content": p}],
                                max_tokens=self.config.max_tokens) for p in unique]
        results = self.client.chat(requests)
        by_prompt: dict[str, Rewrite] = {}
        for p, res in zip(unique, results):
            if res.error is not None:
                rw = Rewrite(prompt=p, text=p, raw=res.text, ok=False, error=f"request failed: {res.error.message}",
                             notes={"error_kind": res.error.kind})
                self._counts["request_errors"] += 1
            else:
                rw = rewrite_from_answer(p, res.text)
                self._counts["empty"] += int(not rw.ok)
                if res.cached:
                    rw.notes["cached"] = True
            by_prompt[p] = rw
        out = [by_prompt[str(p)] for p in prompts]
        self._counts["rewrites"] += len(out)
        self._counts["failed"] += sum(not r.ok for r in out)
        return out

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._counts.items()}
        out.update({f"llm/{k}": v for k, v in self.client.stats().items()})
        return out

    def close(self) -> None:
        self.client.close()


__all__ = ["OpenAICompatibleReasoner"]
