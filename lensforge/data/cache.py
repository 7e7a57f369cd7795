"""Feature cache: precomputed VAE latents and text features, keyed by content + plugin configuration.

``lensforge cache RECIPE`` (:func:`build_cache`) walks the recipe's data loader in training order
and stores

* **latents** per ``(sample key, H×W)``: the VAE's (deterministic) latents ``[C, h, w]`` of the
  image the loader produced, together with a BLAKE2 hash of that image's pixels;
* **text features** per prompt (SHA-256 of the text): the text encoder's per-layer ``[L, D]``
  features, for every caption the caption policy can pick for a sample (each caption field in use)
  and the empty prompt (caption dropout).

Layout of ``cache_dir``::

    manifest.json       format, lensforge version, the VAE / text-encoder identity (plugin name,
                        config, weights-folder fingerprint and their hash), the shards with their
                        byte sizes and SHA-256, entry counts
    index.json          latent key -> [shard, tensor name, image hash]; prompt hash -> [shard, layers]
    latents-NNNNN.safetensors, text-NNNNN.safetensors

Staleness is never silent: :meth:`FeatureCache.open` compares the manifest's identities with the
recipe's plugins (LensforgeError naming what differs) and checks each shard's size; a shard's
SHA-256 is verified the first time it is read; :meth:`FeatureCache.latents` with ``images=`` checks
each image's pixel hash (a changed data source is reported, not trained on); a miss names the sample.

Identity of a plugin = its registry name + its config (minus runtime-only fields:
:data:`RUNTIME_FIELDS`) + a fingerprint of every weights folder its config names (file names,
sizes and a hash of each file's first and last MiB). Plugins without a folder must be fully
determined by their config (seeded initialisation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_path, atomic_write_text
from lensforge.interfaces.batch import TextFeatures

log = logging.getLogger("lensforge.data.cache")

FORMAT = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
#: config fields that change speed or memory, not features
RUNTIME_FIELDS = frozenset({"batch_size", "encode_batch_size", "decode_batch_size", "device"})
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# identities and hashes


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * _CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Cheap fingerprint of a weights folder: names, sizes, hash of each file's first/last MiB."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(folder)}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(_CHUNK))
            if size > 2 * _CHUNK:
                f.seek(size - _CHUNK)
                h.update(f.read(_CHUNK))
    return h.hexdigest()


def plugin_identity(ref: Any) -> dict[str, Any]:
    """``{plugin, config, weights, hash}`` of a recipe plugin node (:class:`PluginRef`)."""
    from lensforge.export.common import resolve_plugin_path
    from lensforge.recipe.plugin_config import config_to_dict

    cfg = config_to_dict(ref.config) if dataclasses.is_dataclass(ref.config) else dict(ref.config or {})
    cfg = {k: v for k, v in cfg.items() if k not in RUNTIME_FIELDS}
    weights: dict[str, str] = {}
    for k, v in sorted(cfg.items()):
        if (k == "path" or k.endswith("_path")) and isinstance(v, str) and v:
            folder = resolve_plugin_path(v)
            if folder is not None and folder.is_dir():
                weights[k] = folder_fingerprint(folder)
            elif folder is not None and folder.is_file():
                weights[k] = _sha256_file(folder)
            else:
                weights[k] = "missing"
    ident = {"plugin": ref.name, "config": cfg, "weights": weights}
    ident["hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return ident


def image_hash(image: Tensor) -> str:
    """BLAKE2 hash of an image tensor's dtype, shape and pixels."""
    t = image.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def latent_key(key: str, size: tuple[int, int]) -> str:
    return f"{key}@{int(size[0])}x{int(size[1])}"


def _identity_diff(kind: str, cached: dict[str, Any], now: dict[str, Any]) -> str:
    if cached.get("plugin") != now["plugin"]:
        return f"{kind} plugin was '{cached.get('plugin')}', the recipe uses '{now['plugin']}'"
    a, b = cached.get("config") or {}, now["config"]
    diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        return f"{kind} config changed ({'; '.join(diffs[:4])}{' …' if len(diffs) > 4 else ''})"
    wa, wb = cached.get("weights") or {}, now["weights"]
    changed = [k for k in sorted(set(wa) | set(wb)) if wa.get(k) != wb.get(k)]
    if changed:
        return f"{kind} weights folder content changed ({', '.join(changed)})"
    return f"{kind} identity changed"


# --------------------------------------------------------------------------------------------
# reading


class FeatureCache:
    """Read side: verified lookups of latents and text features (see module doc)."""

    def __init__(self, root: Path, manifest: dict[str, Any], index: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self._latents: dict[str, list[Any]] = index.get("latents", {})
        self._text: dict[str, list[Any]] = index.get("text", {})
        self._shards = {s["file"]: s for s in manifest.get("shards", [])}
        self._handles: dict[str, Any] = {}
        self._verified: set[str] = set()

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, vae_ref: Any, text_encoder_ref: Any) -> FeatureCache:
        """Open ``cache_dir`` for the recipe's VAE and text encoder; LensforgeError when stale or mismatched."""
        from lensforge import __version__

        root = Path(cache_dir).expanduser()
        if not (root / MANIFEST).is_file():
            raise LensforgeError(f"feature cache '{root}' has no {MANIFEST} (run `lensforge cache RECIPE` first)")
        manifest = _read_json(root / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise LensforgeError(f"feature cache '{root}' has format {manifest.get('format')}, this lensforge reads {FORMAT}; rebuild it")
        problems = []
        for kind, ref in (("vae", vae_ref), ("text_encoder", text_encoder_ref)):
            now = plugin_identity(ref)
            cached = manifest.get(kind) or {}
            if cached.get("hash") != now["hash"]:
                problems.append(_identity_diff(kind, cached, now))
        for s in manifest.get("shards", []):
            p = root / s["file"]
            if not p.is_file():
                problems.append(f"shard {s['file']} is missing")
            elif p.stat().st_size != s["bytes"]:
                problems.append(f"shard {s['file']} has {p.stat().st_size} bytes, the manifest says {s['bytes']}")
        if problems:
            raise LensforgeError(
                f"feature cache '{root}' is stale or does not match the recipe: " + "; ".join(problems)
                + " — rebuild it with `lensforge cache RECIPE --overwrite` or unset data.cache_dir"
            )
        if manifest.get("lensforge_version") != __version__:
            log.warning("feature cache %s was written by lensforge %s (this is %s)", root, manifest.get("lensforge_version"), __version__)
        index = _read_json(root / INDEX)
        log.info("feature cache %s: %d latents, %d prompts, %d shards", root, len(index.get("latents", {})),
                 len(index.get("text", {})), len(manifest.get("shards", [])))
        return cls(root, manifest, index)

    # ---------------------------------------------------------------- lookups

    def __len__(self) -> int:
        return len(self._latents)

    def has_latents(self, key: str, size: tuple[int, int]) -> bool:
        return latent_key(key, size) in self._latents

    def has_text(self, prompt: str) -> bool:
        return prompt_hash(prompt) in self._text

    def _handle(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            path = self.root / file
            if file not in self._verified:
                want = self._shards.get(file, {}).get("sha256")
                if want is None or _sha256_file(path) != want:
                    raise LensforgeError(f"feature cache shard '{path}' does not match its SHA-256 in {MANIFEST} (corrupt or changed)")
                self._verified.add(file)
            self._handles[file] = safe_open(str(path), framework="pt", device="cpu")
        return self._handles[file]

    def latents(self, keys: list[str], sizes: list[tuple[int, int]], images: list[Tensor] | None = None) -> list[Tensor]:
        """Latents ``[C, h, w]`` of samples ``keys`` at pixel ``sizes``; ``images`` (optional) are verified."""
        if len(keys) != len(sizes):
            raise LensforgeError(f"feature cache: {len(keys)} keys for {len(sizes)} sizes")
        out = []
        for i, (key, size) in enumerate(zip(keys, sizes)):
            entry = self._latents.get(latent_key(key, size))
            if entry is None:
                raise LensforgeError(
                    f"feature cache '{self.root}' has no latents for sample '{key}' at {size[0]}x{size[1]} "
                    "(cache more of the dataset: `lensforge cache RECIPE --steps N`)"
                )
            file, name, ihash = entry
            if images is not None and image_hash(images[i]) != ihash:
                raise LensforgeError(
                    f"feature cache '{self.root}': sample '{key}' at {size[0]}x{size[1]} is not the image that was cached "
                    "(the data source changed); rebuild the cache"
                )
            out.append(self._handle(file).get_tensor(name))
        return out

    def text(self, prompts: list[str]) -> TextFeatures:
        """Text features of ``prompts`` (sample order), as the text encoder would return them."""
        items = []
        for prompt in prompts:
            entry = self._text.get(prompt_hash(prompt))
            if entry is None:
                short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                raise LensforgeError(f"feature cache '{self.root}' has no text features for prompt {short!r} (rebuild the cache)")
            file, n_layers = entry
            h = prompt_hash(prompt)
            layers = [self._handle(file).get_tensor(f"{h}.{l}") for l in range(int(n_layers))]
            items.append(TextFeatures(layers=layers, lengths=torch.tensor([layers[0].shape[0]])))
        if not items:
            raise LensforgeError("feature cache: no prompts asked for")
        return TextFeatures.cat(items)


# --------------------------------------------------------------------------------------------
# writing


class FeatureCacheWriter:
    """Write side: add latents / text features, roll shards, then :meth:`close` writes index + manifest.

    An existing cache with the same identities is extended (new shards); a different one is an
    error unless ``overwrite``.
    """

    def __init__(self, cache_dir: str | os.PathLike, vae_ref: Any, text_encoder_ref: Any, *,
                 shard_bytes: int = 1 << 30, overwrite: bool = False):
        self.root = Path(cache_dir).expanduser()
        self.shard_bytes = int(shard_bytes)
        self.ident = {"vae": plugin_identity(vae_ref), "text_encoder": plugin_identity(text_encoder_ref)}
        self.shards: list[dict[str, Any]] = []
        self.index: dict[str, dict[str, Any]] = {"latents": {}, "text": {}}
        if (self.root / MANIFEST).is_file():
            if overwrite:
                self._clear()
            else:
                old = FeatureCache.open(self.root, vae_ref, text_encoder_ref)  # raises when mismatched
                self.shards = list(old.manifest.get("shards", []))
                self.index = {"latents": dict(old._latents), "text": dict(old._text)}
                log.info("extending feature cache %s (%d latents, %d prompts)", self.root, len(self.index["latents"]), len(self.index["text"]))
        self.root.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, dict[str, Tensor]] = {"latents": {}, "text": {}}
        self._pending_bytes = {"latents": 0, "text": 0}
        self._pending_index: dict[str, dict[str, Any]] = {"latents": {}, "text": {}}

    def _clear(self) -> None:
        for p in list(self.root.iterdir()):
            if p.name in (MANIFEST, INDEX) or (p.suffix == ".safetensors" and p.name.startswith(("latents-", "text-"))):
                p.unlink()
        log.info("feature cache %s: old contents removed (--overwrite)", self.root)

    def has_latents(self, key: str, size: tuple[int, int]) -> bool:
        lk = latent_key(key, size)
        return lk in self.index["latents"] or lk in self._pending_index["latents"]

    def has_text(self, prompt: str) -> bool:
        h = prompt_hash(prompt)
        return h in self.index["text"] or h in self._pending_index["text"]

    def add_latents(self, key: str, size: tuple[int, int], latent: Tensor, image: Tensor) -> None:
        lk = latent_key(key, size)
        name = hashlib.sha1(lk.encode()).hexdigest()
        t = latent.detach().to("cpu").contiguous()
        self._pending["latents"][name] = t
        self._pending_index["latents"][lk] = [None, name, image_hash(image)]
        self._grow("latents", t.numel() * t.element_size())

    def add_text(self, prompt: str, layers: list[Tensor]) -> None:
        h = prompt_hash(prompt)
        for l, t in enumerate(layers):
            self._pending["text"][f"{h}.{l}"] = t.detach().to("cpu").contiguous()
        self._pending_index["text"][h] = [None, len(layers)]
        self._grow("text", sum(t.numel() * t.element_size() for t in layers))

    def _grow(self, kind: str, n: int) -> None:
        self._pending_bytes[kind] += n
        if self._pending_bytes[kind] >= self.shard_bytes:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        from safetensors.torch import save_file

        if not self._pending[kind]:
            return
        n = sum(1 for s in self.shards if s["file"].startswith(kind + "-"))
        file = f"{kind}-{n:05d}.safetensors"
        with atomic_path(self.root / file) as tmp:
            save_file(self._pending[kind], str(tmp), metadata={"format": "pt", "lensforge_cache": kind})
        self.shards.append({"file": file, "bytes": (self.root / file).stat().st_size, "sha256": _sha256_file(self.root / file)})
        for k, entry in self._pending_index[kind].items():
            entry[0] = file
            self.index[kind][k] = entry
        self._pending[kind], self._pending_index[kind], self._pending_bytes[kind] = {}, {}, 0

    def close(self, *, source: dict[str, Any] | None = None) -> Path:
        """Flush the shards and write ``index.json`` then ``manifest.json`` (last, atomically)."""
        from lensforge import __version__

        self._flush("latents")
        self._flush("text")
        _write_json(self.root / INDEX, self.index)
        _write_json(self.root / MANIFEST, {
            "format": FORMAT,
            "lensforge_version": __version__,
            **self.ident,
            "source": source,
            "counts": {"latents": len(self.index["latents"]), "prompts": len(self.index["text"])},
            "shards": self.shards,
        })
        log.info("feature cache %s: %d latents, %d prompts in %d shards", self.root,
                 len(self.index["latents"]), len(self.index["text"]), len(self.shards))
        return self.root


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LensforgeError(f"cannot read '{path}': {e}") from e


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# building from a recipe


def caption_candidates(captions: dict[str, str] | None, policy: Any) -> list[str]:
    """Every prompt the caption policy can pick for a sample: each field in use, and ``""`` (dropout)."""
    fields = [k for k, w in (policy.mix or {}).items() if w > 0] if policy.mix else [policy.field]
    out = [captions[f] for f in fields if captions and f in captions and captions[f] is not None]
    if policy.dropout > 0 or not out:
        out.append("")
    return out


@torch.no_grad()
def encode_into(writer: FeatureCacheWriter, batches: Iterable[Any], vae: Any, text_encoder: Any, policy: Any,
                *, progress: Any = None) -> dict[str, int]:
    """Encode every (not yet cached) image and prompt of ``batches`` (DataBatch) into ``writer``.

    Each image and each prompt is encoded on its own (batch of one), as the pretrain stage's
    feature memo does, so a cached feature never depends on which other samples shared its batch.
    Latents are the VAE's deterministic encoding (posterior mode), stored as float32.
    """
    stats = {"samples": 0, "latents": 0, "prompts": 0}
    vae_params = list(vae.parameters())
    vae_dtype = vae_params[0].dtype if vae_params else torch.float32
    vae_device = vae_params[0].device if vae_params else torch.device("cpu")
    for batch in batches:
        for key, im in zip(batch.keys, batch.images):
            size = (int(im.shape[-2]), int(im.shape[-1]))
            if writer.has_latents(key, size):
                continue
            z = vae.encode(im[None].to(device=vae_device, dtype=vae_dtype))[0].float()
            writer.add_latents(key, size, z, im)
            stats["latents"] += 1
        for i in range(len(batch.keys)):
            meta = batch.meta[i] if batch.meta and i < len(batch.meta) else {}
            cands = caption_candidates(meta.get("captions") if isinstance(meta, dict) else None, policy)
            for p in [batch.prompts[i], *cands]:
                if not writer.has_text(p):
                    writer.add_text(p, text_encoder.encode([p]).sample(0))
                    stats["prompts"] += 1
        stats["samples"] += len(batch.keys)
        if progress is not None:
            progress(len(batch.keys))
    return stats
