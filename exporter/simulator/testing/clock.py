"""A clock that only moves when a test says so, so time-dependent code is tested without sleeps."""

import threading

# 2025-10-09T08:53:20Z: a plausible "now" whose ISO rendering is easy to read in failures.
DEFAULT_START = 1_760_000_000.0


class FakeClock:
    """Callable like `time.time`; returns a fixed epoch time until `advance` moves it forward."""

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward; refusing to go back keeps durations and TTLs meaningful."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds
