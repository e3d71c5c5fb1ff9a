"""promtool, Prometheus's own linter, accepts what /metrics serves."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest
from support import Exporter, promtool

from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

pytestmark = pytest.mark.e2e


async def test_promtool_check_metrics_accepts_the_exposition(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: Callable[..., Exporter]
) -> None:
    ids = [
        world.create_task("prod", kind, status="PROCESSING") for kind in ("thumbnail", "engine_cluster_build")
    ]
    world.create_task("prod", "brand-new type!", status="RETRYING")
    exporter = make_exporter(api, namespaces=("prod", "ghost"))
    await exporter.poll()
    clock.advance(90)
    world.set_status(ids[0], "FAILED")
    world.set_status(ids[1], "COMPLETED")
    await exporter.poll()
    text = exporter.exposition()
    assert "mixpeek_task_completion_seconds_bucket" in text
    assert "mixpeek_exporter_poll_errors_total" in text
    code, output = promtool("check", "metrics", stdin=text)
    assert (code, output) == (0, "")
    served = b"".join(exporter.served.respond(None, "gzip").body)  # what /metrics sends, from its cache
    assert gzip.decompress(served).decode() == text
