"""The state file carries counters and task state across a restart: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from support import Exporter

from exporter.config import DEFAULT_BUCKETS
from exporter.simulator import FakeClock, SimulatorServer, World
from exporter.statefile import CHUNK, FORMAT, StateFile

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
    whole = path.read_bytes()
    *lines, _end = whole.splitlines(keepends=True)
    chunk = next(line for line in lines if task_id.encode() in line)
    state = next(line for line in lines if b'"namespace":"prod"' in line)
    damaged = {
        "cut in the header": whole[:40],
        "cut in a line": whole[: whole.index(chunk) + 10],
        "cut at a line": b"".join(lines),
        "rows missing": whole.replace(chunk, b""),
        "a state missing": whole.replace(state + chunk, b""),
        "a row too many": whole.replace(chunk, chunk[:-2] + b"," + chunk[1:]),
        "bad task row": whole.replace(chunk, b'[["x"]]\n'),
        "garbled state": whole.replace(state, state.replace(b'"polled_at":', b'"polled_at":"x","was":')),
        "not json": b"\x00\x01garbage",
        "other program": b'{"format":"something-else/1"}\n',
        "another API": whole.replace(b'"identity":"', b'"identity":"https://elsewhere.example|'),
    }
    for name, content in damaged.items():
        path.write_bytes(content)
        logs.clear()
        exporter = make_exporter(api, namespaces=("prod",), state_file=path)
        await exporter.poll()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["event"] for e in errors] == ["state file ignored; starting afresh"], name
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


def test_a_saved_state_loads_as_it_was(tmp_path: Path) -> None:
    from exporter.api import Task
    from exporter.state import NamespaceState, observe

    def listing(*changed: Task) -> list[Task]:
        ids = {task.item_id for task in changed}
        rest = (Task(f"p{i}", "PENDING", "t", created=float(i)) for i in range(2 * CHUNK + 2))
        return [*changed, *(task for task in rest if task.item_id not in ids)]

    state = observe(NamespaceState(buckets=DEFAULT_BUCKETS), listing(), 0.0)
    state = observe(state, listing(Task("p0", "FAILED", "t"), Task("p1", "COMPLETED", "u")), 30.0)
    state = observe(state, [t for t in listing(Task("p0", "FAILED", "t")) if t.item_id != "p1"], 60.0)
    tasks = replace(state, tallies={("t", "failed"): 3})
    batches = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("b", "PROCESSING", "small")], 5.0)
    assert tasks.gone == {"p1": 60.0} and len(tasks.tasks) > 2 * CHUNK  # rows span several lines
    path = tmp_path / "state.json"
    StateFile(path, "id", DEFAULT_BUCKETS).save(
        {"prod": tasks, "unpolled": NamespaceState(DEFAULT_BUCKETS)}, {"prod": batches}
    )
    assert json.loads(path.read_bytes().splitlines()[0])["format"] == FORMAT

    loaded_tasks, loaded_batches = StateFile(path, "id", DEFAULT_BUCKETS).load()
    assert list(loaded_tasks) == ["prod"] and list(loaded_batches) == ["prod"]
    for before, after in ((tasks, loaded_tasks["prod"]), (batches, loaded_batches["prod"])):
        assert sorted(after.rows()) == sorted(before.rows())
        for name in (
            "polled_at",
            "gone",
            "groups",
            "statuses",
            "counts",
            "oldest_active",
            "active",
        ):
            assert getattr(after, name) == getattr(before, name), name
        assert after.transitions == before.transitions and after.tallies == before.tallies
        for key, histogram in before.completions.items():
            assert (after.completion(key).counts, after.completion(key).total) == (
                histogram.counts,
                histogram.total,
            )
        assert after.completions.keys() == before.completions.keys()


def test_files_of_earlier_versions_load(tmp_path: Path) -> None:
    # Version 1: one JSON document; each row in full, a finished one with its first sight.
    counts = [0] * (len(DEFAULT_BUCKETS) + 1)
    counts[2] = 1
    prod = {
        "polled_at": 30.0,
        "buckets": list(DEFAULT_BUCKETS),
        "groups": ["t"],
        "statuses": ["PENDING", "COMPLETED", "FAILED"],
        "tasks": [["b", "COMPLETED", "t", 0.0, None, True], ["a", "PENDING", "t", 0.0, 5.0, False]],
        "gone": [["c", 20.0]],
        "transitions": [["FAILED", "t", 1]],
        "completions": [["FAILED", "t", counts, 12.5]],
        "tallies": [["t", "failed", 3]],
    }
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "format": "mixpeek-exporter-state/1",
                "identity": "id",
                "namespaces": {"prod": prod},
                "batches": {},
            }
        )
    )
    old = StateFile(path, "id", DEFAULT_BUCKETS).load()[0]["prod"]
    assert sorted(old.rows()) == [
        ("a", ("PENDING", "t"), 0.0, 5.0, False),
        ("b", ("COMPLETED", "t"), 30.0, None, True),
    ]
    assert old.counts == {("PENDING", "t"): 1, ("COMPLETED", "t"): 1}
    assert old.oldest_active == {("PENDING", "t"): 5.0}
    assert old.gone == {"c": 20.0} and old.tallies == {("t", "failed"): 3}
    assert old.transitions == {("FAILED", "t"): 1}
    assert (
        old.completion(("FAILED", "t")).counts == tuple(counts)
        and old.completion(("FAILED", "t")).total == 12.5
    )
