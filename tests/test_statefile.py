"""The state file carries counters and task state across a restart: nothing lost, nothing counted twice."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from structlog.typing import EventDict
from support import Exporter, completion

from exporter.api import Task
from exporter.config import DEFAULT_BUCKETS
from exporter.sharding import ALL_NAMESPACES, NamespaceFilter
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.state import NamespaceState, Observation, observe
from exporter.statefile import CHUNK, FORMAT, StateFile, encode, identity

MakeExporter = Callable[..., Exporter]
SETUP = identity(SecretStr("sk_unit"), "https://api.example", "namespace", ("prod",), ALL_NAMESPACES)
FAILED = {"mixpeek_namespace": "prod", "status": "FAILED", "task_type": "thumbnail"}
COMPLETED = {"mixpeek_namespace": "prod", "status": "COMPLETED", "task_type": "thumbnail"}
TRANSITIONS = "mixpeek_task_terminal_transitions_total"


async def test_transitions_while_down_are_counted_once_and_counters_carry_on(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter, tmp_path: Path
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
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    task_id = world.create_task("prod", "thumbnail", status="PROCESSING")
    await make_exporter(api, namespaces=("prod",)).poll()
    world.set_status(task_id, "FAILED")
    restarted = make_exporter(api, namespaces=("prod",))
    await restarted.poll()
    assert restarted.value(TRANSITIONS, **FAILED) == 0


async def test_damaged_or_foreign_files_are_reported_and_ignored(
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[EventDict],
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
    }
    for name, content in damaged.items():
        path.write_bytes(content)
        logs.clear()
        exporter = make_exporter(api, namespaces=("prod",), state_file=path)
        await exporter.poll()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["event"] for e in errors] == ["state file ignored; starting afresh"], name
        assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
        assert exporter.value(TRANSITIONS, **COMPLETED) == 0  # a baseline, as without a file
        await exporter.poller.flush()  # its save must land before the next damaged file is written
    assert world.get_task(task_id) is not None


async def test_save_is_atomic_and_a_failed_save_is_counted_not_fatal(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, tmp_path: Path
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
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1


def test_changed_buckets_keep_counters_but_not_histograms(tmp_path: Path) -> None:
    from exporter.api import Task
    from exporter.state import NamespaceState, observe

    state = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("a", "PENDING", "t")], 0.0)
    state = observe(state, [Task("a", "FAILED", "t")], 30.0)
    path = tmp_path / "state.json"
    StateFile(path, SETUP, DEFAULT_BUCKETS).save({"prod": state}, {})
    same = StateFile(path, SETUP, DEFAULT_BUCKETS).load()[0]["prod"]
    assert same.transitions == {("FAILED", "t"): 1}
    assert completion(same, ("FAILED", "t")).count == 1
    other = StateFile(path, SETUP, (1.0, 2.0)).load()[0]["prod"]
    assert other.transitions == {("FAILED", "t"): 1}
    assert completion(other, ("FAILED", "t")).count == 0
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
    assert tasks.gone == {"p1": 60.0}
    assert len(tasks.tasks) > 2 * CHUNK  # rows span several lines
    path = tmp_path / "state.json"
    StateFile(path, SETUP, DEFAULT_BUCKETS).save(
        {"prod": tasks, "unpolled": NamespaceState(DEFAULT_BUCKETS)}, {"prod": batches}
    )
    assert json.loads(path.read_bytes().splitlines()[0])["format"] == FORMAT

    loaded_tasks, loaded_batches = StateFile(path, SETUP, DEFAULT_BUCKETS).load()
    assert list(loaded_tasks) == ["prod"]
    assert list(loaded_batches) == ["prod"]
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
        assert after.transitions == before.transitions
        assert after.tallies == before.tallies
        for key, histogram in before.completions.items():
            assert (completion(after, key).counts, completion(after, key).total) == (
                histogram.counts,
                histogram.total,
            )
        assert after.completions.keys() == before.completions.keys()


def test_files_of_earlier_versions_are_ignored(tmp_path: Path, logs: list[EventDict]) -> None:
    """Bound to "url|scope" only, they may be another key's: a baseline is the safe side."""
    prod = {"polled_at": 30.0, "tasks": [["a", "PENDING", "t", 0.0, 5.0, False]], "gone": []}
    version_1 = {"format": "mixpeek-exporter-state/1", "identity": "https://api.example|namespace"}
    files = {
        "format 1": json.dumps({**version_1, "namespaces": {"prod": prod}, "batches": {}}).encode(),
        "format 1, large": json.dumps(
            {**version_1, "namespaces": {"prod": prod}, "pad": "x" * 70_000}
        ).encode(),
        "format 2": json.dumps({"format": FORMAT, "identity": "https://api.example|namespace"}).encode()
        + b'\n{"type":"end","states":0}\n',
    }
    path = tmp_path / "state.json"
    for name, content in files.items():
        path.write_bytes(content)
        logs.clear()
        assert StateFile(path, SETUP, DEFAULT_BUCKETS).load() == ({}, {}), name
        assert foreign(logs) == [",".join(SETUP)], name
        assert [e["log_level"] for e in logs] == ["warning"], name
        assert ("first line over" in logs[0]["detail"]) == name.endswith("large")  # not parsed whole


KEY_A = "sk_org_a_0123456789abcdef"
KEY_B = "sk_org_b_fedcba9876543210"


def foreign(logs: list[EventDict]) -> list[str]:
    """The parts named by each "state file is for another setup" line."""
    return [e["differs"] for e in logs if e["event"] == "state file is for another setup; starting afresh"]


def terminal_total(exporter: Exporter) -> float:
    return exporter.total(TRANSITIONS)


async def test_a_file_written_under_another_key_for_the_same_url_is_not_restored(
    clock: FakeClock, make_exporter: MakeExporter, tmp_path: Path, logs: list[EventDict]
) -> None:
    path = tmp_path / "state.json"
    ours = World(clock=clock, seed=1)
    ours.add_namespace("prod")
    watched = ours.create_task("prod", "thumbnail", status="PROCESSING")
    with SimulatorTestServer(ours, api_key=KEY_A) as api:
        port = int(api.url.rsplit(":", 1)[1])
        first = make_exporter(api, key=KEY_A, namespaces=("prod",), state_file=path)
        await first.poll()
        ours.set_status(watched, "FAILED")
        clock.advance(30)
        await first.poll()
        await first.poller.flush()
        saved = path.read_bytes()
        assert first.value(TRANSITIONS, **FAILED) == 1

        # The same key: restored, counters carry on before any poll.
        logs.clear()
        again = make_exporter(api, key=KEY_A, namespaces=("prod",), state_file=path)
        assert again.value(TRANSITIONS, **FAILED) == 1
        assert foreign(logs) == []

    # Another organisation behind the same URL: 200 tasks already FAILED there, none of which is news.
    theirs = World(clock=clock, seed=2)
    theirs.add_namespace("prod")
    for _ in range(200):
        theirs.create_task("prod", "thumbnail", status="FAILED")
    path.write_bytes(saved)
    logs.clear()
    with SimulatorTestServer(theirs, api_key=KEY_B, port=port) as api:
        other = make_exporter(api, key=KEY_B, namespaces=("prod",), state_file=path)
        assert terminal_total(other) == 0  # nothing of the file is served
        await other.poll()
        assert other.value("mixpeek_up", mixpeek_namespace="prod") == 1
        assert other.value("mixpeek_tasks", **FAILED) == 200
        assert terminal_total(other) == 0  # a baseline, not 200 new FAILED
        await other.poller.flush()
    assert foreign(logs) == ["api_key"]
    everything = repr(logs) + path.read_text()
    assert KEY_A not in everything
    assert KEY_B not in everything


async def test_a_file_written_for_another_namespace_set_or_scope_is_not_restored(
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[EventDict],
) -> None:
    path = tmp_path / "state.json"
    watched = world.create_task("prod", "thumbnail", status="PROCESSING")
    first = make_exporter(api, namespaces=("prod", "staging"), state_file=path)
    await first.poll()
    world.set_status(watched, "FAILED")
    clock.advance(30)
    await first.poll()
    await first.poller.flush()
    saved = path.read_bytes()

    # The same namespaces in another order: the same setup.
    logs.clear()
    same = make_exporter(api, namespaces=("staging", "prod"), state_file=path)
    assert same.value(TRANSITIONS, **FAILED) == 1
    assert foreign(logs) == []

    others: dict[str, dict[str, object]] = {
        "namespaces": {"namespaces": ("prod",)},
        "namespace_filter": {
            "namespaces": ("prod", "staging"),
            "namespace_filter": NamespaceFilter(allow="prod|staging"),
        },
        "scope": {"namespaces": ("prod", "staging"), "organization": True},
    }
    for part, options in others.items():
        path.write_bytes(saved)
        logs.clear()
        exporter = make_exporter(api, state_file=path, **options)
        assert terminal_total(exporter) == 0, part  # nothing of the file is served
        assert foreign(logs) == [part]
        if part != "scope":  # the simulator answers organization-wide listings only when told to
            await exporter.poll()
            assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
            assert exporter.value(TRANSITIONS, **FAILED) == 0, part  # a baseline: not carried on


def test_the_key_is_never_in_the_file_nor_its_bare_hash(tmp_path: Path) -> None:
    from exporter.api import Task
    from exporter.state import NamespaceState, observe

    state = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("a", "FAILED", "t")], 30.0)
    setup = identity(SecretStr(KEY_A), "https://api.example", "namespace", (), ALL_NAMESPACES)
    path = tmp_path / "state.json"
    StateFile(path, setup, DEFAULT_BUCKETS).save({"prod": state}, {})
    written = path.read_bytes()
    bare = hashlib.sha256(KEY_A.encode()).hexdigest()
    assert KEY_A.encode() not in written
    assert bare[:16].encode() not in written
    assert bare.encode() not in written
    assert setup["api_key"].encode() in written  # the salted fingerprint is what binds the file
    assert StateFile(path, setup, DEFAULT_BUCKETS).load()[0]["prod"].counts == {("FAILED", "t"): 1}


def test_each_part_of_the_identity_is_told_apart_and_named(tmp_path: Path, logs: list[EventDict]) -> None:
    def setup(key: str = KEY_A, **changes: Any) -> dict[str, str]:
        parts: dict[str, Any] = {
            "url": "https://api.example",
            "scope": "namespace",
            "namespaces": ("prod",),
            "owner": ALL_NAMESPACES,
        }
        parts.update(changes)
        return dict(identity(SecretStr(key), **parts))

    path = tmp_path / "state.json"
    StateFile(path, setup(), DEFAULT_BUCKETS).save({}, {})
    variants = {
        "api_key": setup(KEY_B),
        "url": setup(url="https://other.example"),
        "scope": setup(scope="organization"),
        "namespaces": setup(namespaces=()),  # discovery
        "namespace_filter": setup(owner=NamespaceFilter(shard=1, total_shards=2)),
    }
    assert len({json.dumps(v, sort_keys=True) for v in variants.values()} | {json.dumps(setup())}) == 6
    for part, other in variants.items():
        logs.clear()
        assert StateFile(path, other, DEFAULT_BUCKETS).load() == ({}, {})
        assert foreign(logs) == [part]
        assert KEY_A not in repr(logs)
        assert KEY_B not in repr(logs)
        assert setup()["api_key"] not in repr(logs)  # not even the fingerprint
    # A file of an earlier version, bound to "url|scope" only, cannot be told to be ours.
    path.write_text(json.dumps({"format": FORMAT, "identity": "https://api.example|namespace"}) + "\n")
    logs.clear()
    assert StateFile(path, setup(), DEFAULT_BUCKETS).load() == ({}, {})
    assert foreign(logs) == [",".join(setup())]


def test_a_listing_applied_during_a_save_waits_and_one_applied_before_is_what_is_saved() -> None:
    """The writer reads a state's rows from the task table that the next listing changes in place: it
    holds the table's lock while it reads, and it reads the namespace's newest state."""
    first = observe(NamespaceState(buckets=DEFAULT_BUCKETS), [Task("a", "PROCESSING", "t")], 100.0)
    lines = encode({"prod": first}, {}, SETUP)
    head = [next(lines), next(lines)]  # the file's header, then the state's
    assert first.table.lock.locked()
    listing = Observation(first, 130.0)
    listing.add([Task("a", "FAILED", "t"), Task("b", "PROCESSING", "t")])
    applied: list[NamespaceState] = []
    applying = threading.Thread(target=lambda: applied.append(listing.result()))
    applying.start()
    applying.join(timeout=0.2)  # bounded: a correct result() is still waiting however long this is
    assert applying.is_alive()  # it cannot apply while the rows are being read
    saved = [*head, *lines]
    applying.join()
    assert not first.table.lock.locked()  # released by the writer's last line, then by the result
    assert [row[0] for line in saved[2:-1] for row in json.loads(line)] == ["a"]
    assert json.loads(saved[1])["transitions"] == []
    # Queued before that listing was applied, saved after: the file gets the newer state.
    second = applied[0]
    rows = [row for line in list(encode({"prod": first}, {}, SETUP))[2:-1] for row in json.loads(line)]
    assert sorted(row[0] for row in rows) == ["a", "b"]
    assert second.transitions == {("FAILED", "t"): 1}
