"""TokenBucket on a fake clock: burst, steady rate, debt from an oversized cost, refunds."""

from __future__ import annotations

import pytest

from lensforge.llm import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def bucket(per_minute: float) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(per_minute, clock=clock, sleep=clock.sleep), clock


def test_burst_of_one_second_then_steady_rate():
    b, clock = bucket(600)  # 10 per second
    assert b.capacity == 10
    starts = []
    for _ in range(30):
        b.acquire()
        starts.append(clock.now)
    assert starts[:10] == [0.0] * 10
    assert starts[-1] == pytest.approx(2.0)  # 20 more at 10/s
    for i in range(len(starts)):  # never more than burst + rate * window in any window
        for j in range(i, len(starts)):
            assert j - i + 1 <= 10 + 10 * (starts[j] - starts[i]) + 1e-6


def test_slow_limits_still_allow_one_request():
    b, clock = bucket(6)  # one per 10 s
    assert b.capacity == 1
    b.acquire()
    b.acquire()
    assert clock.now == pytest.approx(10.0)


def test_oversized_cost_goes_into_debt_and_delays_the_next():
    b, clock = bucket(60_000)  # 1000 tokens/s, capacity 1000
    assert b.acquire(5000) == 0.0  # a full bucket lets one oversized call through
    assert b.level == pytest.approx(-4000)
    b.acquire(100)
    assert clock.now == pytest.approx(4.1)


def test_adjust_refunds_and_charges():
    b, clock = bucket(60_000)
    b.acquire(800)
    b.adjust(-500)  # the call used 300, not 800
    assert b.level == pytest.approx(700)
    b.adjust(+1200)  # or 2000: charge the difference
    assert b.level == pytest.approx(-500)
    b.adjust(-10_000)
    assert b.level == pytest.approx(1000)  # never above capacity


def test_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        TokenBucket(0)
