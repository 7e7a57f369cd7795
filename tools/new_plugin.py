"""Scaffold a new lensforge plugin (a working starting point, not a stub).

    python tools/new_plugin.py vae my_vae                     # plugins/lensforge_plugins/vae/my_vae.py
    python tools/new_plugin.py text_encoder my_te --out DIR   # DIR/my_te.py (name it as "my_te:MyTe")
    python tools/new_plugin.py vae my_vae --package DIR       # a separate distribution with its entry point

The generated VAE is a fixed orthogonal patch projection (space-to-depth + a seeded orthonormal
matrix; its decoder is the transpose) and the generated text encoder embeds hashed words with a
seeded table plus a positional term: both run, pass lensforge's contract tests and can be named in
a recipe right away; replace their internals with your model. See plugins/README.md.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VAE_TEMPLATE = '''"""``{name}``: {summary}"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensforge.errors import LensforgeError
from lensforge.interfaces import LatentSpec, VAE
{register_import}

{register_deco}class {cls}(VAE):
    """{summary}"""

    @dataclass(kw_only=True)
    class Config:
        patch: int = 16
        """Pixels per latent token side (the downsample factor)."""
        channels: int = 48
        """Latent channels per token (at most 3·patch²)."""
        seed: int = 0
        """Seed of the orthonormal projection."""

    def __init__(self, config: Config):
        super().__init__(config)
        d = 3 * config.patch**2
        if not 1 <= config.channels <= d:
            raise LensforgeError(f"{name}: channels must be in 1..{{d}} for patch {{config.patch}}")
        g = torch.Generator().manual_seed(config.seed)
        q, _ = torch.linalg.qr(torch.randn(d, config.channels, generator=g))
        self.proj = nn.Parameter(q.T.contiguous())  # [channels, 3·patch²], orthonormal rows
        self.latent_channels = config.channels
        self.downsample_factor = config.patch

    @classmethod
    def latent_spec(cls, config: Config) -> LatentSpec:
        return LatentSpec(channels=config.channels, downsample=config.patch)

    @classmethod
    def check_config(cls, config: Config) -> list[tuple[str, str]]:
        if not 1 <= config.channels <= 3 * config.patch**2:
            return [("channels", f"must be in 1..{{3 * config.patch ** 2}}")]
        return []

    @classmethod
    def tiny_config(cls) -> Config:
        return cls.Config(patch=4, channels=12)

    def encode(self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        p = self.downsample_factor
        if images.dim() != 4 or images.shape[-2] % p or images.shape[-1] % p:
            raise LensforgeError(f"{name}: images must be [B, 3, H, W] with H, W multiples of {{p}}")
        x = F.pixel_unshuffle(images, p)                      # [B, 3·p², h, w]
        return torch.einsum("cd,bdhw->bchw", self.proj, x) * 4.0

    def decode(self, latents: Tensor) -> Tensor:
        x = torch.einsum("cd,bchw->bdhw", self.proj, latents / 4.0)
        return F.pixel_shuffle(x, self.downsample_factor)
'''

TEXT_TEMPLATE = '''"""``{name}``: {summary}"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn

from lensforge.interfaces import TextEncoder, TextFeatures
{register_import}

{register_deco}class {cls}(TextEncoder):
    """{summary}"""

    @dataclass(kw_only=True)
    class Config:
        dim: int = 64
        """Feature width of each returned layer."""
        num_layers: int = 2
        """How many feature layers to return (each a different seeded table)."""
        buckets: int = 4096
        """Hash buckets for words."""
        max_words: int = 128
        """Words kept per prompt."""

    def __init__(self, config: Config):
        super().__init__(config)
        torch.manual_seed(0)
        self.tables = nn.ModuleList(nn.Embedding(config.buckets, config.dim) for _ in range(config.num_layers))
        self.pos = nn.Parameter(torch.randn(config.max_words, config.dim) * 0.1)
        self.feature_dims = tuple(config.dim for _ in range(config.num_layers))
        self.freeze()

    @classmethod
    def feature_spec(cls, config: Config) -> tuple[int, ...]:
        return tuple(config.dim for _ in range(config.num_layers))

    @classmethod
    def tiny_config(cls) -> Config:
        return cls.Config(dim=16, buckets=256)

    def _ids(self, prompt: str) -> torch.Tensor:
        words = prompt.lower().split()[: self.config.max_words]
        return torch.tensor([zlib.crc32(w.encode()) % self.config.buckets for w in words], dtype=torch.long)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextFeatures:
        ids = [self._ids(p) for p in prompts]
        flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
        pos = torch.cat([torch.arange(len(i)) for i in ids]) if ids else flat
        layers = [table(flat) + self.pos[pos] for table in self.tables]
        return TextFeatures(layers=layers, lengths=torch.tensor([len(i) for i in ids], dtype=torch.long))

    def train(self, mode: bool = True):
        return super().train(False)  # frozen
'''

TEMPLATES = {"vae": VAE_TEMPLATE, "text_encoder": TEXT_TEMPLATE}
SUMMARIES = {
    "vae": "Orthogonal patch projection VAE (space-to-depth + fixed orthonormal matrix).",
    "text_encoder": "Hashed-word embedding text encoder with a positional term (frozen).",
}

PACKAGE_TEST = '''"""lensforge's contract tests on {cls}."""

from lensforge.testing.contracts import {mixin}

from {pkg}.{name} import {cls}


class Test{cls}({mixin}):
    plugin_cls = {cls}
'''


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def render(kind: str, name: str, *, decorator: bool) -> str:
    return TEMPLATES[kind].format(
        name=name,
        cls=class_name(name),
        summary=SUMMARIES[kind],
        register_import="from lensforge.registry import register\n" if decorator else "",
        register_deco=f'@register("{kind}", "{name}")\n' if decorator else "",
    )


def write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise SystemExit(f"error: {path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=sorted(TEMPLATES), help="plugin kind")
    ap.add_argument("name", help="registry name, snake_case (e.g. my_vae)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write <out>/<name>.py (use it as '<name>:<Class>' in a recipe)")
    where.add_argument("--package", type=Path, help="create a separate distribution in this folder")
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    ap.add_argument("--decorator", action="store_true",
                    help="also register the class with @register on import (notebooks, code you import yourself)")
    args = ap.parse_args(argv)

    if not re.fullmatch(r"[a-z][a-z0-9_]*", args.name) or keyword.iskeyword(args.name):
        raise SystemExit(f"error: '{args.name}' must be a snake_case Python identifier")
    cls = class_name(args.name)
    if args.package:
        pkg_dir: Path = args.package
        dist = pkg_dir.name.replace("_", "-")
        pkg = re.sub(r"[^a-z0-9_]", "_", pkg_dir.name.lower())
        write(pkg_dir / pkg / "__init__.py", f'"""{dist}: lensforge plugins."""\n', args.force)
        write(pkg_dir / pkg / f"{args.name}.py", render(args.kind, args.name, decorator=False), args.force)
        write(pkg_dir / "pyproject.toml", textwrap.dedent(f'''\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.1.0"
            dependencies = ["lensforge"]

            [project.entry-points."lensforge.{args.kind}"]
            {args.name} = "{pkg}.{args.name}:{cls}"

            [tool.setuptools]
            packages = ["{pkg}"]
            '''), args.force)
        mixin = "VAEContract" if args.kind == "vae" else "TextEncoderContract"
        write(pkg_dir / "tests" / f"test_{args.name}.py",
              PACKAGE_TEST.format(cls=cls, mixin=mixin, pkg=pkg, name=args.name), args.force)
        print(f"next: pip install -e {pkg_dir}  then name it in a recipe as {{name: {args.name}}}")
        return 0
    if args.out:
        write(args.out / f"{args.name}.py", render(args.kind, args.name, decorator=args.decorator), args.force)
        print(f"next: put {args.out} on PYTHONPATH and name it in a recipe as {{name: \"{args.name}:{cls}\"}}")
        return 0
    target = REPO / "plugins" / "lensforge_plugins" / args.kind / f"{args.name}.py"
    write(target, render(args.kind, args.name, decorator=False), args.force)
    print("next: declare it in pyproject.toml, then `pip install --no-deps -e .`:")
    print(f'  [project.entry-points."lensforge.{args.kind}"]\n  {args.name} = "lensforge_plugins.{args.kind}.{args.name}:{cls}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
