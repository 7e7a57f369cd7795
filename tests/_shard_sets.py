"""Shard sets written with ``tarfile`` for the index / streaming / remote tests (generated at test time)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return path


def caption_json(i: int, **extra) -> bytes:
    words = " ".join(f"w{i}_{j}" for j in range(3 + i % 9))
    return json.dumps({"dense": f"dense {words}", "short": f"short {i}", **extra}).encode()


def tricky_set(root: Path) -> Path:
    """Two shards (one in a subfolder) with everything the reader must get right: json and txt captions,
    width/height in the json or only in the image header, upper-case extensions, a folder with a dot,
    a name longer than 100 characters (GNU long-name header), a key without an image, one whose members
    are not adjacent, a corrupt image and a caption that is not utf-8."""
    sizes = [(24, 40), (32, 32), (40, 24), (20, 36)]
    a: list[tuple[str, bytes]] = []
    for i in range(10):
        h, w = sizes[i % 4]
        key = f"s{i:03d}"
        a.append((f"{key}.png", png(h, w, i)))
        a.append((f"{key}.json", caption_json(i, **({"width": w, "height": h} if i % 2 else {}), url=f"u{i}")))
    a.append(("txtonly.JPG", jpeg(28, 44, 50)))
    a.append(("txtonly.txt", b"  a caption from a txt member  "))
    a.append(("dir.with.dot/x.png", png(30, 30, 51)))
    a.append(("dir.with.dot/x.json", caption_json(51)))
    long = "l" * 120
    a.append((f"{long}.png", png(22, 22, 52)))
    a.append((f"{long}.json", caption_json(52)))
    a.append(("noimage.json", caption_json(53)))
    a.append(("z1.png", png(26, 34, 54)))
    a.append(("z2.png", png(34, 26, 55)))
    a.append(("z1.json", caption_json(54)))
    a.append(("z2.txt", b"z2 caption"))
    a.append(("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200))))  # corrupt image
    a.append(("bad.json", caption_json(56)))
    a.append(("latin.png", png(24, 24, 57)))
    a.append(("latin.txt", "caf\xe9".encode("latin-1")))  # not utf-8
    write_tar(root / "shard-a.tar", a)
    b = []
    for i in range(10, 18):
        h, w = sizes[i % 4]
        b.append((f"t{i:03d}.jpg", jpeg(h, w, i)))
        b.append((f"t{i:03d}.json", caption_json(i)))
    write_tar(root / "sub" / "shard-b.tar", b)
    return root


def plain_set(root: Path, shards: int, per_shard: int, start: int = 0, size=(24, 40)) -> Path:
    """``shards`` shards of ``per_shard`` conventional samples (png + json, adjacent)."""
    k = start
    for s in range(shards):
        members = []
        for _ in range(per_shard):
            h, w = size if k % 3 else size[::-1]
            members.append((f"k{k:05d}.png", png(h, w, k)))
            members.append((f"k{k:05d}.json", caption_json(k)))
            k += 1
        write_tar(root / f"shard-{s:04d}.tar", members)
    return root


def cfg(source: dict, workers: int = 0, repeat: bool = True, shuffle: bool = True):
    """A small packed ``data:`` section over ``source`` (32/48 px, 3 aspect ratios, 64-token batches)."""
    from lensforge.data.config import CaptionPolicyConfig, DataConfig, LoaderConfig, PackingConfig, ResolutionPolicyConfig

    return DataConfig(
        source=source,
        resolution=ResolutionPolicyConfig(base_resolutions=[32, 48], aspect_ratios=["2:3", "1:1", "3:2"]),
        captions=CaptionPolicyConfig(dropout=0.2),
        packing=PackingConfig(token_budget=64, lookahead=6, text_tokens_per_word=0.5),
        loader=LoaderConfig(num_workers=workers, repeat=repeat, shuffle=shuffle),
    )


def signature(b) -> tuple:
    """What identifies a batch: keys, prompts, image shapes, pixel sum."""
    return (tuple(b.keys), tuple(b.prompts), tuple(tuple(i.shape) for i in b.images),
            round(float(sum(i.double().sum() for i in b.images)), 5))
