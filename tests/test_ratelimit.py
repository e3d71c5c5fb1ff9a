"""The shared rate limit spaces requests out, whoever sends them."""

from __future__ import annotations

import asyncio

import pytest
from support import Sleeps

from exporter.ratelimit import RateLimiter
from exporter.simulator.testing import FakeClock


async def test_requests_are_spaced_to_the_rate() -> None:
    clock = FakeClock(start=0.0)
    sleeps = Sleeps(clock)
    limiter = RateLimiter(rate=4, burst=2, clock=clock, sleep=sleeps)
    waits = [await limiter.acquire() for _ in range(6)]
    assert waits == [0.0, 0.0, 0.25, 0.25, 0.25, 0.25]
    assert clock() == 1.0  # 6 requests at 4/s with a burst of 2: one second
    clock.advance(10)
    assert [await limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.25]  # the burst refills, no more


async def test_concurrent_callers_share_one_bucket() -> None:
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(rate=10, clock=clock, sleep=Sleeps(clock))
    waits = await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert sorted(waits) == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1])
    assert clock() == pytest.approx(0.4)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0)
