"""With a state file, a poll's counters are served only once the file holds them: a restart after a crash
(kill -9) restores counters no lower than those served, so Prometheus never sees a drop and then a jump."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict
from support import Exporter

from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.statefile import StateFile

MakeExporter = Callable[..., Exporter]
TRANSITIONS = "mixpeek_task_terminal_transitions_total"
FAILED = {"mixpeek_namespace": "prod", "status": "FAILED", "task_type": "thumbnail"}


async def test_counters_are_served_only_once_the_state_file_holds_them(
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
) -> None:
    path = tmp_path / "state"
    tasks = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(3)]
    first = make_exporter(api, namespaces=("prod",), state_file=path)
    await first.poll()
    assert first.value(TRANSITIONS, **FAILED) == 0

    writing, release = threading.Event(), threading.Event()
    save = StateFile.save

    def slow_save(self: StateFile, *args: Any) -> None:
        writing.set()
        release.wait(10)
        save(self, *args)

    monkeypatch.setattr(StateFile, "save", slow_save)
    for task_id in tasks:
        world.set_status(task_id, "FAILED")
    clock.advance(30)
    await first.poller.poll_namespace("prod")  # applied; the save is under way
    await asyncio.to_thread(writing.wait, 10)
    served = first.value(TRANSITIONS, **FAILED)
    crashed_now = make_exporter(api, namespaces=("prod",), state_file=path)  # kill -9 here, then restart
    restored = crashed_now.value(TRANSITIONS, **FAILED)
    release.set()
    await first.poller.flush()
    assert (served, restored) == (0, 0)
    assert first.value(TRANSITIONS, **FAILED) == 3
    after_save = make_exporter(api, namespaces=("prod",), state_file=path)
    assert after_save.value(TRANSITIONS, **FAILED) == 3


async def test_a_state_file_that_cannot_be_written_is_removed_so_a_restart_is_a_baseline(
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[EventDict],
) -> None:
    path = tmp_path / "state"
    task_id = world.create_task("prod", "thumbnail", "PROCESSING")
    first = make_exporter(api, namespaces=("prod",), state_file=path)
    await first.poll()
    assert path.exists()

    def disk_full(self: StateFile, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StateFile, "save", disk_full)
    world.set_status(task_id, "FAILED")
    clock.advance(30)
    await first.poll()
    assert first.value(TRANSITIONS, **FAILED) == 1  # still served: the exporter goes on
    assert first.value("mixpeek_exporter_state_file_writes_total", result="error") == 1
    assert not path.exists()  # an older file would restore 0 below the 1 served: a drop, then a jump
    assert any(event["event"].startswith("state file not saved") for event in logs)
    restarted = make_exporter(api, namespaces=("prod",), state_file=path)
    await restarted.poll()
    assert restarted.value(TRANSITIONS, **FAILED) == 0  # a baseline: a clean reset, no phantom increase
