"""The ``verifier`` reward: the synthetic world's programmatic verifier, rubric item by item.

Two kinds of rows are scored:

* rows whose rubric items carry a machine-checkable ``check`` (``lensforge data prompts``): every
  checked item is scored by :func:`lensforge.data.checks.score_items`; the reward is the
  item-weighted mean times the clutter factor (extra objects cost, so spraying shapes does not pay);
* rows with only a ``scene`` (the held-out prompts of a training world): the per-attribute scores of
  :func:`lensforge.data.verifier.verify` are the items (``color``, ``shape``, ``size``, ``position``,
  ``count``, ``relation``, ``text``, ``background``); the reward is their mean (``overall``).

The verifier needs no network and no weights, so it is the CPU default for evaluation and RL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from lensforge.errors import LensforgeError
from lensforge.interfaces.reward import Reward, RewardOutput


class VerifierReward(Reward):
    """The synthetic world's programmatic verifier (no network, no weights)."""

    @dataclass(kw_only=True)
    class Config:
        score: Literal["mean", "clutter", "strict"] = "clutter"
        """Rubric rows: ``mean`` of the item scores (weighted), ``clutter`` = mean × objects/detections, or
        ``strict`` = 1 only when every item passes (GenEval's rule)."""

    @staticmethod
    def _kind(row: dict[str, Any]) -> str:
        rubric = row.get("rubric") or []
        if any(isinstance(it, dict) and isinstance(it.get("check"), dict) for it in rubric):
            return "items"
        if isinstance(row.get("scene"), dict):
            return "scene"
        return "none"

    def check_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        from lensforge.data.checks import row_check_problems

        out = []
        for r in rows:
            kind = self._kind(r)
            if kind == "none":
                out.append(f"row {r.get('id')}: no rubric item has a 'check' and there is no 'scene' (the verifier "
                           "scores only synthetic-world rows; use a VLM judge for other prompts)")
            elif kind == "items":
                out += [f"row {r.get('id')}: {p}" for p in row_check_problems(r)]
        return out

    def score(self, images: Sequence[Any], rows: Sequence[dict[str, Any]]) -> RewardOutput:
        from lensforge.data.checks import score_row
        from lensforge.data.verifier import analyze, verify

        if len(images) != len(rows):
            raise LensforgeError(f"verifier reward: {len(images)} images for {len(rows)} rows")
        rewards, items, failures, details = [], [], [], []
        for image, row in zip(images, rows):
            kind = self._kind(row)
            try:
                a = analyze(image)
                if kind == "items":
                    res = score_row(image, row, analysis=a)
                    r = {"mean": res["mean"], "clutter": res["score"], "strict": float(res["strict"])}[self.config.score]
                    rewards.append(float(r))
                    items.append({k: float(v) for k, v in res["items"].items()})
                    details.append({"kinds": res["kinds"], "strict": bool(res["strict"]), "clutter": res["clutter"],
                                    "detections": res["detections"]})
                elif kind == "scene":
                    res = verify(image, row["scene"], analysis=a)
                    rewards.append(float(res["overall"]))
                    items.append({k: float(v) for k, v in res.items() if k != "overall"})
                    details.append({"attributes": dict(res), "detections": len(a.detections)})
                else:
                    raise LensforgeError(f"row {row.get('id')} has neither checked rubric items nor a scene")
                failures.append(None)
            except LensforgeError as e:  # an unscorable row is reported per image, never scored 0
                rewards.append(math.nan)
                items.append({})
                details.append({})
                failures.append(str(e))
        return RewardOutput(rewards=rewards, items=items, failures=failures, details=details)


__all__ = ["VerifierReward"]
