"""Contract for reward plugins (registry kind ``reward``): score images against prompt-set rows.

A reward scores a batch of generated images, each against its prompt-set row (``{"id", "prompt",
"category", "rubric": [{"id", "question", "weight", "check"?}], "scene"?, …}``, see
:mod:`lensforge.data.prompt_sets`), and returns one reward per image in ``[0, 1]`` plus a score per
rubric item. Evaluation (``lensforge eval``), validation sampling and RL all call rewards this way.

**An image that could not be scored** (a judge that answered malformed JSON after every re-ask, an
endpoint that kept failing) gets reward ``NaN`` and a reason in ``failures`` — never a silent 0:
RL drops it from its group and counts it (a 0 would bias the group's advantages), evaluation
reports how many were dropped.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from lensforge.interfaces.plugin import Plugin


@dataclass
class RewardOutput:
    """The scores of one batch (lists aligned with the images)."""

    rewards: list[float]
    """Reward per image in ``[0, 1]``; ``NaN`` when the image could not be scored."""
    items: list[dict[str, float]]
    """Per image, the score in ``[0, 1]`` of each rubric item that was scored (item id → score)."""
    failures: list[str | None] = field(default_factory=list)
    """Per image, why it was not scored (None when it was)."""
    details: list[dict[str, Any]] = field(default_factory=list)
    """Per image, anything else worth recording (per-attribute means, GenEval's strict verdict …)."""

    def __post_init__(self) -> None:
        n = len(self.rewards)
        if not self.failures:
            self.failures = [None if not math.isnan(r) else "not scored" for r in self.rewards]
        if not self.details:
            self.details = [{} for _ in range(n)]
        if not (len(self.items) == len(self.failures) == len(self.details) == n):
            raise ValueError(f"RewardOutput: {n} rewards, {len(self.items)} item dicts, {len(self.failures)} failures, "
                             f"{len(self.details)} details")

    @property
    def ok(self) -> list[bool]:
        """Whether each image was scored."""
        return [f is None and not math.isnan(r) for r, f in zip(self.rewards, self.failures)]

    @property
    def num_failed(self) -> int:
        return sum(not o for o in self.ok)

    @staticmethod
    def concat(parts: Sequence["RewardOutput"]) -> "RewardOutput":
        return RewardOutput(rewards=[r for p in parts for r in p.rewards], items=[i for p in parts for i in p.items],
                            failures=[f for p in parts for f in p.failures], details=[d for p in parts for d in p.details])


class Reward(Plugin):
    """Scores images against prompt-set rows (see the module docstring)."""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @abc.abstractmethod
    def score(self, images: Sequence[Any], rows: Sequence[dict[str, Any]]) -> RewardOutput:
        """Score ``images`` (``[3, H, W]`` float tensors in ``[-1, 1]``, uint8 arrays or PIL images), each
        against the row at the same position."""

    def check_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """Problems that make rows unscorable by this reward (``"row ID: why"``), checked before any
        image is generated; empty when every row can be scored."""
        return []

    def preflight(self) -> None:
        """Raise :class:`~lensforge.errors.LensforgeError` when the reward cannot work here (an
        unreachable endpoint …); called once before a run starts."""

    def stats(self) -> dict[str, float]:
        """Counters since construction for logging (requests, failures, latency, tokens …)."""
        return {}

    def close(self) -> None:
        """Release connections, flush caches."""


__all__ = ["Reward", "RewardOutput"]
