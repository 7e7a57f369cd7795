"""Caption policy: which caption each sample trains on, and caption dropout for CFG.

A sample carries several caption fields (``dense``, ``short``, ``caption`` …). The policy picks one:
the configured ``field``, or a field drawn from ``mix`` ratios (``{dense: 0.9, short: 0.1}``); if the
sample lacks it, the ``fallback`` fields are tried in order; with probability ``dropout`` the prompt
becomes ``""`` (the unconditional branch of classifier-free guidance). Draws use a generator seeded
from (seed, epoch, index), so the choice is deterministic and survives resume.
"""

from __future__ import annotations

import math

import numpy as np

from lensforge.data.config import CaptionPolicyConfig, PackingConfig
from lensforge.errors import LensforgeError
from lensforge.interfaces import SampleError

DROPPED = "<dropped>"


class CaptionPolicy:
    """Chooses the training prompt of a sample (see the module docstring)."""

    def __init__(self, config: CaptionPolicyConfig):
        self.config = config
        if not 0.0 <= config.dropout <= 1.0:
            raise LensforgeError(f"data.captions.dropout must be in [0, 1], got {config.dropout}")
        if config.mix:
            if any(v < 0 for v in config.mix.values()) or sum(config.mix.values()) <= 0:
                raise LensforgeError(f"data.captions.mix needs non-negative ratios with a positive sum, got {config.mix}")
            self.fields = list(config.mix)
            w = np.asarray([config.mix[f] for f in self.fields], dtype=np.float64)
            self.probs = w / w.sum()
        else:
            self.fields = [config.field]
            self.probs = np.ones(1)

    def choose(self, captions: dict[str, str], rng: np.random.Generator) -> tuple[str, str]:
        """``(prompt, field)``; ``field`` is :data:`DROPPED` when dropped for CFG.

        Raises :class:`SampleError` when no usable caption field is present.
        """
        wanted = self.fields[int(rng.choice(len(self.fields), p=self.probs))] if len(self.fields) > 1 else self.fields[0]
        drop = rng.random() < self.config.dropout
        for f in [wanted] + [f for f in self.config.fallback if f != wanted]:
            text = captions.get(f)
            if isinstance(text, str) and text.strip():
                return ("", DROPPED) if drop else (text.strip(), f)
        raise SampleError(f"no caption among fields {[wanted] + list(self.config.fallback)} (has {sorted(captions)})")


def estimate_text_tokens(prompt: str, config: PackingConfig) -> int:
    """Text tokens a prompt is expected to cost (word count × tokens per word, or a fixed estimate)."""
    if config.text_tokens_per_word > 0:
        n = math.ceil(len(prompt.split()) * config.text_tokens_per_word)
    else:
        n = config.text_tokens_estimate if prompt else 0
    return max(int(config.text_tokens_min), int(n))
