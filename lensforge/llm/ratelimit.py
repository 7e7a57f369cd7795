"""Thread-safe token buckets for requests-per-minute and tokens-per-minute limits.

A bucket refills at ``per_minute / 60`` units per second up to a capacity of one second's worth (at
least one unit), so in any window of ``w`` seconds at most ``capacity + rate * w`` units pass — a
server's per-minute limit is never exceeded by more than one second's burst. A cost larger than the
capacity (a long prompt under a small token limit) waits for a full bucket and then drives the level
negative: the debt delays the next callers, so the average rate still holds.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` per second; ``acquire(cost)`` blocks until allowed."""

    def __init__(self, per_minute: float, *, burst_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` units, waiting as long as needed; returns the seconds waited."""
        need = min(float(cost), self.capacity)
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._level >= need - 1e-9 * need:  # float round-off must not leave a 1e-17 s wait
                    self._level -= cost
                    return waited
                delay = (need - self._level) / self.rate
            self._sleep(delay)
            waited += delay

    def adjust(self, delta: float) -> None:
        """Charge ``delta`` more units (negative = refund) once the real cost of a call is known."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level - delta)

    @property
    def level(self) -> float:
        """Units available now (negative while in debt)."""
        with self._lock:
            self._refill()
            return self._level


__all__ = ["TokenBucket"]
