"""The light halves of the VAE plugins: recipe ``Config`` s and the checks validation runs (no torch).

``lensforge validate`` checks recipes against these classes without importing torch or diffusers;
:class:`~lensforge_plugins.vae.flux2.Flux2VAE` and :class:`~lensforge_plugins.vae.tiny_ae.TinyAE`
subclass them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from lensforge.interfaces.schema import VAESchema
from lensforge.interfaces.specs import LatentSpec

#: Weight dtypes the VAE plugins accept.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def vae_folder(path: str) -> str:
    """The diffusers ``vae/`` folder: ``path`` itself, or ``path/vae`` for a Lens/diffusers root."""
    path = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "vae", "config.json")):
        return os.path.join(path, "vae")
    return path


class Flux2Schema(VAESchema):
    """Config and validation checks of: FLUX.2 VAE (diffusers AutoencoderKLFlux2) with Lens's patchify + BatchNorm normalisation."""

    @dataclass(kw_only=True)
    class Config:
        path: str | None = None
        """Local diffusers vae/ folder (config.json + diffusion_pytorch_model.safetensors), or a Lens root holding vae/."""
        config: dict[str, Any] = field(default_factory=dict)
        """AutoencoderKLFlux2 constructor arguments, used to build random weights when ``path`` is null."""
        dtype: str = "float32"
        """Weight dtype: float32, bfloat16 or float16."""
        upcast_fp32: bool = True
        """Run encode/decode in float32 whatever the weight dtype (FLUX.2 sets force_upcast)."""
        sample_posterior: bool = False
        """Default for encode(): sample the posterior instead of taking its mode."""
        decode_batch_size: int = 4
        """Decode at most this many images at once (bounds memory); 0 = all at once."""
        encode_batch_size: int = 0
        """Encode at most this many images at once; 0 = all at once."""
        tiling: bool = False
        """Use diffusers' tiled encode/decode for images larger than the VAE's tile size."""

    @classmethod
    def _vae_config(cls, config: Any) -> dict[str, Any] | None:
        if config.path is not None:
            p = os.path.join(vae_folder(config.path), "config.json")
            if not os.path.isfile(p):
                return None
            with open(p, encoding="utf-8") as f:
                return json.load(f)
        return dict(config.config)

    @classmethod
    def latent_spec(cls, config: Any) -> LatentSpec | None:
        vc = cls._vae_config(config)
        if vc is None:
            return None
        latent = int(vc.get("latent_channels", 32))
        p = vc.get("patch_size", (2, 2))
        blocks = vc.get("block_out_channels", (128, 256, 512, 512))
        return LatentSpec(channels=latent * int(p[0]) * int(p[1]), downsample=2 ** (len(blocks) - 1) * int(p[0]))

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # folder checks run in `lensforge fit`'s preflight, not in validate (recipes/lens_3b8.yaml
        # names folders of the training machine); moved here from check_config by the export/plan helper.
        out: list[tuple[str, str]] = []
        if config.path is not None:
            if not os.path.isdir(config.path):
                out.append(("path", f"VAE folder '{config.path}' does not exist"))
            elif not os.path.isfile(os.path.join(vae_folder(config.path), "config.json")):
                out.append(("path", f"'{config.path}' has no config.json (expected a diffusers vae/ folder)"))
        return out

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if config.dtype not in DTYPE_NAMES:
            out.append(("dtype", f"'{config.dtype}' is not one of {', '.join(DTYPE_NAMES)}"))
        if config.decode_batch_size < 0 or config.encode_batch_size < 0:
            out.append(("decode_batch_size", "batch sizes must be >= 0"))
        return out

    @classmethod
    def tiny_config(cls) -> Any:
        from lensforge.testing.fixtures import tiny_flux2_config

        return cls.Config(config=tiny_flux2_config())


class TinyAESchema(VAESchema):
    """Config and validation checks of: CPU-sized codec: fixed colour+DCT patch encoder, transpose decoder with trainable refinement."""

    @dataclass(kw_only=True)
    class Config:
        patch: int = 16
        """Pixels per latent token side (the downsample factor)."""
        basis: str = "dct"
        """``dct``: the lowest block-DCT frequencies of each token (``luma_coeffs``/``chroma_coeffs``);
        ``pixels``: an area-downsampled thumbnail, ``pixel_block``× smaller than the image, whose
        sub-pixels are packed into the tokens and decoded by bicubic upsampling (see the module doc)."""
        pixel_block: int = 4
        """``pixels`` basis: side of the pixel square each latent sub-pixel averages (divides ``patch``)."""
        luma_coeffs: int = 24
        """Lowest DCT frequencies kept for the luma component."""
        chroma_coeffs: int = 12
        """Lowest DCT frequencies kept for each of the two chroma components."""
        refine_channels: int = 16
        """Width of the residual refinement net in the decoder (0 = none)."""
        train_encoder: bool = False
        """Let fine-tuning change the encoder basis too (changes the latent space)."""
        weights: str | None = None
        """safetensors/pt file written by save_weights() (or a Lightning .ckpt) to load."""
        lr: float = 2e-3
        """AdamW learning rate when fitted on its own."""
        clamp_output: bool = True
        """Clamp decoded images to [-1, 1]."""

    @classmethod
    def latent_spec(cls, config: Any) -> LatentSpec:
        if config.basis == "pixels":
            return LatentSpec(channels=3 * (config.patch // config.pixel_block) ** 2, downsample=config.patch)
        return LatentSpec(channels=config.luma_coeffs + 2 * config.chroma_coeffs, downsample=config.patch)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        if config.patch < 1:
            return [("patch", "must be >= 1")]
        if config.basis not in ("dct", "pixels"):
            out.append(("basis", f"must be 'dct' or 'pixels', got '{config.basis}'"))
        elif config.basis == "pixels":
            if config.pixel_block < 1 or config.patch % config.pixel_block:
                out.append(("pixel_block", f"must be >= 1 and divide patch ({config.patch}), got {config.pixel_block}"))
            return out
        if not 1 <= config.luma_coeffs <= config.patch**2:
            out.append(("luma_coeffs", f"must be in 1..{config.patch ** 2}"))
        if not 0 <= config.chroma_coeffs <= config.patch**2:
            out.append(("chroma_coeffs", f"must be in 0..{config.patch ** 2}"))
        return out

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        if config.weights and not os.path.isfile(config.weights):
            return [("weights", f"file '{config.weights}' does not exist")]
        return []

    @classmethod
    def tiny_config(cls) -> Any:
        return cls.Config(patch=8, luma_coeffs=6, chroma_coeffs=3, refine_channels=4)


__all__ = ["DTYPE_NAMES", "Flux2Schema", "TinyAESchema", "vae_folder"]
