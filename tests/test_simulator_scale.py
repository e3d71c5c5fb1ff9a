"""The simulator at scale: cached listings answer what the uncached listing answers, and stay fresh.

`TaskListings` (what the server serves) is checked against `list_tasks` over the world's snapshot (the
reference: filter and sort on every request), page by page, by cursor and by offset, before and after each
kind of change to the world.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import PROFILES, by_profile, known_namespace

from exporter.simulator import TERMINAL_STATUSES, ApiProfile, World
from exporter.simulator import filters as filters_module
from exporter.simulator.filters import compile_filters, pinned_ids, sort_bounds
from exporter.simulator.task_listing import TaskListings, list_tasks
from exporter.simulator.testing import FakeClock
from exporter.simulator.timestamps import iso

NEWEST_FIRST = {"field": "created_at", "direction": "desc"}
TERMINAL = sorted(TERMINAL_STATUSES)
STATUSES = ("PENDING", "QUEUED", "PROCESSING", "IN_PROGRESS", *TERMINAL)
TYPES = ("thumbnail", "api_buckets_batches_process", "engine_cluster_build", "api_taxonomies_execute")
TIMESTAMPED = PROFILES["timestamps"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    """Two namespaces of tasks of every status and type, some created at the same instant (ties)."""
    world = World(clock, seed=5)
    rng = random.Random(5)
    for name in ("prod", "staging"):
        world.add_namespace(name)
        specs = [
            (rng.choice(TYPES), rng.choice(STATUSES), clock() - 3600 + (i // 3) * 7.5) for i in range(450)
        ]
        world.create_tasks(name, specs)
    return world


def pages(
    answer: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]],
    body: dict[str, Any],
    *,
    limit: int = 40,
    cursor: bool = True,
) -> Iterator[dict[str, Any]]:
    """Every page of a listing, by cursor or by offset."""
    query = {"limit": str(limit)}
    offset = 0
    while True:
        page = answer(body, query)
        yield page
        if cursor:
            next_cursor = page["pagination"]["next_cursor"]
            if not next_cursor:
                return
            query = {"limit": str(limit), "cursor": next_cursor}
        else:
            offset += limit
            if offset >= page["pagination"]["total"]:
                return
            query = {"limit": str(limit), "offset": str(offset)}


def answers(
    world: World,
    listings: TaskListings,
    scope: str | None,
    *,
    cursor: bool = True,
    profile: ApiProfile = TIMESTAMPED,
) -> tuple[Callable[..., dict[str, Any]], Callable[..., dict[str, Any]]]:
    """(cached, reference) answers to one request, as the server would give them."""

    def cached(body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        return listings.page(body, query, scope=scope, cursor_pagination=cursor, profile=profile)

    def reference(body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        return list_tasks(
            world.tasks(scope), body, query, scope=scope, cursor_pagination=cursor, profile=profile
        )

    return cached, reference


def bodies(world: World) -> list[dict[str, Any]]:
    """What the exporter asks (all newest first) and a spread of other queries."""
    tasks = world.tasks("prod")
    some_ids = [t.task_id for t in tasks[::7]]
    middle = iso(tasks[len(tasks) // 2].created_at)
    return [
        {},
        {"sort": NEWEST_FIRST},
        {
            "sort": NEWEST_FIRST,
            "filters": {
                "OR": [
                    {"NOT": [{"field": "status", "operator": "in", "value": TERMINAL}]},
                    {"field": "created_at", "operator": "gte", "value": middle},
                ]
            },
        },
        {
            "sort": NEWEST_FIRST,
            "filters": {"AND": [{"field": "task_id", "operator": "in", "value": some_ids}]},
        },
        {
            "sort": NEWEST_FIRST,
            "filters": {"AND": [{"field": "created_at", "operator": "lte", "value": middle}]},
        },
        {
            "sort": {"field": "created_at", "direction": "asc"},
            "filters": {
                "AND": [
                    {"field": "created_at", "operator": "gt", "value": tasks[40].created_at},
                    {"field": "created_at", "operator": "lt", "value": middle},
                ]
            },
        },
        {
            "sort": NEWEST_FIRST,
            "filters": {
                "AND": [
                    {"field": "task_id", "operator": "in", "value": [i.upper() for i in some_ids]},
                    {"field": "status", "operator": "eq", "value": "completed"},
                ]
            },
        },
        {"status": "FAILED", "sort": NEWEST_FIRST},
        {"task_type": "thumbnail", "filters": {"status": "PROCESSING"}},
        {"sort": {"field": "additional_data.bucket_id", "direction": "desc"}},
        {"sort": {"field": "status"}, "search": "engine"},
        {"filters": {"NOT": [{"field": "task_type", "operator": "nin", "value": ["THUMBNAIL", 3]}]}},
    ]


def assert_same_pages(
    world: World,
    listings: TaskListings,
    scope: str | None,
    *,
    cursor: bool = True,
    profile: ApiProfile = TIMESTAMPED,
) -> None:
    cached, reference = answers(world, listings, scope, cursor=cursor, profile=profile)
    for body in bodies(world):
        got = list(pages(cached, body, cursor=cursor))
        want = list(pages(reference, body, cursor=cursor))
        assert got == want, body


@pytest.mark.parametrize(
    ("profile", "scope", "cursor"),
    [
        *((PROFILES["timestamps"], scope, cursor) for scope in ("prod", None) for cursor in (True, False)),
        *((PROFILES[name], None, True) for name in ("documented", "filters_ignored", "sort_ignored")),
        (PROFILES["hostile"], None, True),
    ],
    ids=lambda value: str(value) if isinstance(value, ApiProfile) else repr(value),
)
def test_cached_pages_are_the_pages_of_the_uncached_listing(
    world: World, scope: str | None, cursor: bool, profile: ApiProfile
) -> None:
    namespace = known_namespace(world, scope).namespace_id if scope else None
    listings = TaskListings(world)
    assert_same_pages(world, listings, namespace, cursor=cursor, profile=profile)
    assert_same_pages(world, listings, namespace, cursor=cursor, profile=profile)  # again, from the cache


@by_profile("filters_ignored", "sort_ignored")
def test_what_a_profile_ignores_shares_the_plain_listing(world: World, profile: ApiProfile) -> None:
    """Ignored filters or sort drop out of the cache key: whatever a client asks reads one listing."""
    listings = TaskListings(world)
    cached, reference = answers(world, listings, None, profile=profile)
    plain = cached({}, {"limit": "1000"})
    active = {"NOT": [{"field": "status", "operator": "in", "value": TERMINAL}]}
    by_id = {"AND": [{"field": "task_id", "operator": "in", "value": [world.tasks()[3].task_id]}]}
    asked = (
        [{"filters": active}, {"filters": by_id}]
        if not profile.filters_honoured
        else [{"sort": NEWEST_FIRST}, {"sort": {"field": "status", "direction": "desc"}}]
    )
    for body in asked:
        assert cached(body, {"limit": "1000"})["results"] == plain["results"], body
        assert reference(body, {"limit": "1000"})["results"] == plain["results"], body
    assert listings.builds == 1


def test_each_listing_sorts_once_per_version(world: World) -> None:
    listings = TaskListings(world)
    cached, _ = answers(world, listings, known_namespace(world, "prod").namespace_id)
    everything = list(pages(cached, {"sort": NEWEST_FIRST}, limit=10))
    assert len(everything) == 45
    assert listings.builds == 1


def test_lookups_by_id_and_windows_of_the_sort_field_never_sort_the_namespace(world: World) -> None:
    listings = TaskListings(world)
    cached, _ = answers(world, listings, None, cursor=False)  # offset pages, as the exporter reads windows
    tasks = world.tasks()
    by_id = {
        "filters": {"AND": [{"field": "task_id", "operator": "in", "value": [t.task_id for t in tasks[:5]]}]}
    }
    assert len(cached(by_id, {"limit": "10"})["results"]) == 5
    assert listings.builds == 0
    for task in tasks[100:600:50]:  # ten windows, one listing sorted for all of them
        window = {
            "sort": NEWEST_FIRST,
            "filters": {"AND": [{"field": "created_at", "operator": "lte", "value": iso(task.created_at)}]},
        }
        list(pages(cached, window, limit=50, cursor=False))
    assert listings.builds == 1


def mutations(world: World, clock: FakeClock) -> Iterator[str]:
    """Each way the world's tasks change; yields its name after applying it."""
    task = world.tasks("prod")[10]
    world.set_status(task.task_id, "FAILED" if task.status != "FAILED" else "PROCESSING")
    yield "set_status"
    world.create_task("prod", "thumbnail", "PENDING")
    yield "create_task"
    world.create_tasks("prod", [("thumbnail", "COMPLETED", clock())])
    yield "create_tasks"
    world.remove_task(world.tasks("prod")[0].task_id)
    yield "remove_task"
    world.fail_burst("prod", 2)
    yield "fail_burst"
    clock.advance(60)
    world.advance(60)  # the burst fails, running tasks move on
    yield "advance"
    world.create_task("prod", "thumbnail", "COMPLETED", created_at=clock() - 24 * 3600 + 30)
    clock.advance(60)  # ...and that one expires, with no call but the listing's own
    yield "expiry"


def test_every_change_makes_the_cached_listing_fresh(world: World, clock: FakeClock) -> None:
    listings = TaskListings(world)
    prod = known_namespace(world, "prod").namespace_id
    cached, reference = answers(world, listings, prod)
    body = {
        "sort": NEWEST_FIRST,
        "filters": {"NOT": [{"field": "status", "operator": "in", "value": TERMINAL}]},
    }
    query = {"limit": "1000"}
    cached(body, query)
    for name in mutations(world, clock):
        builds = listings.builds
        assert cached(body, query) == reference(body, query), name
        assert listings.builds == builds + 1, name
        assert cached(body, query) == reference(body, query), name
        assert listings.builds == builds + 1, f"{name}: the second request is served from the cache"


def test_a_change_in_one_namespace_leaves_the_others_cached(world: World) -> None:
    listings = TaskListings(world)
    prod, staging = (known_namespace(world, n).namespace_id for n in ("prod", "staging"))
    query = {"limit": "5"}
    for scope in (prod, staging, None):
        listings.page({}, query, scope=scope, cursor_pagination=True, profile=TIMESTAMPED)
    before = (world.version(prod), world.version(staging), world.version())
    world.create_task("staging")
    assert world.version(prod) == before[0]
    assert world.version(staging) > before[1]
    assert world.version() > before[2]
    builds = listings.builds
    listings.page({}, query, scope=prod, cursor_pagination=True, profile=TIMESTAMPED)
    assert listings.builds == builds
    for scope in (staging, None):
        listings.page({}, query, scope=scope, cursor_pagination=True, profile=TIMESTAMPED)
    assert listings.builds == builds + 2


def test_the_cache_keeps_a_bounded_number_of_tasks(world: World) -> None:
    listings = TaskListings(world, max_listings=3, max_tasks=1000)
    for status in TERMINAL:
        for scope in (None, known_namespace(world, "prod").namespace_id):
            listings.page({"status": status}, {}, scope=scope, cursor_pagination=True, profile=TIMESTAMPED)
    cached = listings._listings  # the bound is the point of this test
    assert len(cached) <= 3
    assert sum(len(tasks) for _, tasks in cached.values()) <= 1000


# Filters: the direct predicates, and the shapes that need no scan


EQUALITY_VALUES: dict[str, list[object]] = {
    "status": ["FAILED", "failed", ["completed", "FAILED", 7, None], []],
    "task_type": ["thumbnail", ["THUMBNAIL", "engine_cluster_build"]],
    "task_id": ["nope", ["nope"]],
}
CONDITIONS: list[dict[str, Any]] = [
    {"field": field, "operator": op, "value": value}
    for field, values in EQUALITY_VALUES.items()
    for value in values
    for op in (("in", "nin") if isinstance(value, list) else ("eq", "ne"))
] + [
    {"field": field, "operator": op, "value": value}
    for field in ("created_at", "updated_at")
    for op in ("gt", "gte", "lt", "lte")
    for value in (1_759_998_400.0, "2025-10-09T08:00:00", "2025-10-09T08:00:00+02:00")
]


@pytest.mark.parametrize("case_sensitive", [False, True])
def test_direct_predicates_match_the_generic_ones(
    world: World, case_sensitive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = world.tasks()
    specs = [{"AND": [condition], "case_sensitive": case_sensitive} for condition in CONDITIONS]
    direct = [compile_filters(spec) for spec in specs]
    monkeypatch.setattr(filters_module, "_direct", lambda *_args: None)
    for spec, fast in zip(specs, direct, strict=True):
        generic = compile_filters(spec)
        assert [fast(t) for t in tasks] == [generic(t) for t in tasks], spec


def test_pinned_ids_come_from_the_conjuncts_only() -> None:
    cond = {"field": "task_id", "operator": "in", "value": ["A-1", "b-2", 3]}
    assert pinned_ids({"AND": [cond]}) == frozenset({"A-1", "a-1", "b-2"})
    assert pinned_ids({"task_id": "x"}) == frozenset({"x"})
    assert pinned_ids({"AND": [{"AND": [cond]}, {"field": "task_id", "value": "b-2"}]}) == frozenset({"b-2"})
    assert pinned_ids({"OR": [cond]}) is None
    assert pinned_ids({"NOT": [cond]}) is None
    assert pinned_ids({"AND": [{"field": "status", "value": "FAILED"}]}) is None
    assert pinned_ids(None) is None


def test_sort_bounds_only_for_range_conditions_on_the_sort_field() -> None:
    lte = {"field": "created_at", "operator": "lte", "value": 10.0}
    assert sort_bounds({"AND": [lte]}, "created_at") == [("lte", 10_000_000)]
    assert sort_bounds(
        {"AND": [lte, {"field": "created_at", "operator": "gt", "value": 2}]}, "created_at"
    ) == [
        ("lte", 10_000_000),
        ("gt", 2_000_000),
    ]
    assert sort_bounds({"AND": [lte]}, "updated_at") is None
    assert sort_bounds({"AND": [lte, {"field": "status", "value": "FAILED"}]}, "created_at") is None
    assert sort_bounds({"OR": [lte]}, "created_at") is None
    assert sort_bounds({"AND": [{"field": "created_at", "operator": "eq", "value": 1}]}, "created_at") is None


# The world in bulk


def test_create_tasks_makes_what_create_task_makes(clock: FakeClock) -> None:
    one, bulk = World(clock, seed=2), World(clock, seed=2)
    specs = [(kind, status, clock() - 60) for kind in TYPES for status in STATUSES]
    for world in (one, bulk):
        world.add_namespace("prod")
    singles = [one.create_task("prod", kind, status, created_at=when) for kind, status, when in specs]
    version = bulk.version("prod")
    ids = bulk.create_tasks("prod", specs)
    assert bulk.version("prod") > version
    assert len(set(ids)) == len(ids) == len(singles)
    assert bulk.transitions == one.transitions
    assert bulk.status_counts("prod") == one.status_counts("prod")
    for made, expected in zip(bulk.tasks_by_id(ids), (one.get_task(i) for i in singles), strict=True):
        assert expected is not None
        assert (made.status, made.task_type, made.created_at, made.updated_at, made.completed_at) == (
            expected.status,
            expected.task_type,
            expected.created_at,
            expected.updated_at,
            expected.completed_at,
        )
        assert made.additional_data.keys() == expected.additional_data.keys()
        assert len(made.inputs) == len(expected.inputs)
    # A task created finished is counted once, even when it finishes again.
    bulk.set_status(ids[-1], "FAILED")
    assert sum(bulk.transitions.values()) == sum(one.transitions.values())


def test_tasks_by_id_looks_up_live_tasks_of_the_scope(world: World) -> None:
    prod, staging = world.tasks("prod"), world.tasks("staging")
    wanted = [prod[3].task_id, staging[4].task_id, "nope", prod[3].task_id]
    assert world.tasks_by_id(wanted) == [prod[3], staging[4]]
    assert world.tasks_by_id(wanted, "prod") == [prod[3]]
    world.remove_task(prod[3].task_id)
    assert world.tasks_by_id(wanted) == [staging[4]]
