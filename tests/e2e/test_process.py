"""The real exporter process: demo mode, a real key against the simulated API, secrets, clean shutdown."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import API_KEY
from support import ExporterProcess, parse_exposition, select

from exporter.cli import SHUTDOWN_SECONDS
from exporter.simulator import World
from exporter.simulator.testing import SimulatorTestServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def processes() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for process in started:
        process.kill()


def test_demo_mode_serves_live_metrics_and_stops_on_sigterm(processes: list[ExporterProcess]) -> None:
    exporter = ExporterProcess("--demo")
    processes.append(exporter)
    exporter.wait_ready()
    series = parse_exposition(httpx.get(f"{exporter.url}/metrics").text)
    namespaces = {dict(k)["mixpeek_namespace"] for k in select(series, "mixpeek_up")}
    assert namespaces == {"demo-prod", "demo-staging", "demo-dev"}
    assert all(v == 1 for v in select(series, "mixpeek_up").values())
    assert sum(select(series, "mixpeek_tasks").values()) > 0
    assert select(series, "mixpeek_exporter_build_info", demo="true")  # the made-up data says so
    # The process's own resources (prometheus_client's process and platform collectors), read at the scrape.
    assert series[("process_resident_memory_bytes", frozenset())] > 10_000_000
    assert series[("process_open_fds", frozenset())] > 0
    assert select(series, "python_info", implementation="CPython")
    assert any(str(e.get("event", "")).startswith("demo mode") for e in exporter.events)
    # A real process: wall time is its only clock. SIGTERM to exit within the budget the chart relies on.
    started = time.monotonic()
    assert exporter.terminate(timeout=2 * SHUTDOWN_SECONDS) == 0
    assert time.monotonic() - started < SHUTDOWN_SECONDS
    assert not [line for line in exporter.lines if "Traceback" in line]


def test_real_key_never_leaves_the_process(world: World, processes: list[ExporterProcess]) -> None:
    world.create_task("prod", "thumbnail", status="PROCESSING")
    with SimulatorTestServer(world, api_key=API_KEY) as api:
        exporter = ExporterProcess(
            "--namespaces",
            "prod,ghost",
            "--poll-interval",
            "1",
            env={"MIXPEEK_API_KEY": API_KEY, "MIXPEEK_API_URL": api.url, "MIXPEEK_LOG_LEVEL": "debug"},
        )
        processes.append(exporter)
        exporter.wait_serving()
        deadline = time.monotonic() + 30
        while (
            not any(e.get("event") == "poll complete" for e in exporter.events)
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        metrics = httpx.get(f"{exporter.url}/metrics").text
        assert exporter.terminate() == 0
    series = parse_exposition(metrics)
    assert series[("mixpeek_up", frozenset({("mixpeek_namespace", "prod")}))] == 1
    assert series[("mixpeek_up", frozenset({("mixpeek_namespace", "ghost")}))] == 0
    assert select(series, "mixpeek_exporter_build_info", demo="false")
    assert any(e.get("event") == "poll failed" and e.get("namespace") == "ghost" for e in exporter.events)
    everything = metrics + "".join(exporter.lines)
    assert API_KEY not in everything
    assert "Traceback" not in everything
