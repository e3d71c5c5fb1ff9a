"""Demo mode: a lively simulated organisation on a loopback port, for running the exporter without an API key.

Here, and only here, real time drives the world: a daemon thread advances it by the measured elapsed time
about once a second.
"""

import threading
import time
from typing import Final

from .profile import DOCUMENTED, ApiProfile
from .server import SimulatorServer
from .world import World

_PER_HOUR: Final = 1 / 3600
# name, new tasks per second, share of tasks that fail, new batches per second, share of batches that fail:
# a busy healthy prod, a flakier staging and dev.
DEMO_NAMESPACES: Final = (
    ("demo-prod", 0.04, 0.03, 8 * _PER_HOUR, 0.05),
    ("demo-staging", 0.015, 0.10, 4 * _PER_HOUR, 0.15),
    ("demo-dev", 0.008, 0.25, 3 * _PER_HOUR, 0.35),
)
# Simulated past at start: a few hundred tasks and a few dozen batches, most already finished.
HISTORY_S: Final = 2 * 3600.0
TICK_S: Final = 1.0


class DemoSimulator:
    """A running demo: where to reach it, with which key, and how to stop it."""

    def __init__(self, world: World, server: SimulatorServer, tick_s: float = TICK_S) -> None:
        self.world = world
        self._server = server
        self._tick_s = tick_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._drive, name="mixpeek-demo-clock", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the simulated API."""
        return self._server.url

    @property
    def api_key(self) -> str:
        """The key the simulated API accepts."""
        return self._server.api_key

    @property
    def profile(self) -> ApiProfile:
        """How the simulated API answers what the documentation leaves open."""
        return self._server.profile

    def stop(self) -> None:
        """Stop advancing time and serving; safe to call twice."""
        self._stopping.set()
        self._thread.join()
        self._server.stop()

    def _drive(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(self._tick_s):
            now = time.monotonic()
            self.world.advance(now - last)
            last = now


def start_demo(profile: ApiProfile | None = None, seed: int = 0) -> DemoSimulator:
    """Build the demo organisation with its history, serve it on 127.0.0.1 (free port), start its clock.

    The API answers as documented unless `profile` says otherwise (see profile.py; `ApiProfile.parse` reads
    the compact text a person can put in a setting).
    """
    world = World(seed=seed)
    for name, rate, failures, batch_rate, batch_failures in DEMO_NAMESPACES:
        world.add_namespace(
            name,
            spawn_rate_per_s=rate,
            failure_ratio=failures,
            batch_rate_per_s=batch_rate,
            batch_failure_ratio=batch_failures,
        )
    world.advance(HISTORY_S)
    server = SimulatorServer(world, profile=DOCUMENTED if profile is None else profile)
    server.start()
    return DemoSimulator(world, server)
