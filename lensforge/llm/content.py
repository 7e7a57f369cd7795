"""Message building blocks: text and image content parts, and reading a JSON answer out of a reply.

Images go to the endpoint inline as PNG data URLs (``{"type": "image_url", "image_url": {"url":
"data:image/png;base64,…"}}``), which vLLM, SGLang, Ollama, llama.cpp and OpenAI all accept. PNG
encoding is lossless and deterministic, so the same pixels always give the same request and hit the
same cache entry. Nothing here imports torch; a tensor is converted only when one is passed.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any


def text_part(text: str) -> dict[str, Any]:
    """A text content part: ``{"type": "text", "text": text}``."""
    return {"type": "text", "text": str(text)}


def _to_pil(image: Any) -> Any:
    """A PIL image from a PIL image, a uint8 ``[H,W]``/``[H,W,3|4]`` array or a ``[3,H,W]`` tensor in [-1, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    if type(image).__module__.split(".")[0] == "torch":
        import torch

        t = image.detach().to("cpu")
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be [3,H,W] (or [1,H,W]), got shape {tuple(image.shape)}")
        if t.dtype != torch.uint8:
            t = ((t.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        arr = t.permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    import numpy as np

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 [H,W] or [H,W,3|4], got dtype {image.dtype}")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)):
            return Image.fromarray(np.ascontiguousarray(image))
        raise ValueError(f"image array must be [H,W] or [H,W,3|4], got shape {image.shape}")
    raise TypeError(f"cannot turn {type(image).__name__} into an image (PIL image, uint8 array or [3,H,W] tensor)")


def png_bytes(image: Any) -> bytes:
    """PNG encoding of ``image`` (see :func:`image_part` for the accepted types)."""
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def image_data_url(image: Any) -> str:
    """``data:image/png;base64,…`` for ``image``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def image_part(image: Any, *, detail: str | None = None) -> dict[str, Any]:
    """An image content part holding ``image`` as a PNG data URL.

    ``image`` is a PIL image, a uint8 numpy array ``[H,W]`` / ``[H,W,3]`` / ``[H,W,4]``, or a torch
    tensor ``[3,H,W]`` (float in [-1, 1], the DiT/VAE convention, or uint8). ``detail`` (``low`` /
    ``high`` / ``auto``) is passed on for OpenAI; other servers ignore it.
    """
    url: dict[str, Any] = {"url": image_data_url(image)}
    if detail is not None:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def user_message(*parts: Any) -> dict[str, Any]:
    """A user message from strings (text parts) and content-part dicts, in order."""
    content = [text_part(p) if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def parse_json_answer(text: str | None) -> Any:
    """The JSON value in a model's reply; raises ``ValueError`` saying why there is none.

    Accepts the bare JSON, JSON inside a ```` ```json ```` fence, or JSON surrounded by prose (the
    outermost ``{…}`` / ``[…]`` span) — models add these even when told not to.
    """
    if text is None or not text.strip():
        raise ValueError("the answer was empty")
    s = text.strip()
    candidates = [s]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(s)]
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = s.find(open_), s.rfind(close)
        if 0 <= i < j:
            candidates.append(s[i:j + 1])
    err: Exception | None = None
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError as e:
            err = err or e
    raise ValueError(f"the answer is not valid JSON ({err})")


__all__ = ["image_data_url", "image_part", "parse_json_answer", "png_bytes", "text_part", "user_message"]
