"""Small, fast plugins used by the core tests (registry, recipes, CLI).

They implement the real interfaces minimally but honestly, so that core tests do not depend on
the first-party model plugins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lensforge.interfaces import DataSource, DiT, DiTSpec, LatentSpec, Sample, Stage, TextEncoder, TextFeatures, VAE
from lensforge.registry import register


@register("dit", "fake_dit")
class FakeDiT(DiT):
    """A linear velocity model over packed image tokens."""

    @dataclass(kw_only=True)
    class Config:
        in_channels: int = 8
        """Latent channels per token."""
        text_dims: list[int] = field(default_factory=lambda: [16])
        """Text feature width per layer."""
        depth: int = 1
        """Number of linear layers."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.layers = nn.ModuleList(nn.Linear(config.in_channels, config.in_channels) for _ in range(config.depth))

    @classmethod
    def input_spec(cls, config: Config) -> DiTSpec:
        return DiTSpec(latent_channels=config.in_channels, text_dims=tuple(config.text_dims))

    def forward(self, batch):
        x = batch.img_tokens
        for layer in self.layers:
            x = layer(x)
        return x


@register("vae", "fake_vae")
class FakeVAE(VAE):
    """Space-to-depth by ``factor`` with a fixed scale: exact inverse."""

    @dataclass(kw_only=True)
    class Config:
        factor: int = 2
        """Pixels per latent token side."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.latent_channels = 3 * config.factor**2
        self.downsample_factor = config.factor

    @classmethod
    def latent_spec(cls, config: Config) -> LatentSpec:
        return LatentSpec(channels=3 * config.factor**2, downsample=config.factor)

    def encode(self, images, *, sample=False, generator=None):
        return torch.nn.functional.pixel_unshuffle(images, self.config.factor)

    def decode(self, latents):
        return torch.nn.functional.pixel_shuffle(latents, self.config.factor)


@register("text_encoder", "fake_text")
class FakeText(TextEncoder):
    """One feature row per word: a hashed embedding."""

    @dataclass(kw_only=True)
    class Config:
        dim: int = 16
        """Feature width."""
        path: str | None = None
        """An optional folder that must exist (to test check_config)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.emb = nn.Embedding(97, config.dim)
        self.feature_dims = (config.dim,)

    @classmethod
    def feature_spec(cls, config: Config):
        return (config.dim,)

    @classmethod
    def check_config(cls, config: Config):
        import os

        if config.path is not None and not os.path.isdir(config.path):
            return [("path", f"folder '{config.path}' does not exist")]
        return []

    def encode(self, prompts):
        ids = [torch.tensor([sum(map(ord, w)) % 97 for w in p.split()], dtype=torch.long) for p in prompts]
        lengths = torch.tensor([len(i) for i in ids])
        flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
        return TextFeatures(layers=[self.emb(flat)], lengths=lengths)


@register("stage", "fake_stage")
class FakeStage(Stage):
    """Builds the recipe's models and prints their parameter count (no training)."""

    @dataclass(kw_only=True)
    class Config:
        note: str = ""
        """Free text."""

    @classmethod
    def run(cls, recipe):
        m = recipe.config.model
        dit = m.dit.build()
        n = sum(p.numel() for p in dit.parameters())
        print(f"fake stage built dit with {n} parameters")
        return n


@register("data", "fake_source")
class FakeSource(DataSource):
    """Flat-colour images with their colour as caption."""

    @dataclass(kw_only=True)
    class Config:
        size: int = 16
        """Number of samples."""

    def __len__(self) -> int:
        return self.config.size

    def get(self, index, size=None):
        h, w = size or (32, 32)
        g = torch.Generator().manual_seed(index)
        rgb = torch.rand(3, 1, 1, generator=g) * 2 - 1
        return Sample(image=rgb.expand(3, h, w).clone(), captions={"dense": f"colour {index}", "short": "c"}, key=str(index))


@register("reward", "fake_redness")
class RednessReward(__import__("lensforge.interfaces.reward", fromlist=["Reward"]).Reward):
    """Prefers red: 0.5 + mean(R − (G + B)/2)/2 over the image's pixels, clamped to [0, 1]."""

    @dataclass(kw_only=True)
    class Config:
        gain: float = 1.0
        """Multiplies the redness before the clamp."""

    def score(self, images, rows):
        from lensforge.interfaces.reward import RewardOutput

        out = []
        for im in images:
            im = torch.as_tensor(im).float()
            red = (im[0] - (im[1] + im[2]) / 2).mean()
            out.append(float((0.5 + self.config.gain * red / 2).clamp(0, 1)))
        return RewardOutput(rewards=out, items=[{"redness": r} for r in out])
