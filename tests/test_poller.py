"""The exporter against the simulated Mixpeek API over real HTTP on 127.0.0.1, polled explicitly."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import API_KEY
from structlog.typing import EventDict
from support import Exporter, FlakyTransport, select

from exporter.api import TASKS_LIST
from exporter.simulator import ApiProfile, NamespaceIds, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.vocabulary import TERMINAL_STATUSES, ZERO_FILLED_STATUSES

MakeExporter = Callable[..., Exporter]
TRANSITIONS = "mixpeek_task_terminal_transitions_total"


def truth(world: World, namespace: str) -> dict[tuple[str, str], int]:
    """Ground truth: tasks that entered each terminal status in `namespace`, by (status, task_type)."""
    ns = world.namespace(namespace)
    assert ns is not None
    return {
        (status, ttype): n
        for (nsid, status, ttype), n in world.transitions.items()
        if nsid == ns.namespace_id
    }


def counted(exporter: Exporter, namespace: str) -> dict[tuple[str, str], int]:
    found = select(exporter.scrape(), TRANSITIONS, mixpeek_namespace=namespace)
    return {(dict(k)["status"], dict(k)["task_type"]): int(v) for k, v in found.items() if v}


async def test_lists_fifty_thousand_tasks_completely(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    for i in range(50_000):
        world.create_task("prod", "thumbnail", status="PENDING" if i % 3 else "COMPLETED")
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()
    assert (
        exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="PENDING", task_type="thumbnail")
        == 33_333
    )
    assert (
        exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="COMPLETED", task_type="thumbnail")
        == 16_667
    )
    assert exporter.value("mixpeek_exporter_tracked_tasks", mixpeek_namespace="prod") == 50_000
    assert exporter.value("mixpeek_exporter_api_requests_total", endpoint=TASKS_LIST, code="200") == 50


async def test_offset_only_api_is_paged_past_ten_thousand_by_created_at(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """An older server without cursors: offsets stop at 10,000, so the client pages by created_at windows."""
    for _ in range(25_000):
        world.create_task("prod", "thumbnail")
        clock.advance(0.01)
    timestamps = ApiProfile(timestamps=True)
    with SimulatorTestServer(world, api_key=API_KEY, cursor_pagination=False, profile=timestamps) as legacy:
        exporter = make_exporter(legacy, namespaces=("prod",))
        await exporter.poll()
        offsets = [int(r.query.get("offset", 0)) for r in legacy.requests if r.path == TASKS_LIST]
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert exporter.value("mixpeek_exporter_tracked_tasks", mixpeek_namespace="prod") == 25_000
    assert max(offsets) <= 10_000


@pytest.mark.parametrize("cursor_pagination", [True, False], ids=["cursor", "offset"])
async def test_task_created_while_paging_is_not_counted_twice(
    clock: FakeClock, world: World, make_exporter: MakeExporter, cursor_pagination: bool
) -> None:
    for _ in range(2_500):
        world.create_task("prod", "thumbnail", status="PENDING")
    inserted: list[str] = []

    async def insert_after_first_page(response: httpx.Response) -> None:
        if not inserted:
            clock.advance(1)
            inserted.append(world.create_task("prod", "thumbnail", status="COMPLETED"))

    with SimulatorTestServer(world, api_key=API_KEY, cursor_pagination=cursor_pagination) as api:
        exporter = make_exporter(
            api, namespaces=("prod",), event_hooks={"response": [insert_after_first_page]}
        )
        await exporter.poll()  # the baseline; the new task is newer than the first page, so it is not read
        assert exporter.value("mixpeek_exporter_tracked_tasks", mixpeek_namespace="prod") == 2_500
        assert (
            exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="PENDING", task_type="thumbnail")
            == 2_500
        )
        await exporter.poll()
        await exporter.poll()
    assert exporter.value("mixpeek_exporter_tracked_tasks", mixpeek_namespace="prod") == 2_501
    assert counted(exporter, "prod") == {("COMPLETED", "thumbnail"): 1}


async def test_transitions_match_ground_truth_over_many_polls(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(api, namespaces=("prod", "staging"), page_size=50)
    for ns in ("prod", "staging"):
        for _ in range(40):
            world.create_task(ns, "engine_cluster_build")
    await exporter.poll()
    baseline = {ns: truth(world, ns) for ns in ("prod", "staging")}
    previous: dict[frozenset[tuple[str, str]], float] = {}
    for _ in range(30):
        for ns in ("prod", "staging"):
            for _ in range(3):
                world.create_task(ns, "thumbnail")
        clock.advance(10)
        world.advance(10)
        await exporter.poll()
        scraped = exporter.scrape()
        for labels, value in select(scraped, TRANSITIONS).items():
            assert value >= previous.get(labels, 0), "a counter went down"
            previous[labels] = value
    for ns in ("prod", "staging"):
        expected = truth(world, ns)
        for key, n in baseline[ns].items():
            expected[key] -= n
        assert counted(exporter, ns) == {k: v for k, v in expected.items() if v}
        assert sum(expected.values()) > 0
        live = world.status_counts(ns)
        gauges = select(exporter.scrape(), "mixpeek_tasks", mixpeek_namespace=ns)
        assert {dict(k)["status"] for k in gauges} >= set(ZERO_FILLED_STATUSES)
        totals: dict[str, float] = {}
        for k, v in gauges.items():
            totals[dict(k)["status"]] = totals.get(dict(k)["status"], 0) + v
        assert {s: int(v) for s, v in totals.items() if v} == dict(live)


async def test_every_task_lifecycle_status_is_exported_at_zero_for_a_seen_type(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    world.create_task("prod", "thumbnail", status="PENDING")
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()
    scraped = exporter.scrape()
    statuses = {
        dict(k)["status"]
        for k in select(scraped, "mixpeek_tasks", mixpeek_namespace="prod", task_type="thumbnail")
    }
    assert statuses == set(ZERO_FILLED_STATUSES)
    zero_counters = select(scraped, TRANSITIONS, mixpeek_namespace="prod", task_type="thumbnail")
    assert {dict(k)["status"] for k in zero_counters} == set(TERMINAL_STATUSES)
    assert set(zero_counters.values()) == {0.0}


async def test_restart_takes_a_new_baseline(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    ids = [world.create_task("prod", "thumbnail", status="PROCESSING") for _ in range(5)]
    first = make_exporter(api, namespaces=("prod",))
    await first.poll()
    for task_id in ids[:3]:
        world.set_status(task_id, "FAILED")
    await first.poll()
    assert counted(first, "prod") == {("FAILED", "thumbnail"): 3}
    restarted = make_exporter(api, namespaces=("prod",))
    await restarted.poll()
    assert counted(restarted, "prod") == {}
    world.set_status(ids[3], "FAILED")
    clock.advance(30)
    await restarted.poll()
    assert counted(restarted, "prod") == {("FAILED", "thumbnail"): 1}


async def test_unknown_status_and_task_type_are_exported(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()
    world.create_task("prod", "api_quantum_teleport", status="RETRYING")
    await exporter.poll()
    assert (
        exporter.value(
            "mixpeek_tasks", mixpeek_namespace="prod", status="RETRYING", task_type="api_quantum_teleport"
        )
        == 1
    )
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1


async def test_failing_namespace_does_not_break_the_others(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, logs: list[EventDict]
) -> None:
    world.create_task("prod", "thumbnail")
    exporter = make_exporter(api, namespaces=("prod", "ghost"))
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert exporter.value("mixpeek_up", mixpeek_namespace="ghost") == 0
    assert (
        exporter.value("mixpeek_exporter_poll_errors_total", mixpeek_namespace="ghost", reason="not_found")
        == 1
    )
    assert exporter.value("mixpeek_exporter_last_success_timestamp_seconds", mixpeek_namespace="prod") > 0
    assert not select(
        exporter.scrape(), "mixpeek_exporter_last_success_timestamp_seconds", mixpeek_namespace="ghost"
    )
    warning = [e for e in logs if e["event"] == "poll failed"]
    assert warning
    assert warning[0]["namespace"] == "ghost"
    assert warning[0]["reason"] == "not_found"
    assert not exporter.poller.ready()


async def test_failed_poll_keeps_the_previous_snapshot(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    ids = [world.create_task("prod", "thumbnail", status="PROCESSING") for _ in range(3)]
    flaky = FlakyTransport(fail={5, 6, 7, 8})  # the second page of the second poll, and its 3 retries
    exporter = make_exporter(api, namespaces=("prod",), page_size=1, transport=flaky)
    await exporter.poll()
    before = select(exporter.scrape(), "mixpeek_tasks")
    world.set_status(ids[0], "FAILED")
    await exporter.poll()
    assert flaky.count == 8
    assert len(exporter.sleeps.waits) == 3
    assert select(exporter.scrape(), "mixpeek_tasks") == before
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 0
    assert (
        exporter.value(
            "mixpeek_exporter_poll_errors_total", mixpeek_namespace="prod", reason="connection_error"
        )
        == 1
    )
    assert counted(exporter, "prod") == {}


async def test_rejected_key_is_reported_not_raised(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, logs: list[EventDict]
) -> None:
    exporter = make_exporter(api, key="sk_wrong", namespaces=("prod",))
    for _ in range(3):
        await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 0
    assert (
        exporter.value("mixpeek_exporter_poll_errors_total", mixpeek_namespace="prod", reason="unauthorized")
        == 3
    )
    assert exporter.value("mixpeek_exporter_api_requests_total", endpoint=TASKS_LIST, code="401") == 3
    failures = [(e["log_level"], e["event"]) for e in logs if e["event"].startswith("poll failed")]
    assert failures == [
        ("error", "poll failed: API key rejected"),
        ("debug", "poll failed: API key still rejected"),
        ("debug", "poll failed: API key still rejected"),
    ]


async def test_discovers_every_namespace(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(api)
    assert not exporter.poller.ready()
    await exporter.poll()
    assert {dict(k)["mixpeek_namespace"] for k in select(exporter.scrape(), "mixpeek_up")} == {
        "prod",
        "staging",
    }
    assert exporter.poller.ready()
    world.add_namespace("new-team")
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="new-team") == 1


async def test_organization_scope_labels_by_the_name_of_the_namespace_id(
    world: World, make_exporter: MakeExporter
) -> None:
    world.create_task("prod", "thumbnail")
    world.create_task("staging", "thumbnail")
    profile = ApiProfile(header_honoured=False, namespace_ids=NamespaceIds.ALL)
    with SimulatorTestServer(world, api_key=API_KEY, profile=profile) as org_api:
        exporter = make_exporter(org_api, organization=True)
        await exporter.poll()
        assert all("X-Namespace" not in r.headers for r in org_api.requests if r.path == TASKS_LIST)
    assert (
        exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="PENDING", task_type="thumbnail")
        == 1
    )
    assert len(select(exporter.scrape(), "mixpeek_up")) == 2
    assert exporter.poller.ready()


async def test_every_request_body_is_a_valid_sdk_list_tasks_request(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    models = pytest.importorskip("mixpeek.models.list_tasks_request")
    for _ in range(30):
        world.create_task("prod", "thumbnail")
    exporter = make_exporter(api, namespaces=("prod",), page_size=7)
    await exporter.poll()
    bodies = [r.body for r in api.requests if r.path == TASKS_LIST]
    assert len(bodies) == 5
    for body in bodies:
        assert isinstance(body, dict)
        assert set(body) <= set(models.ListTasksRequest.model_fields)
        assert models.ListTasksRequest.from_dict(body).to_dict() == body
