"""The state file carries counters and task state across a restart: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import Exporter

from exporter.config import DEFAULT_BUCKETS
from exporter.simulator import FakeClock, SimulatorServer, World
from exporter.statefile import StateFile

MakeExporter = Callable[..., Exporter]
FAILED = {"namespace": "prod", "status": "FAILED", "task_type": "thumbnail"}
COMPLETED = {"namespace": "prod", "status": "COMPLETED", "task_type": "thumbnail"}
TRANSITIONS = "mixpeek_task_terminal_transitions_total"


async def test_transitions_while_down_are_counted_once_and_counters_carry_on(
    clock: FakeClock, world: World, api: SimulatorServer, make_exporter: MakeExporter, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    early, late = (world.create_task("prod", "thumbnail", status="PROCESSING") for _ in range(2))
    first = make_exporter(api, namespaces=("prod",), state_file=path)
    await first.poll()
    world.set_status(early, "FAILED")
    clock.advance(30)
    await first.poll()
    await first.poller.flush()
    assert first.value(TRANSITIONS, **FAILED) == 1
    assert first.value("mixpeek_exporter_state_file_writes_total", result="ok") >= 1

    # Down for ten minutes: one watched task fails, one task is born and completes.
    clock.advance(600)
    world.set_status(late, "FAILED")
    world.set_status(world.create_task("prod", "thumbnail", status="PROCESSING"), "COMPLETED")

    second = make_exporter(api, namespaces=("prod",), state_file=path)
    assert second.value(TRANSITIONS, **FAILED) == 1  # served from the file before the first poll
    await second.poll()
    assert second.value(TRANSITIONS, **FAILED) == 2
    assert second.value(TRANSITIONS, **COMPLETED) == 1
    clock.advance(30)
    await second.poll()
    assert second.value(TRANSITIONS, **FAILED) == 2
    assert second.value(TRANSITIONS, **COMPLETED) == 1
    assert second.value("mixpeek_task_completion_seconds_count", **FAILED) == 2


async def test_without_state_file_a_restart_is_a_baseline(
    clock: FakeClock, world: World, api: SimulatorServer, make_exporter: MakeExporter
) -> None:
    task_id = world.create_task("prod", "thumbnail", status="PROCESSING")
    await make_exporter(api, namespaces=("prod",)).poll()
    world.set_status(task_id, "FAILED")
    restarted = make_exporter(api, namespaces=("prod",))
    await restarted.poll()
    assert restarted.value(TRANSITIONS, **FAILED) == 0


def _write(path: Path, content: Any) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


async def test_damaged_or_foreign_files_are_reported_and_ignored(
    world: World,
    api: SimulatorServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[dict[str, Any]],
) -> None:
    task_id = world.create_task("prod", "thumbnail", status="COMPLETED")
    path = tmp_path / "state.json"
    good = make_exporter(api, namespaces=("prod",), state_file=path)
    await good.poll()
    await good.poller.flush()
    saved = json.loads(path.read_text())
    damaged = {
        "truncated": path.read_text()[:40],
        "not json": "\x00\x01garbage",
        "other program": {"format": "something-else/1"},
        "another API": {**saved, "identity": "https://elsewhere.example|namespace"},
        "bad task row": {**saved, "namespaces": {"prod": {**saved["namespaces"]["prod"], "tasks": [["x"]]}}},
    }
    for content in damaged.values():
        _write(path, content)
        logs.clear()
        exporter = make_exporter(api, namespaces=("prod",), state_file=path)
        await exporter.poll()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["event"] for e in errors] == ["state file ignored; starting afresh"], content
        assert exporter.value("mixpeek_up", namespace="prod") == 1
        assert exporter.value(TRANSITIONS, **COMPLETED) == 0  # a baseline, as without a file
        await exporter.poller.flush()  # its save must land before the next damaged file is written
    assert world.get_task(task_id) is not None


async def test_save_is_atomic_and_a_failed_save_is_counted_not_fatal(
    world: World, api: SimulatorServer, make_exporter: MakeExporter, tmp_path: Path
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    path = directory / "state.json"
    exporter = make_exporter(api, namespaces=("prod",), state_file=path)
    await exporter.poll()
    await exporter.poller.flush()
    assert [p.name for p in directory.iterdir()] == ["state.json"]  # no temporary left behind
    path.unlink()
    directory.rmdir()
    await exporter.poll()
    await exporter.poller.flush()
    assert exporter.value("mixpeek_exporter_state_file_writes_total", result="error") == 1
    assert exporter.value("mixpeek_up", namespace="prod") == 1


def test_changed_buckets_keep_counters_but_not_histograms(tmp_path: Path) -> None:
    from exporter.api import Task
    from exporter.state import NamespaceState, observe

    state = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("a", "PENDING", "t")], 0.0)
    state = observe(state, [Task("a", "FAILED", "t")], 30.0)
    path = tmp_path / "state.json"
    StateFile(path, "id", DEFAULT_BUCKETS).save({"prod": state}, {})
    same = StateFile(path, "id", DEFAULT_BUCKETS).load()[0]["prod"]
    assert same.transitions == {("FAILED", "t"): 1} and same.completion(("FAILED", "t")).count == 1
    other = StateFile(path, "id", (1.0, 2.0)).load()[0]["prod"]
    assert other.transitions == {("FAILED", "t"): 1} and other.completion(("FAILED", "t")).count == 0
    assert other.counts == {("FAILED", "t"): 1}


def test_rows_survive_a_save_and_files_of_earlier_versions_load(tmp_path: Path) -> None:
    from exporter.api import Task
    from exporter.state import NamespaceState, observe

    state = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("a", "PENDING", "t", created=5.0)], 0.0)
    state = observe(state, [Task("b", "COMPLETED", "t"), Task("a", "PENDING", "t", created=5.0)], 30.0)
    path = tmp_path / "state.json"
    StateFile(path, "id", DEFAULT_BUCKETS).save({"prod": state}, {})
    loaded = StateFile(path, "id", DEFAULT_BUCKETS).load()[0]["prod"]
    assert sorted(loaded.rows()) == sorted(state.rows())
    assert loaded.active == {"a"} and loaded.counts == state.counts

    # Written before finished tasks became codes: each row in full, a finished one with its first sight.
    saved = json.loads(path.read_text())
    saved["namespaces"]["prod"]["tasks"] = [
        ["b", "COMPLETED", "t", 0.0, None, True],
        ["a", "PENDING", "t", 0.0, 5.0, False],
    ]
    path.write_text(json.dumps(saved))
    old = StateFile(path, "id", DEFAULT_BUCKETS).load()[0]["prod"]
    assert sorted(old.rows()) == [
        ("a", ("PENDING", "t"), 0.0, 5.0, False),
        ("b", ("COMPLETED", "t"), 30.0, None, True),
    ]
    assert old.counts == {("PENDING", "t"): 1, ("COMPLETED", "t"): 1}
    assert old.oldest_active == {("PENDING", "t"): 5.0}
