"""Reading a reasoner LLM's answer: Lens's output parsing (LENS_SPEC §5), shared by every LLM reasoner.

:func:`clean_answer` implements the five steps of the spec:

1. take the **last** harmony final-channel message — ``<|start|>assistant(<|channel|>final)?<|message|>…``
   up to ``<|return|>``, ``<|end|>`` or the end of the text; else a bare ``<|channel|>final<|message|>…``;
   else the text after a plain "assistant final" marker (an answer decoded without its special tokens),
   or, for a text that starts with "analysis", after a line-initial "final" marker;
2. drop ``<think>…</think>`` blocks (and anything before a lone ``</think>``) and leftover harmony
   markers;
3. a result that still starts with "analysis" is the model's reasoning, not an answer: empty;
4. strip a surrounding code fence and surrounding double quotes, collapse whitespace;
5. an empty result means "no rewrite": :func:`rewrite_from_answer` then falls back to the user's prompt
   and marks the rewrite failed ("empty rewrite"), so callers count it.

Lens applies these steps to its local GPT-OSS path and only strips the API path's answer; lensforge
applies them to both, because OpenAI-compatible servers running reasoning models (vLLM, Ollama) leak
``<think>`` blocks and harmony markers into ``content`` too.
"""

from __future__ import annotations

import re

from lensforge.interfaces.reasoner import Rewrite

_END = r"(?:<\|return\|>|<\|end\|>|$)"
_HARMONY_FINAL = re.compile(r"<\|start\|>assistant(?:<\|channel\|>final)?<\|message\|>(.*?)" + _END, re.S)
_BARE_FINAL = re.compile(r"<\|channel\|>final<\|message\|>(.*?)" + _END, re.S)
_PLAIN_ASSISTANT_FINAL = re.compile(r"assistant\s*final\s*", re.I)
_PLAIN_LINE_FINAL = re.compile(r"(?:^|\n)\s*final\s*", re.I)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_HARMONY_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_ANALYSIS_START = re.compile(r"^(?:assistant\s*)?analysis(?:\b|[A-Z])", re.I)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = None
    for m in pattern.finditer(text):
        found = m
    return found.group(1) if found is not None else None


def _after_plain_marker(text: str) -> str | None:
    """The text after the last plain "assistant final" marker (or line-initial "final" after an analysis)."""
    marks = list(_PLAIN_ASSISTANT_FINAL.finditer(text))
    if not marks and text.lstrip().lower().startswith("analysis"):
        marks = list(_PLAIN_LINE_FINAL.finditer(text))
    if not marks:
        return None
    rest = text[marks[-1].end():].strip()
    return rest or None


def clean_answer(raw: str | None) -> str:
    """The rewritten prompt in a reasoner's raw answer ("" when there is none); see the module docstring."""
    if not raw:
        return ""
    text = raw.strip()
    final = _last(_HARMONY_FINAL, text)
    if final is None:
        final = _last(_BARE_FINAL, text)
    if final is None:
        final = _after_plain_marker(text)
    if final is not None:
        text = final.strip()
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text.lower():
        text = re.split(r"</think>", text, flags=re.I)[-1]
    text = text.strip()
    plain = _after_plain_marker(text)
    if plain is not None:
        text = plain
    text = _HARMONY_TOKEN.sub(" ", text).strip()
    if _ANALYSIS_START.match(text):
        return ""
    if text.startswith("```") and text.endswith("```"):
        lines = text.splitlines()
        text = "\n".join(lines[1:-1]).strip() if len(lines) >= 3 else text.strip("`").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return " ".join(text.split())


def rewrite_from_answer(prompt: str, raw: str | None) -> Rewrite:
    """A :class:`Rewrite` from an answer: the cleaned text, or the user's prompt marked failed when empty."""
    text = clean_answer(raw)
    if not text:
        return Rewrite(prompt=prompt, text=prompt, raw=raw, ok=False, error="empty rewrite")
    return Rewrite(prompt=prompt, text=text, raw=raw)


__all__ = ["clean_answer", "rewrite_from_answer"]
