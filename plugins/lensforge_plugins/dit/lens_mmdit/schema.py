"""The light half of ``lens_mmdit``: its recipe ``Config`` and the checks validation runs (no torch).

:class:`LensMMDiTSchema` is what ``lensforge validate`` uses; :class:`~.model.LensMMDiT` subclasses it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from lensforge.errors import LensforgeError
from lensforge.interfaces.schema import DiTSchema
from lensforge.interfaces.specs import DiTSpec

from lensforge_plugins.dit.lens_mmdit.flavors import ARCH_FIELDS, FLAVORS, LensArch, default_mlp_hidden


class LensMMDiTSchema(DiTSchema):
    """Config and validation checks of the Lens dual-stream MMDiT."""

    @dataclass(kw_only=True)
    class Config:
        flavor: str = "3b8"
        """Size preset: ``3b8`` (the released Lens, 48 blocks × 1536), ``small`` or ``tiny`` (CPU)."""
        num_layers: int | None = None
        """Number of dual-stream blocks (None = the flavor's)."""
        num_heads: int | None = None
        """Attention heads; the width is ``num_heads × head_dim`` (None = the flavor's)."""
        head_dim: int | None = None
        """Channels per attention head; must equal ``sum(axes_dims_rope)`` (None = the flavor's)."""
        mlp_hidden_dim: int | None = None
        """SwiGLU hidden width (None = the flavor's, else ``int(width/3·8)``)."""
        in_channels: int | None = None
        """Latent channels per image token, i.e. the VAE's (None = the flavor's; 128 for Lens)."""
        out_channels: int | None = None
        """Predicted channels per image token (None = ``in_channels``)."""
        patch_size: int | None = None
        """How many latent pixels per token side the VAE packed (recorded in the exported config; 2 for Lens)."""
        text_dims: tuple[int, ...] | None = None
        """Width of each text-encoder layer fed in (None = the flavor's; Lens: 4 × 2880)."""
        text_layers: tuple[int, ...] | None = None
        """Text-encoder layer indices the features come from, recorded in the exported config (None = unknown)."""
        axes_dims_rope: tuple[int, ...] | None = None
        """RoPE channels per axis (frame, height, width), even, summing to ``head_dim`` (Lens: 8, 28, 28)."""
        rope_theta: float | None = None
        """RoPE base (None = the flavor's; 10000 for Lens)."""
        attention: str = "auto"
        """Attention backend (registry kind ``attention``): ``auto``, ``xformers``, ``sdpa_loop``, ``sdpa_masked``."""
        activation_checkpointing: bool = False
        """Recompute each block in the backward pass (``torch.utils.checkpoint``, non-reentrant)."""
        zero_init: bool = True
        """adaLN-Zero init: zero the modulation, ``norm_out`` and ``proj_out`` linears (blocks start as identity)."""

    # ---------------------------------------------------------------- config helpers

    @classmethod
    def tiny_config(cls) -> "LensMMDiTSchema.Config":
        return cls.Config(flavor="tiny", attention="sdpa_loop")

    @classmethod
    def resolve(cls, config: "LensMMDiTSchema.Config") -> LensArch:
        """Flavor defaults with the config's non-None overrides applied."""
        if config.flavor not in FLAVORS:
            raise LensforgeError(_unknown_flavor(config.flavor))
        vals = dict(FLAVORS[config.flavor])
        for name in ARCH_FIELDS:
            v = getattr(config, name)
            if v is not None:
                vals[name] = v
        if config.in_channels is not None and config.out_channels is None:
            vals["out_channels"] = config.in_channels
        if config.text_dims is not None and config.text_layers is None:
            vals["text_layers"] = None  # the flavor's layer indices belong to its own text encoder
        if vals["mlp_hidden_dim"] is None:
            vals["mlp_hidden_dim"] = default_mlp_hidden(vals["num_heads"] * vals["head_dim"])
        vals["text_dims"] = tuple(int(d) for d in vals["text_dims"])
        vals["axes_dims_rope"] = tuple(int(d) for d in vals["axes_dims_rope"])
        if vals["text_layers"] is not None:
            vals["text_layers"] = tuple(int(i) for i in vals["text_layers"])
        vals["rope_theta"] = float(vals["rope_theta"])
        return LensArch(**vals)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        if config.flavor not in FLAVORS:
            return [("flavor", _unknown_flavor(config.flavor))]
        a = cls.resolve(config)
        probs: list[tuple[str, str]] = []
        for name in ("num_layers", "num_heads", "head_dim", "mlp_hidden_dim", "in_channels", "out_channels", "patch_size"):
            if getattr(a, name) <= 0:
                probs.append((name, f"must be positive, got {getattr(a, name)}"))
        if not a.text_dims or any(d <= 0 for d in a.text_dims):
            probs.append(("text_dims", f"must be one or more positive widths, got {list(a.text_dims)}"))
        if a.text_layers is not None and len(a.text_layers) != len(a.text_dims):
            probs.append(("text_layers", f"has {len(a.text_layers)} entries for {len(a.text_dims)} text_dims"))
        if len(a.axes_dims_rope) != 3 or any(d <= 0 or d % 2 for d in a.axes_dims_rope):
            probs.append(("axes_dims_rope", f"must be three positive even ints, got {list(a.axes_dims_rope)}"))
        elif sum(a.axes_dims_rope) != a.head_dim:
            probs.append(("axes_dims_rope", f"sums to {sum(a.axes_dims_rope)} but head_dim is {a.head_dim}"))
        if a.rope_theta <= 0:
            probs.append(("rope_theta", f"must be positive, got {a.rope_theta}"))
        try:
            from lensforge import registry  # noqa: PLC0415

            known = registry.names("attention")
            if config.attention not in known and ":" not in config.attention:
                probs.append(("attention", f"unknown backend '{config.attention}'; known: {', '.join(known)}"))
        except LensforgeError as e:  # registry trouble is reported, not raised, at validate time
            probs.append(("attention", str(e)))
        return probs

    @classmethod
    def input_spec(cls, config: Any) -> DiTSpec | None:
        try:
            a = cls.resolve(config)
        except LensforgeError:
            return None
        return DiTSpec(latent_channels=a.in_channels, text_dims=a.text_dims)


def _unknown_flavor(name: str) -> str:
    close = difflib.get_close_matches(str(name), list(FLAVORS), n=2, cutoff=0.4)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown flavor '{name}'{hint}; flavors: {', '.join(FLAVORS)}"


__all__ = ["LensMMDiTSchema"]
