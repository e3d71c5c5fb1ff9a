"""A token bucket shared by every namespace's requests, so a large installation stays under its API quota."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """At most `rate` requests per second on average, in bursts of at most `burst`.

    The clock and the sleep are injected so tests can check the spacing without waiting.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._interval = 1.0 / rate
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    async def acquire(self) -> float:
        """Wait for a token; returns how long it waited. Callers queue in arrival order."""
        async with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) / self._interval)
            self._updated = now
            wait = 0.0
            if self._tokens < 1:
                wait = (1 - self._tokens) * self._interval
                await self._sleep(wait)
                self._tokens, self._updated = 1.0, self._updated + wait
            self._tokens -= 1
            return wait
