"""Token-budget packer: fills each batch with mixed-size samples up to a budget of tokens.

A sample costs ``image tokens (H/ds · W/ds) + estimated text tokens``. The packer keeps a lookahead
buffer of loaded samples in arrival order and builds a batch first-fit: the oldest sample always
goes in (so nothing waits forever), then every later buffered sample that still fits, up to
``max_samples``. Samples that do not fit stay buffered for the next batch; at the end of the stream
the buffer is flushed into final (possibly under-filled) batches. Nothing is dropped or duplicated:
every sample that enters leaves in exactly one batch. A sample larger than the whole budget gets a
batch of its own and is counted (``oversize``) and logged.

With a ``group_key`` (``data.packing.group_by_size``) a batch holds one group only: the oldest
sample's, filled first-fit from the later buffered samples of the same group — per-size bucketing as
other text-to-image trainers do it, kept as the baseline of the resolution ablation (docs/ablations.md).

Packing efficiency = real tokens / budget, reported per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.data")

T = TypeVar("T")


def first_fit(costs: Sequence[int], budget: int, max_samples: int) -> list[int]:
    """Positions (ascending) of the items packed into one batch; always includes position 0."""
    if not costs:
        return []
    chosen = [0]
    used = costs[0]
    for i in range(1, len(costs)):
        if len(chosen) >= max_samples or used >= budget:
            break
        if used + costs[i] <= budget:
            chosen.append(i)
            used += costs[i]
    return chosen


@dataclass
class Packed(Generic[T]):
    """One packed batch: the items (in arrival order) and its token accounting."""

    items: list[T]
    tokens: int
    budget: int

    @property
    def efficiency(self) -> float:
        return self.tokens / self.budget


class TokenBudgetPacker(Generic[T]):
    """Incremental first-fit packer over a bounded lookahead buffer (see the module docstring)."""

    def __init__(self, budget: int, max_samples: int = 64, lookahead: int = 32,
                 group_key: Callable[[T], Hashable] | None = None):
        if budget < 1 or max_samples < 1 or lookahead < 1:
            raise LensforgeError(
                f"packing needs token_budget, max_samples and lookahead >= 1, got {budget}, {max_samples}, {lookahead}"
            )
        self.budget = int(budget)
        self.max_samples = int(max_samples)
        self.lookahead = int(lookahead)
        self.group_key = group_key
        self.buffer: list[tuple[T, int]] = []
        self.oversize = 0

    def add(self, item: T, cost: int) -> None:
        if cost > self.budget:
            self.oversize += 1
            log.warning("sample of %d tokens exceeds the token budget %d: it gets a batch of its own", cost, self.budget)
        self.buffer.append((item, int(cost)))

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.lookahead

    def pop_batch(self) -> Packed[T] | None:
        """Take one batch out of the buffer (``None`` when empty)."""
        if not self.buffer:
            return None
        if self.group_key is None:
            pos = first_fit([c for _, c in self.buffer], self.budget, self.max_samples)
        else:  # one group per batch: the oldest sample's
            key = self.group_key(self.buffer[0][0])
            same = [i for i, (it, _) in enumerate(self.buffer) if self.group_key(it) == key]
            pos = [same[j] for j in first_fit([self.buffer[i][1] for i in same], self.budget, self.max_samples)]
        taken = set(pos)
        items = [self.buffer[i] for i in pos]
        self.buffer = [x for i, x in enumerate(self.buffer) if i not in taken]
        return Packed(items=[it for it, _ in items], tokens=sum(c for _, c in items), budget=self.budget)

    def pack(self, stream: Iterable[tuple[T, int]]) -> Iterator[Packed[T]]:
        """Pack a whole ``(item, cost)`` stream (buffer refilled to ``lookahead`` before each batch)."""
        for item, cost in stream:
            self.add(item, cost)
            if self.full:
                b = self.pop_batch()
                assert b is not None
                yield b
        while self.buffer:
            b = self.pop_batch()
            assert b is not None
            yield b


def efficiency_report(batches: Sequence[Packed[Any]]) -> dict[str, float]:
    """Mean / min efficiency and sample counts over packed batches."""
    if not batches:
        return {"batches": 0, "efficiency_mean": 0.0, "efficiency_min": 0.0, "samples_per_batch": 0.0}
    effs = [b.efficiency for b in batches]
    return {
        "batches": float(len(batches)),
        "efficiency_mean": sum(effs) / len(effs),
        "efficiency_min": min(effs),
        "samples_per_batch": sum(len(b.items) for b in batches) / len(batches),
    }
