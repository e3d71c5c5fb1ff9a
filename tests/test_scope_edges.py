"""Organisation scope and the auto scope switch at their edges: where a label, a page or a batch listing
could count a task twice, invent a transition, or lose a poll (each found in review, each failing before
its fix)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support import Exporter, select, simulator

from exporter.api import ApiError
from exporter.config import Scope
from exporter.simulator import World
from exporter.simulator.testing import FakeClock

MakeExporter = Callable[..., Exporter]
KEY = "sk_test_scope_edges"


def by_namespace(exporter: Exporter, name: str, **labels: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in select(exporter.scrape(), name, **labels).items():
        namespace = dict(key)["mixpeek_namespace"]
        found[namespace] = found.get(namespace, 0) + value
    return found


async def test_a_namespace_first_labelled_in_an_incremental_poll_gets_a_full_listing_not_phantom_counts(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, make_exporter: MakeExporter
) -> None:
    """Discovery fails once, so the baseline labels tasks by namespace id; the next (incremental) poll
    knows the name. The new label has no state to lay changes over: that poll lists everything."""
    world = World(clock=clock, seed=1)
    world.add_namespace("prod")
    for _ in range(30):
        world.set_status(world.create_task("prod", "thumbnail", "PENDING"), "FAILED")
        clock.advance(1)
    world.create_task("prod", "thumbnail", "PROCESSING")
    with simulator(world, "namespace_ids_all", api_key=KEY) as api:
        exporter = make_exporter(api, key=KEY, scope=Scope.ORGANIZATION, page_size=10, reconcile_every=4)
        real = exporter.client.list_namespaces
        calls = []

        async def down_once() -> object:
            calls.append(1)
            if len(calls) == 1:
                raise ApiError("discovery down once")
            return await real()

        monkeypatch.setattr(exporter.client, "list_namespaces", down_once)
        for _ in range(5):
            await exporter.poll()
            assert sum(by_namespace(exporter, "mixpeek_tasks", status="FAILED").values()) == 30
            assert not any(by_namespace(exporter, "mixpeek_task_terminal_transitions_total").values())
            clock.advance(15)
    assert by_namespace(exporter, "mixpeek_tasks", status="FAILED")["prod"] == 30


async def test_organisation_scope_pages_past_other_namespaces_tasks(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    """Pages made only of tasks of namespaces not polled here are progress, not a loop."""
    world = World(clock=clock, seed=1)
    world.add_namespace("prod")
    world.add_namespace("staging")
    for _ in range(5):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    for _ in range(40):  # four pages of staging's tasks, newer than prod's
        world.create_task("staging", "thumbnail", "COMPLETED")
        clock.advance(1)
    with simulator(world, "namespace_ids_all", api_key=KEY) as api:
        exporter = make_exporter(api, key=KEY, scope=Scope.ORGANIZATION, namespaces=("prod",), page_size=10)
        await exporter.poll()
    assert by_namespace(exporter, "mixpeek_up") == {"prod": 1}
    assert by_namespace(exporter, "mixpeek_tasks", status="COMPLETED") == {"prod": 5}


async def test_the_batches_of_the_poll_that_finds_the_batch_route_missing_are_all_shown(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    world = World(clock=clock, seed=1)
    world.add_namespace("prod")
    for _ in range(7):
        world.create_batch("prod", status="COMPLETED", objects=2)
    with simulator(world, "batches_list_absent", api_key=KEY) as api:
        exporter = make_exporter(api, key=KEY, namespaces=("prod",), batches=True)
        for _ in range(2):
            await exporter.poll()
            assert by_namespace(exporter, "mixpeek_batches") == {"prod": 7}
            clock.advance(30)
    assert exporter.value("mixpeek_exporter_api_check_failures_total", check="batches_route") == 1


async def test_polls_queued_behind_the_slots_when_auto_moves_to_organisation_scope_are_void(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    """X-Namespace ignored and no namespace ids, more namespaces than slots, and no tasks when the scope was
    probed: the first namespace to see tasks finds the evidence; the namespaces still waiting for a slot
    must not then apply the organisation's listing as their own."""
    world = World(clock=clock, seed=2)
    for name in ("a", "b", "c", "d"):
        world.add_namespace(name)
    with simulator(world, "header_ignored_ids_none", api_key=KEY) as api:
        exporter = make_exporter(api, key=KEY, scope=Scope.AUTO, concurrency=1, reconcile_every=4)
        await exporter.poll()  # the probe sees no tasks: namespace scope
        for _ in range(30):
            world.set_status(world.create_task("a", "thumbnail", "PENDING"), "FAILED")
            clock.advance(1)
        for _ in range(4):
            clock.advance(15)
            await exporter.poll()
    scope = select(exporter.scrape(), "mixpeek_exporter_scope")
    assert {dict(labels)["scope"] for labels in scope} == {"organization"}
    assert by_namespace(exporter, "mixpeek_tasks", status="FAILED") == {"unknown": 30}
    assert not any(by_namespace(exporter, "mixpeek_task_terminal_transitions_total").values())
