"""Helpers shared by the file-backed sources (folder, WebDataset shards)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lensforge.data.resolution import fit_image
from lensforge.interfaces.data import SampleError

if TYPE_CHECKING:
    import torch

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: json fields read as captions (in this order) unless a source's ``caption_keys`` says otherwise.
CAPTION_KEYS = ("dense", "short", "caption", "txt", "text", "alt", "prompt")


@dataclass
class RawRecord:
    """One stored sample as bytes: what ``build-shards`` copies and ``stats`` inspects."""

    key: str
    image: bytes
    ext: str
    captions: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)


def captions_from_json(data: bytes | str, keys: list[str] | tuple[str, ...], where: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``(captions, other fields)`` from a json sidecar; :class:`SampleError` if it does not parse."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(f"{where}: invalid json ({e})") from None
    if not isinstance(obj, dict):
        raise SampleError(f"{where}: json must be an object, got {type(obj).__name__}")
    caps = {k: obj[k].strip() for k in keys if isinstance(obj.get(k), str) and obj[k].strip()}
    return caps, {k: v for k, v in obj.items() if k not in caps}


def image_header_size(data: bytes, where: str) -> tuple[int, int]:
    """``(H, W)`` from the image header only (no full decode)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types for broken files
        raise SampleError(f"{where}: unreadable image header ({type(e).__name__}: {e})") from None
    return h, w


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decode to RGB; :class:`SampleError` on any decoding problem (truncated, corrupt …)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
    except Exception as e:
        raise SampleError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → float ``[3, H, W]`` in ``[-1, 1]``."""
    import torch  # imported on use: the sources stay light for recipe validation

    arr = np.asarray(img, dtype=np.uint8)
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    chw *= 1.0 / 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


def load_resized(data: bytes, size: tuple[int, int] | None, resize: str, where: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode, fit to ``size`` (``None`` = native) and convert; returns the tensor and the native ``(H, W)``."""
    img = decode_image(data, where)
    native = (img.size[1], img.size[0])
    if size is not None:
        img = fit_image(img, size, resize)
    return pil_to_tensor(img), native
