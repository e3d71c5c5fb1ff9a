"""Incremental polling: the same history polled by full listings and by changes gives the same metrics.

Two exporters watch one simulated API: one lists everything every poll, the other reconciles every few
polls and in between asks only for what is active or new, then resolves by id what left the active set.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest import API_KEY
from support import Exporter, Series

from exporter.api import MAX_BARREN_PAGES, TASKS_LIST
from exporter.simulator import ApiProfile, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.testing.faults import HttpError, Requests
from exporter.vocabulary import TERMINAL_STATUSES

MakeExporter = Callable[..., Exporter]
THUMBNAILS = {"mixpeek_namespace": "prod", "task_type": "thumbnail"}
# The task series a dashboard reads: everything but the exporter's own request and timing figures.
TASK_METRICS = (
    "mixpeek_tasks",
    "mixpeek_task_terminal_transitions_total",
    "mixpeek_task_completion_seconds_bucket",
    "mixpeek_task_completion_seconds_count",
    "mixpeek_task_completion_seconds_sum",
    "mixpeek_task_oldest_active_age_seconds",
    "mixpeek_exporter_tracked_tasks",
)


def task_series(exporter: Exporter) -> Series:
    return {key: value for key, value in exporter.scrape().items() if key[0] in TASK_METRICS}


def task_requests(api: SimulatorTestServer) -> int:
    return sum(1 for request in api.requests if request.path == TASKS_LIST)


@pytest.mark.parametrize("organization", [False, True], ids=["namespace", "organization"])
async def test_incremental_polls_give_the_metrics_of_full_listings(
    clock: FakeClock, make_exporter: MakeExporter, organization: bool
) -> None:
    """Births, progress, failures, tasks born and finished between polls, a terminal task that comes
    back to life, an active task that vanishes: every poll, the two modes agree to the sample."""
    world = World(clock=clock, seed=11, spawn_rate_per_s=1.0, mean_running_s=40.0)
    world.add_namespace("prod")
    world.add_namespace("staging")
    for i in range(600):
        world.create_task(
            ("prod", "staging")[i % 3 == 0], ("thumbnail", "api_taxonomies_execute")[i % 2], "COMPLETED"
        )
        clock.advance(1)
    world.advance(120)
    rng = random.Random(3)
    scope: dict[str, Any] = {"organization": True} if organization else {"namespaces": ("prod", "staging")}
    with SimulatorTestServer(world, api_key=API_KEY, profile=ApiProfile(timestamps=True)) as api:
        full = make_exporter(api, page_size=50, **scope)
        incremental = make_exporter(api, page_size=50, reconcile_every=4, **scope)
        for step in range(14):
            await full.poll()
            await incremental.poll()
            assert task_series(incremental) == task_series(full), f"poll {step}"
            clock.advance(15)
            world.advance(15)
            if step == 3:
                finished = [t.task_id for t in world.tasks("prod") if t.status in TERMINAL_STATUSES]
                world.set_status(rng.choice(finished), "PROCESSING")  # a retry revives a finished task
            if step == 6:
                active = [t for t in world.tasks("prod") if t.status not in TERMINAL_STATUSES]
                world.remove_task(min(active, key=lambda t: t.created_at).task_id)  # one both track
            if step == 8:
                born = world.create_task("prod", "thumbnail", "PENDING")
                world.set_status(born, "FAILED")  # born and failed between two polls
    assert incremental.total("mixpeek_task_terminal_transitions_total") > 50


async def test_steady_incremental_polls_cost_requests_for_changes_not_for_size(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """5,000 finished tasks and a handful changing: a full listing needs 50 pages of 100 (and one request
    to check the sort), a poll of changes one page of active tasks, one page of the newest tasks (births
    stop at the first known task) and one lookup by id."""
    running = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(20)]
    for _ in range(5000):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with SimulatorTestServer(world, api_key=API_KEY) as api:
        exporter = make_exporter(api, namespaces=("prod",), page_size=100, reconcile_every=10)
        await exporter.poll()
        first = task_requests(api)
        for task_id in running[:10]:
            world.set_status(task_id, "FAILED")
        clock.advance(30)
        await exporter.poll()
        steady = task_requests(api) - first
    assert (first, steady) == (52, 3)
    assert exporter.value("mixpeek_task_terminal_transitions_total", **THUMBNAILS, status="FAILED") == 10
    assert exporter.value("mixpeek_tasks", **THUMBNAILS, status="PROCESSING") == 10


async def test_births_the_active_set_listed_already_are_progress_not_a_loop(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """Regression (1M tasks, 1 % churn): more active births than MAX_BARREN_PAGES pages. The active set lists
    them first, so the births listing finds every one already listed in this poll; that is the walk making
    progress, not a cursor loop, and the poll must go on to the first task known before it."""
    for _ in range(500):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with SimulatorTestServer(world, api_key=API_KEY) as api:
        exporter = make_exporter(api, namespaces=("prod",), page_size=10, reconcile_every=10)
        await exporter.poll()
        born = [
            world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(10 * (MAX_BARREN_PAGES + 2))
        ]
        clock.advance(30)
        await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert exporter.value("mixpeek_tasks", **THUMBNAILS, status="PROCESSING") == len(born)
    full = exporter.value("mixpeek_exporter_last_full_listing_timestamp_seconds", mixpeek_namespace="prod")
    assert full < clock()  # the second poll was incremental


async def test_a_finished_task_that_expires_leaves_the_gauges_at_the_next_reconcile(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """Between full listings nobody asks about finished tasks, so one that expires still counts in its
    status until the next full listing; counters are not affected."""
    ids = [world.create_task("prod", "thumbnail", "COMPLETED") for _ in range(3)]
    clock.advance(1)
    with SimulatorTestServer(world, api_key=API_KEY, profile=ApiProfile(timestamps=True)) as api:
        exporter = make_exporter(api, namespaces=("prod",), reconcile_every=3)
        await exporter.poll()
        world.remove_task(ids[0])
        shown = []
        for _ in range(3):
            clock.advance(30)
            await exporter.poll()
            shown.append(
                exporter.value(
                    "mixpeek_tasks", mixpeek_namespace="prod", status="COMPLETED", task_type="thumbnail"
                )
            )
    assert shown == [3, 3, 2]
    assert exporter.total("mixpeek_task_terminal_transitions_total") == 0


async def test_concurrent_offset_pages_list_what_sequential_pages_list(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """Without cursors, offset pages are requested several at a time, handed over in order."""
    for i in range(2_350):
        world.create_task("prod", "thumbnail", ("PENDING", "COMPLETED")[i % 2])
        clock.advance(0.5)
    with SimulatorTestServer(world, api_key=API_KEY, cursor_pagination=False) as legacy:
        one = make_exporter(legacy, namespaces=("prod",), page_size=100)
        await one.poll()
        sequential = task_requests(legacy)
        four = make_exporter(legacy, namespaces=("prod",), page_size=100, page_concurrency=4)
        await four.poll()
        concurrent = task_requests(legacy) - sequential
    assert task_series(four) == task_series(one)
    assert four.value("mixpeek_exporter_tracked_tasks", mixpeek_namespace="prod") == 2_350
    # 24 pages one by one; concurrently, the first page, then 6 rounds of 4 (the last round reads one
    # page past the end).
    assert (sequential, concurrent) == (24, 25)


async def test_an_incremental_poll_that_fails_part_way_changes_nothing_and_the_next_counts_once(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """A 400 (not retried) on the births listing, which carries no filter: the poll fails as a whole, the
    state stays as it was, and the next poll counts each finished task once."""
    running = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(4)]
    for _ in range(30):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with SimulatorTestServer(world, api_key=API_KEY, profile=ApiProfile(timestamps=True)) as api:
        exporter = make_exporter(api, namespaces=("prod",), reconcile_every=10)
        await exporter.poll()
        for task_id in running[:3]:
            world.set_status(task_id, "FAILED")
        clock.advance(30)
        api.inject(HttpError(400), namespace="prod", requests=Requests.nth(2))
        await exporter.poll()
        failed = task_series(exporter)
        up_during = exporter.value("mixpeek_up", mixpeek_namespace="prod")
        api.clear_faults()
        clock.advance(30)
        await exporter.poll()
        await exporter.poll()
    labels = {"mixpeek_namespace": "prod", "status": "FAILED", "task_type": "thumbnail"}
    assert up_during == 0
    assert failed[("mixpeek_tasks", frozenset({**labels, "status": "PROCESSING"}.items()))] == 4
    assert exporter.value("mixpeek_task_terminal_transitions_total", **labels) == 3
    assert exporter.value("mixpeek_tasks", **labels) == 3


@pytest.mark.parametrize(
    ("failing", "check", "mode"),
    [(1, "filter_refused", "full"), (3, "id_lookup", "by_id")],
    ids=["active-set filter", "task_id lookup"],
)
async def test_a_refused_filter_falls_back_in_the_same_poll_and_counts_once(
    clock: FakeClock, world: World, make_exporter: MakeExporter, failing: int, check: str, mode: str
) -> None:
    """A 400 or 422 on a request that carries filters says the API does not take them: not a dead end.
    The poll goes on without them (a full listing, or one GET per id), stays exact, and the fallback
    shows in the check counter and the poll-mode gauge."""
    running = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(4)]
    for _ in range(30):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with SimulatorTestServer(world, api_key=API_KEY) as api:
        exporter = make_exporter(api, namespaces=("prod",), page_size=10, reconcile_every=10)
        await exporter.poll()
        for task_id in running[:3]:
            world.set_status(task_id, "FAILED")
        clock.advance(30)
        api.inject(HttpError(422), namespace="prod", requests=Requests.nth(failing))
        await exporter.poll()
        up_during = exporter.value("mixpeek_up", mixpeek_namespace="prod")
        api.clear_faults()
        clock.advance(30)
        await exporter.poll()
    labels = {"mixpeek_namespace": "prod", "status": "FAILED", "task_type": "thumbnail"}
    assert up_during == 1
    assert exporter.value("mixpeek_task_terminal_transitions_total", **labels) == 3
    assert exporter.value("mixpeek_tasks", **labels) == 3
    assert exporter.value("mixpeek_exporter_api_check_failures_total", check=check) == 1
    assert (
        exporter.value(
            "mixpeek_exporter_poll_mode", mixpeek_namespace="prod", resource="tasks", mode=mode, reason=check
        )
        == 1
    )
