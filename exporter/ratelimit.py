"""Token buckets: one shared by every namespace's requests, so a large installation stays under its API
quota; one for the requests our HTTP server answers (the web config's rate_limit)."""

from __future__ import annotations

import asyncio
import threading
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
            self._tokens = _refilled(self._tokens, self._burst, (now - self._updated) / self._interval)
            self._updated = now
            wait = 0.0
            if self._tokens < 1:
                wait = (1 - self._tokens) * self._interval
                await self._sleep(wait)
                self._tokens, self._updated = 1.0, self._updated + wait
            self._tokens -= 1
            return wait


class RequestRate:
    """At most one request per `interval` seconds on average, in bursts of at most `burst`; no waiting:
    a request over the rate is refused (429), as exporter-toolkit's rate_limit does."""

    def __init__(self, interval: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def allows(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = _refilled(self._tokens, self._burst, (now - self._updated) / self._interval)
            self._updated = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


def _refilled(tokens: float, burst: int, earned: float) -> float:
    return min(burst, tokens + earned)
