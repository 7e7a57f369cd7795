"""One client for every OpenAI-compatible call lensforge makes (rubric writer, RL judge, reasoner, proposer).

See ``lensforge/llm/README.md``. Importing this package is light: the ``openai`` SDK is imported when a
client is created, torch only when a tensor is turned into an image part.

* :class:`EndpointConfig` — base URL, model, the *name* of the key's environment variable, limits, cache;
* :class:`LLMClient` — ``preflight()``, ``chat()``, ``chat_json()``, ``stats()``;
* :class:`ChatRequest` / :class:`ChatResult` / :class:`ChatError` — one request, its outcome, its failure;
* :func:`image_part`, :func:`text_part`, :func:`user_message`, :func:`parse_json_answer` — message helpers.
"""

from lensforge.llm.cache import ResponseCache, request_key
from lensforge.llm.client import (
    REASK_MESSAGE, ChatError, ChatRequest, ChatResult, EndpointError, LLMClient, Usage,
)
from lensforge.llm.config import EndpointConfig
from lensforge.llm.content import image_data_url, image_part, parse_json_answer, png_bytes, text_part, user_message
from lensforge.llm.ratelimit import TokenBucket

__all__ = [
    "REASK_MESSAGE", "ChatError", "ChatRequest", "ChatResult", "EndpointConfig", "EndpointError", "LLMClient",
    "ResponseCache", "TokenBucket", "Usage", "image_data_url", "image_part", "parse_json_answer", "png_bytes",
    "request_key", "text_part", "user_message",
]
