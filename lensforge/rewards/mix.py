"""The ``mix`` reward: a weighted sum of other rewards (e.g. a rubric judge plus the verifier).

Each component scores the whole batch; the mixed reward of an image is ``Σ w_i r_i / Σ w_i`` (so it
stays in ``[0, 1]``) and its items are the components' items prefixed with the component's name. An
image any component failed to score is not scored (``NaN``), with the component's reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from lensforge.errors import LensforgeError
from lensforge.interfaces.reward import Reward, RewardOutput
from lensforge.recipe.plugin_config import PluginRef, PositiveFloat, plugin_field


@dataclass(kw_only=True)
class MixComponent:
    """One reward of a mix and its weight."""

    reward: PluginRef = plugin_field("reward")
    """The reward plugin node (``{name: verifier}``, ``{name: rubric_judge, …}``)."""
    weight: PositiveFloat = 1.0
    """Its weight in the sum."""
    label: str | None = None
    """Prefix of its items (default: the plugin name)."""


class MixReward(Reward):
    """A weighted sum of other rewards."""

    @dataclass(kw_only=True)
    class Config:
        components: list[MixComponent] = field(default_factory=list)
        """The rewards to mix (at least one)."""

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        if not config.components:
            return [("components", "give at least one {reward: {name: …}, weight: …}")]
        labels = [c.label or c.reward.name for c in config.components]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        return [("components", f"labels must be unique (set label:), repeated: {dup}")] if dup else []

    def __init__(self, config: Config):
        super().__init__(config)
        problems = self.check_config(config)
        if problems:
            raise LensforgeError("mix reward: " + "; ".join(f"{k}: {m}" for k, m in problems))
        self.parts = [(c.label or c.reward.name, float(c.weight), c.reward.build()) for c in config.components]

    def check_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        return [p for _, _, r in self.parts for p in r.check_rows(rows)]

    def preflight(self) -> None:
        for _, _, r in self.parts:
            r.preflight()

    def score(self, images: Sequence[Any], rows: Sequence[dict[str, Any]]) -> RewardOutput:
        outs = [(label, w, r.score(images, rows)) for label, w, r in self.parts]
        total = sum(w for _, w, _ in outs)
        rewards, items, failures, details = [], [], [], []
        for i in range(len(images)):
            fail = next((f"{label}: {o.failures[i]}" for label, _, o in outs if not o.ok[i]), None)
            rewards.append(math.nan if fail else sum(w * o.rewards[i] for _, w, o in outs) / total)
            items.append({f"{label}/{k}": v for label, _, o in outs for k, v in o.items[i].items()})
            failures.append(fail)
            details.append({label: {"reward": o.rewards[i], **o.details[i]} for label, _, o in outs})
        return RewardOutput(rewards=rewards, items=items, failures=failures, details=details)

    def stats(self) -> dict[str, float]:
        return {f"{label}/{k}": v for label, _, r in self.parts for k, v in r.stats().items()}

    def close(self) -> None:
        for _, _, r in self.parts:
            r.close()


__all__ = ["MixComponent", "MixReward"]
