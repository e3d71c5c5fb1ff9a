"""The real process with a state file: a restart under another API key for the same URL is a baseline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ExporterProcess, parse_exposition, select, wait_until

from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

pytestmark = pytest.mark.e2e

KEY_A = "sk_org_a_e2e_0123456789"
KEY_B = "sk_org_b_e2e_9876543210"


@pytest.fixture
def processes() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for process in started:
        process.kill()


def start(processes: list[ExporterProcess], key: str, url: str, path: Path) -> ExporterProcess:
    exporter = ExporterProcess(
        "--namespaces",
        "prod",
        "--poll-interval",
        "1",
        "--state-file",
        str(path),
        env={"MIXPEEK_API_KEY": key, "MIXPEEK_API_URL": url},
    )
    processes.append(exporter)
    exporter.wait_ready()
    return exporter


def metric(exporter: ExporterProcess, name: str, **labels: str) -> float:
    return sum(select(parse_exposition(httpx.get(f"{exporter.url}/metrics").text), name, **labels).values())


def test_a_restart_under_another_key_counts_no_spike(
    clock: FakeClock, tmp_path: Path, processes: list[ExporterProcess]
) -> None:
    path = tmp_path / "state.json"
    ours = World(clock=clock, seed=1)
    ours.add_namespace("prod")
    ours.create_task("prod", "thumbnail", status="COMPLETED")
    with SimulatorTestServer(ours, api_key=KEY_A) as api:
        port = int(api.url.rsplit(":", 1)[1])
        first = start(processes, KEY_A, api.url, path)
        wait_until(
            lambda: metric(first, "mixpeek_exporter_state_file_writes_total", result="ok") >= 1,
            30,
            "a state file write",
        )
        assert first.terminate() == 0
    assert KEY_A.encode() not in path.read_bytes()

    theirs = World(clock=clock, seed=2)
    theirs.add_namespace("prod")
    for _ in range(200):
        theirs.create_task("prod", "thumbnail", status="FAILED")
    with SimulatorTestServer(theirs, api_key=KEY_B, port=port) as api:
        second = start(processes, KEY_B, api.url, path)
        assert metric(second, "mixpeek_tasks", status="FAILED") == 200
        assert metric(second, "mixpeek_task_terminal_transitions_total") == 0
        assert second.terminate() == 0
    ignored = "state file is for another setup; starting afresh"
    assert [e["differs"] for e in second.events if e.get("event") == ignored] == ["api_key"]
    logged = "".join(second.lines)
    assert KEY_B not in logged
    assert "Traceback" not in logged
