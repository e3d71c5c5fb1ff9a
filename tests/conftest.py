from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict
from support import Exporter, build_exporter

from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

API_KEY = "sk_test_f1xture_k3y_never_logged"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    world = World(clock=clock, seed=7)
    world.add_namespace("prod")
    world.add_namespace("staging")
    return world


@pytest.fixture
def api(world: World) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def make_exporter(clock: FakeClock) -> AsyncIterator[Callable[..., Exporter]]:
    """Build exporters against a server (the `api` fixture by default); closes their clients after."""
    built: list[Exporter] = []

    def make(server: SimulatorTestServer, key: Any = API_KEY, **options: Any) -> Exporter:
        exporter = build_exporter(server.url, key, clock, **options)
        built.append(exporter)
        return exporter

    yield make
    for exporter in built:
        await exporter.http.aclose()


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Every structlog event emitted during the test."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog globally (to a stderr that pytest closes after the test)."""
    yield
    structlog.reset_defaults()
