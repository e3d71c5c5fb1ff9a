"""The simulated Mixpeek API: the world's lifecycle and ground truth, then its HTTP rules over a socket."""

import gzip
import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import PROFILES, by_profile

from exporter.simulator import DEFAULT_API_KEY, DOCUMENTED, TERMINAL_STATUSES, ApiProfile, World, start_demo
from exporter.simulator.filters import FIELDS
from exporter.simulator.render import task_json
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.timestamps import iso, parse_micros, to_micros

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
NAIVE_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}")
LIFECYCLE = {"PENDING", "QUEUED", "IN_PROGRESS", "PROCESSING", *TERMINAL_STATUSES}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock, seed=7)


@pytest.fixture
def profile() -> ApiProfile:
    """The documented API; a test that reads what only another profile serves parametrises this."""
    return DOCUMENTED


@pytest.fixture
def server(world: World, profile: ApiProfile) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, profile=profile) as running:
        yield running


@pytest.fixture
def client(server: SimulatorTestServer) -> Iterator[httpx.Client]:
    with connect(server.url, AUTH) as http:
        yield http


def connect(url: str, headers: dict[str, str] | None = None) -> httpx.Client:
    """A client for the loopback server: plain HTTP, so it skips loading CA certificates (90 ms a client)."""
    return httpx.Client(base_url=url, headers=headers or {}, timeout=10, verify=False)


def tick(clock: FakeClock, world: World, seconds: float) -> None:
    """Move the fake clock and the world by the same amount, as the world expects."""
    clock.advance(seconds)
    world.advance(seconds)


def list_page(
    client: httpx.Client, body: dict[str, Any] | None = None, namespace: str | None = None, **params: Any
) -> dict[str, Any]:
    headers = {"X-Namespace": namespace} if namespace else {}
    response = client.post("/v1/tasks/list", params=params, json=body or {}, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def walk(
    client: httpx.Client, body: dict[str, Any] | None = None, namespace: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Every task of a listing, following next_cursor."""
    results: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = list_page(client, body, namespace, **params)
        results += page["results"]
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            return results


def ids(results: list[dict[str, Any]]) -> list[str]:
    return [task["task_id"] for task in results]


# The world


def test_namespaces_get_deterministic_ids_and_resolve_by_name_or_id(clock: FakeClock) -> None:
    first, second = World(clock, seed=3), World(clock, seed=3)
    ns_id = first.add_namespace("prod")
    assert ns_id == second.add_namespace("prod")
    assert re.fullmatch(r"ns_[0-9a-f]{12}", ns_id)
    assert first.namespace("prod") == first.namespace(ns_id)
    assert first.namespace("nope") is None
    with pytest.raises(ValueError, match="already exists"):
        first.add_namespace("prod")


def test_create_task_defaults_and_batch_metadata(world: World, clock: FakeClock) -> None:
    ns_id = world.add_namespace("prod")
    batch = world.get_task(world.create_task("prod"))
    other = world.get_task(
        world.create_task(ns_id, task_type="api_taxonomies_execute", created_at=clock() - 60)
    )
    assert batch is not None
    assert other is not None
    assert uuid.UUID(batch.task_id).version == 4
    assert (batch.status, batch.task_type, batch.created_at, batch.completed_at) == (
        "PENDING",
        "api_buckets_batches_process",
        clock(),
        None,
    )
    assert batch.additional_data["namespace_id"] == ns_id
    assert {"bucket_id", "batch_id"} <= set(batch.additional_data)
    assert batch.inputs == (batch.additional_data["batch_id"],)
    assert other.created_at == clock() - 60
    assert other.additional_data == {"namespace_id": ns_id}


def test_set_status_counts_a_terminal_status_once_and_accepts_unknown_values(
    world: World, clock: FakeClock
) -> None:
    ns_id = world.add_namespace("prod")
    task_id = world.create_task("prod", task_type="brand_new_type")
    clock.advance(5)
    world.set_status(task_id, "RETRYING")
    world.set_status(task_id, "FAILED")
    world.set_status(task_id, "COMPLETED")  # a terminal task changing again does not count twice
    task = world.get_task(task_id)
    assert task is not None
    assert (task.status, task.updated_at, task.completed_at) == ("COMPLETED", clock(), clock())
    assert world.transitions == Counter({(ns_id, "FAILED", "brand_new_type"): 1})
    with pytest.raises(KeyError):
        world.set_status("no-such-task", "FAILED")


def test_a_task_created_terminal_counts_as_a_transition(world: World) -> None:
    ns_id = world.add_namespace("prod")
    failed = world.get_task(world.create_task("prod", status="FAILED"))
    assert failed is not None
    assert failed.completed_at == failed.created_at
    assert failed.additional_data["error"]
    assert world.transitions == Counter({(ns_id, "FAILED", "api_buckets_batches_process"): 1})


def test_advance_runs_a_realistic_lifecycle_with_exact_ground_truth(clock: FakeClock) -> None:
    world = World(clock, seed=11, spawn_rate_per_s=0.5, failure_ratio=0.2)
    prod = world.add_namespace("prod")
    world.add_namespace("dev", spawn_rate_per_s=0.1)
    start = clock()
    for _ in range(60):
        tick(clock, world, 10)
    tasks = world.tasks()
    assert 250 < len(world.tasks("prod")) < 350  # Poisson around 0.5/s for 600 s
    assert 30 < len(world.tasks("dev")) < 100
    assert {task.status for task in tasks} <= LIFECYCLE
    assert {task.task_type for task in tasks} > {"api_buckets_batches_process", "api_buckets_objects_create"}
    for task in tasks:
        assert start <= task.created_at <= task.updated_at <= clock()
        assert (task.completed_at is not None) == (task.status in TERMINAL_STATUSES)
    finished = Counter(
        (t.namespace_id, t.status, t.task_type) for t in tasks if t.status in TERMINAL_STATUSES
    )
    assert world.transitions == finished  # nothing expired yet, so the truth is what is visible
    prod_outcomes = Counter(t.status for t in world.tasks(prod) if t.status in TERMINAL_STATUSES)
    assert prod_outcomes["COMPLETED"] > prod_outcomes["FAILED"] > 0
    assert world.status_counts() == Counter(task.status for task in tasks)


def test_the_same_seed_and_calls_give_the_same_world() -> None:
    def run() -> list[Any]:
        clock = FakeClock()
        world = World(clock, seed=5, spawn_rate_per_s=0.3)
        world.add_namespace("prod")
        tick(clock, world, 300)
        return world.tasks()

    assert run() == run()


def test_fail_burst_fails_every_task_on_the_next_advance(world: World, clock: FakeClock) -> None:
    ns_id = world.add_namespace("prod")
    burst = world.fail_burst("prod", 25, task_type="engine_inference_run")
    assert world.status_counts("prod") == Counter({"PROCESSING": 25})
    tick(clock, world, 1)
    assert world.status_counts("prod") == Counter({"FAILED": 25})
    assert world.transitions == Counter({(ns_id, "FAILED", "engine_inference_run"): 25})
    failed = world.get_task(burst[0])
    assert failed is not None
    assert failed.completed_at == clock()
    assert failed.additional_data["error"]


def test_statuses_outside_the_lifecycle_stay_put(world: World, clock: FakeClock) -> None:
    world.add_namespace("prod")
    task_id = world.create_task("prod", status="RETRYING")
    tick(clock, world, 3600)
    task = world.get_task(task_id)
    assert task is not None
    assert task.status == "RETRYING"


def test_tasks_expire_after_retention_but_stay_counted(clock: FakeClock) -> None:
    world = World(clock, retention_s=3600)
    ns_id = world.add_namespace("prod")
    old = world.create_task("prod", status="COMPLETED", created_at=clock() - 3000)
    fresh = world.create_task("prod")
    clock.advance(601)  # no advance(): expiry is measured with the clock, like a Redis TTL
    assert world.get_task(old) is None
    assert ids_of(world) == [fresh]
    assert world.transitions == Counter({(ns_id, "COMPLETED", "api_buckets_batches_process"): 1})


def ids_of(world: World) -> list[str]:
    return [task.task_id for task in world.tasks()]


def test_removed_tasks_vanish_and_snapshots_are_copies(world: World) -> None:
    world.add_namespace("prod")
    keep, gone = world.create_task("prod"), world.create_task("prod")
    snapshot = world.tasks()
    snapshot.clear()
    world.remove_task(gone)
    assert ids_of(world) == [keep]
    with pytest.raises(KeyError):
        world.remove_task(gone)


def test_time_only_moves_forward(world: World, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="advance"):
        world.advance(-1)
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


def test_filter_fields_read_the_task_as_rendered(world: World) -> None:
    world.add_namespace("prod")
    task = world.get_task(world.create_task("prod", status="FAILED"))
    assert task is not None
    rendered = task_json(task, PROFILES["generous"])
    for name, read in FIELDS.items():
        expected = rendered.get(name)
        if name in ("created_at", "updated_at", "completed_at"):
            assert read(task) == parse_micros(str(expected))
        else:
            assert read(task) == expected, name


def test_timestamps_render_naively_and_parse_back_exactly() -> None:
    for instant in (1_760_000_000.0, 1_760_000_000.1234564, 1_760_000_000.9999996):
        text = iso(instant)
        assert NAIVE_ISO.fullmatch(text)
        assert parse_micros(text) == to_micros(instant)
    assert parse_micros("2025-10-09T10:53:20+02:00") == parse_micros("2025-10-09T08:53:20Z")


# HTTP: authentication, routing, errors


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "sk_test_x"}]
)
def test_task_routes_refuse_a_missing_or_wrong_key(
    server: SimulatorTestServer, headers: dict[str, str]
) -> None:
    with connect(server.url, headers) as http:
        response = http.post("/v1/tasks/list", json={})
    assert response.status_code == 401
    body = response.json()
    assert body["success"] is False
    assert body["status"] == 401
    assert body["error"]["type"] == "UnauthorizedError"


def test_unknown_routes_and_wrong_methods(client: httpx.Client) -> None:
    missing = client.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "NotFoundError"
    wrong = client.delete("/v1/namespaces/list")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


def test_unknown_body_key_is_refused_naming_the_accepted_keys(client: httpx.Client) -> None:
    response = client.post("/v1/tasks/list", json={"status": "FAILED", "namespace_id": "ns_x"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ["body", "namespace_id"]
    assert "status, task_type, filters, sort, search" in error["msg"]


@pytest.mark.parametrize(
    ("params", "loc", "error_type"),
    [
        ({"limit": 1001}, "limit", "less_than_equal"),
        ({"limit": 0}, "limit", "greater_than_equal"),
        ({"page_size": 1001}, "page_size", "less_than_equal"),
        ({"offset": 10001}, "offset", "less_than_equal"),
        ({"offset": -1}, "offset", "greater_than_equal"),
        ({"limit": "ten"}, "limit", "int_parsing"),
        ({"include_total": "maybe"}, "include_total", "bool_parsing"),
    ],
)
def test_query_parameters_out_of_range_are_422(
    client: httpx.Client, params: dict[str, Any], loc: str, error_type: str
) -> None:
    response = client.post("/v1/tasks/list", params=params, json={})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["query", loc], error_type)


def nested(condition: dict[str, Any], levels: int) -> dict[str, Any]:
    for _ in range(levels):
        condition = {"AND": [condition]}
    return condition


@pytest.mark.parametrize(
    "body",
    [
        {"status": "failed"},  # enum values are exact
        {"task_type": "API_BUCKETS_UPLOADS_BATCH_CONFIRM"},  # the docs' own example is not a TaskType value
        {"sort": {"field": "created_at", "direction": "down"}},
        {"filters": {"AND": [{"field": "status", "operator": "like", "value": "x"}]}},
        {"filters": {"AND": [{"field": "status", "operator": "geo_radius", "value": "x"}]}},
        {"filters": {"AND": {"field": "status", "value": "x"}}},
        {"filters": {"created_at": "yesterday"}},
        {"filters": {"AND": [{"field": "task_id", "operator": "regex", "value": "("}]}},
        {"filters": {"AND": [{"field": "status", "operator": "eq"}]}},  # value is required
        {"filters": nested({"status": "FAILED"}, levels=5)},  # deeper than MAX_DEPTH
        {"search": 5},
        [],
    ],
)
def test_invalid_bodies_are_422(client: httpx.Client, body: Any) -> None:
    response = client.post("/v1/tasks/list", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_filters_may_nest_to_the_depth_limit(client: httpx.Client) -> None:
    response = client.post("/v1/tasks/list", json={"filters": nested({"status": "FAILED"}, levels=4)})
    assert response.status_code == 200


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/v1/tasks/list", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_requests_are_recorded_without_the_key(client: httpx.Client, server: SimulatorTestServer) -> None:
    server.clear_requests()
    client.post(
        "/v1/tasks/list", params={"limit": 5}, json={"status": "FAILED"}, headers={"X-Namespace": "x"}
    )
    [recorded] = server.requests
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/tasks/list", {"limit": "5"})
    assert recorded.body == {"status": "FAILED"}
    assert recorded.headers["x-namespace"] == "x"
    assert recorded.headers["authorization"] == "<redacted>"
    assert DEFAULT_API_KEY not in repr(server.requests)


def test_stop_is_idempotent_and_works_without_start(world: World) -> None:
    unstarted = SimulatorTestServer(world)
    unstarted.stop()
    unstarted.stop()
    with SimulatorTestServer(world) as running:
        running.stop()


# HTTP: task responses, scoping, filters, sort, search


@by_profile("timestamps")
def test_task_responses_carry_the_sdk_fields_and_naive_timestamps(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    ns_id = world.add_namespace("prod")
    task_id = world.create_task("prod")
    clock.advance(2)
    world.set_status(task_id, "FAILED")
    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["task_id"] == task_id
    assert task["status"] == "FAILED"
    assert task["additional_data"]["namespace_id"] == ns_id
    assert task["error"] == task["additional_data"]["error"]
    assert all(NAIVE_ISO.fullmatch(task[key]) for key in ("created_at", "updated_at", "completed_at"))
    assert parse_micros(task["completed_at"]) - parse_micros(task["created_at"]) == 2_000_000
    missing = client.get("/v1/tasks/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "NotFoundError"


def test_timestamps_are_left_out_by_default(world: World, client: httpx.Client) -> None:
    world.add_namespace("prod")
    task_id = world.create_task("prod", status="COMPLETED")
    [task] = list_page(client)["results"]
    assert not {"created_at", "updated_at", "completed_at"} & set(task)
    assert not {"created_at", "updated_at", "completed_at"} & set(client.get(f"/v1/tasks/{task_id}").json())


def test_x_namespace_scopes_task_listings_by_name_or_id(world: World, client: httpx.Client) -> None:
    prod = world.add_namespace("prod")
    world.add_namespace("dev")
    prod_tasks = [world.create_task("prod") for _ in range(3)]
    dev_tasks = [world.create_task("dev") for _ in range(2)]
    assert set(ids(list_page(client, namespace="prod")["results"])) == set(prod_tasks)
    assert set(ids(list_page(client, namespace=prod)["results"])) == set(prod_tasks)
    assert set(ids(list_page(client)["results"])) == {
        *prod_tasks,
        *dev_tasks,
    }  # no header: whole organisation
    response = client.post("/v1/tasks/list", json={}, headers={"X-Namespace": "staging"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"
    assert "staging" in response.json()["error"]["message"]
    other = client.get(f"/v1/tasks/{dev_tasks[0]}", headers={"X-Namespace": "prod"})
    assert other.status_code == 404


def test_task_routes_can_ignore_x_namespace(world: World) -> None:
    world.add_namespace("prod")
    world.add_namespace("dev")
    everything = [world.create_task("prod"), world.create_task("dev")]
    with (
        SimulatorTestServer(world, profile=ApiProfile(header_honoured=False)) as org_wide,
        connect(org_wide.url, AUTH) as http,
    ):
        assert set(ids(list_page(http, namespace="prod")["results"])) == set(everything)
        assert set(ids(list_page(http, namespace="staging")["results"])) == set(everything)


@pytest.fixture
def mixed(world: World, clock: FakeClock) -> dict[str, str]:
    """Six tasks a minute apart, of known statuses and types, in one namespace."""
    world.add_namespace("prod")
    made = {}
    for name, status, task_type in [
        ("a", "COMPLETED", "api_buckets_batches_process"),
        ("b", "FAILED", "api_buckets_batches_process"),
        ("c", "PROCESSING", "engine_inference_run"),
        ("d", "FAILED", "engine_inference_run"),
        ("e", "PENDING", "api_taxonomies_execute"),
        ("f", "CANCELED", "api_buckets_batches_process"),
    ]:
        made[name] = world.create_task("prod", task_type=task_type, status=status)
        clock.advance(60)
    return made


def listed(client: httpx.Client, mixed: dict[str, str], body: dict[str, Any]) -> str:
    """The names (a..f) of the tasks a body selects, in listing order."""
    names = {task_id: name for name, task_id in mixed.items()}
    return "".join(names[task_id] for task_id in ids(list_page(client, body, limit=100)["results"]))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "abcdef"),
        ({"status": "FAILED"}, "bd"),
        ({"task_type": "engine_inference_run"}, "cd"),
        ({"sort": {"field": "created_at", "direction": "desc"}}, "fedcba"),
        ({"filters": {"AND": [{"field": "status", "operator": "eq", "value": "FAILED"}]}}, "bd"),
        ({"filters": {"status": "failed"}}, "bd"),  # shorthand, case-insensitive by default
        ({"filters": {"status": "failed", "case_sensitive": True}}, ""),
        (  # a condition has no case_sensitive of its own (the SDK sends one anyway): the operator's applies
            {
                "filters": {
                    "AND": [
                        {"field": "status", "operator": "eq", "value": "failed", "case_sensitive": False}
                    ],
                    "case_sensitive": True,
                }
            },
            "",
        ),
        (
            {"filters": {"AND": [{"field": "task_id", "operator": "regex", "value": "^[0-9A-F-]{36}$"}]}},
            "abcdef",
        ),
        (
            {
                "filters": {
                    "OR": [
                        {"field": "status", "operator": "eq", "value": "PENDING"},
                        {"field": "task_type", "operator": "eq", "value": "engine_inference_run"},
                    ]
                }
            },
            "cde",
        ),
        (
            {"filters": {"NOT": [{"field": "status", "operator": "in", "value": ["FAILED", "CANCELED"]}]}},
            "ace",
        ),
        (
            {"filters": {"AND": [{"field": "status", "operator": "nin", "value": ["FAILED", "CANCELED"]}]}},
            "ace",
        ),
        (
            {
                "filters": {
                    "AND": [
                        {"field": "task_type", "operator": "eq", "value": "api_buckets_batches_process"},
                        {
                            "OR": [
                                {"field": "status", "operator": "eq", "value": "FAILED"},
                                {"status": "CANCELED"},
                            ]
                        },
                    ]
                }
            },
            "bf",
        ),
        ({"filters": {"AND": [{"field": "completed_at", "operator": "exists", "value": True}]}}, "abdf"),
        ({"filters": {"AND": [{"field": "completed_at", "operator": "is_null", "value": True}]}}, "ce"),
        (
            {"filters": {"AND": [{"field": "additional_data.job_id", "operator": "exists", "value": False}]}},
            "abef",
        ),
        ({"filters": {"AND": [{"field": "task_type", "operator": "starts_with", "value": "ENGINE_"}]}}, "cd"),
        ({"filters": {"AND": [{"field": "error", "operator": "contains", "value": " "}]}}, "bd"),
        ({"search": "TAXONOMIES"}, "e"),
    ],
)
def test_filters_sort_and_search(
    client: httpx.Client, mixed: dict[str, str], body: dict[str, Any], expected: str
) -> None:
    assert listed(client, mixed, body) == expected


def test_sort_on_any_field_breaks_ties_by_task_id(client: httpx.Client, mixed: dict[str, str]) -> None:
    results = list_page(client, {"sort": {"field": "status"}}, limit=100)["results"]
    keys = [(task["status"], task["task_id"]) for task in results]
    assert keys == sorted(keys)
    assert len(keys) == 6
    nested = list_page(
        client, {"sort": {"field": "additional_data.object_count", "direction": "desc"}}, limit=100
    )
    counts = [task["additional_data"].get("object_count", -1) for task in nested["results"]]
    assert counts == sorted(counts, reverse=True)


def test_filters_reach_into_additional_data(
    world: World, client: httpx.Client, mixed: dict[str, str]
) -> None:
    task = world.get_task(mixed["a"])
    assert task is not None
    bucket = task.additional_data["bucket_id"]
    body = {"filters": {"AND": [{"field": "additional_data.bucket_id", "operator": "eq", "value": bucket}]}}
    expected = [t.task_id for t in world.tasks() if t.additional_data.get("bucket_id") == bucket]
    assert ids(list_page(client, body, limit=100)["results"]) == expected


@by_profile("timestamps")
def test_created_at_filters_take_the_iso_strings_the_server_emits(
    client: httpx.Client, mixed: dict[str, str]
) -> None:
    third = client.get(f"/v1/tasks/{mixed['c']}").json()["created_at"]
    lte = {"filters": {"AND": [{"field": "created_at", "operator": "lte", "value": third}]}}
    assert listed(client, mixed, lte) == "abc"
    window = {
        "filters": {
            "AND": [
                {"field": "created_at", "operator": "gt", "value": third},
                {"field": "created_at", "operator": "lt", "value": parse_micros(third) / 1e6 + 150},
            ]
        }
    }
    assert listed(client, mixed, window) == "de"


# HTTP: pagination


@by_profile("timestamps")
def test_cursor_paging_returns_every_task_exactly_once(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    world.add_namespace("prod")
    base = clock()
    created = {
        world.create_task("prod", created_at=base - 2500 + i // 3) for i in range(2500)
    }  # ties included
    first = list_page(client, limit=1000, include_total="true")
    assert first["pagination"]["total"] == 2500
    assert first["pagination"]["total_pages"] == 3
    assert list_page(client, limit=1000)["pagination"]["total"] is None
    results = walk(client, limit=1000)
    assert len(results) == 2500
    assert set(ids(results)) == created
    instants = [parse_micros(task["created_at"]) for task in results]
    assert instants == sorted(instants)


def test_a_task_created_between_pages_of_a_desc_listing_is_neither_repeated_nor_skipped(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    world.add_namespace("prod")
    for _ in range(30):
        world.create_task("prod")
        clock.advance(1)
    newest_first = {"sort": {"field": "created_at", "direction": "desc"}}
    page = list_page(client, newest_first, limit=10)
    seen = ids(page["results"])
    clock.advance(1)
    world.create_task("prod")  # newer than the cursor: belongs to a page already read
    world.create_task("prod", created_at=clock() - 20.5)  # older: still ahead of the cursor, must be served
    while cursor := page["pagination"]["next_cursor"]:
        page = list_page(client, newest_first, limit=10, cursor=cursor)
        seen += ids(page["results"])
    expected = [t.task_id for t in sorted(world.tasks(), key=lambda t: t.created_at, reverse=True)][1:]
    assert seen == expected  # all but the newest, each once, in order


def test_a_cursor_only_fits_its_own_query(world: World, client: httpx.Client) -> None:
    world.add_namespace("prod")
    for _ in range(5):
        world.create_task("prod", status="FAILED")
    cursor = list_page(client, {"status": "FAILED"}, limit=2)["pagination"]["next_cursor"]
    assert cursor
    for body, params in [({}, {"cursor": cursor}), ({"status": "FAILED"}, {"cursor": "not-a-cursor"})]:
        response = client.post("/v1/tasks/list", params=params | {"limit": 2}, json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_offset_paging_in_the_legacy_mode(world: World, clock: FakeClock) -> None:
    world.add_namespace("prod")
    for _ in range(25):
        world.create_task("prod")
        clock.advance(1)
    with (
        SimulatorTestServer(world, cursor_pagination=False) as legacy,
        connect(legacy.url, AUTH) as http,
    ):
        first = list_page(http, limit=10, offset=0)
        assert "next_cursor" not in first["pagination"]
        assert first["pagination"] | {"next_page": None} == {
            "total": 25,
            "page": 1,
            "page_size": 10,
            "total_pages": 3,
            "next_page": None,
            "previous_page": None,
        }
        assert first["pagination"]["next_page"] == "/v1/tasks/list?offset=10&limit=10"
        seen, offset = [], 0
        while True:
            page = list_page(http, limit=10, offset=offset, cursor="ignored")
            seen += ids(page["results"])
            offset += len(page["results"])
            if len(page["results"]) < 10:
                break
        assert seen == ids_of(world)
        # Why cursors matter: a task created between two offset pages of a newest-first listing shifts it.
        newest_first = {"sort": {"field": "created_at", "direction": "desc"}}
        page_one = ids(list_page(http, newest_first, limit=10, offset=0)["results"])
        world.create_task("prod")
        page_two = ids(list_page(http, newest_first, limit=10, offset=10)["results"])
        assert page_two[0] == page_one[-1]


def test_default_page_size_is_ten(world: World, client: httpx.Client) -> None:
    world.add_namespace("prod")
    for _ in range(12):
        world.create_task("prod")
    page = list_page(client)
    assert len(page["results"]) == 10
    assert page["pagination"]["page_size"] == 10


# HTTP: namespaces


def test_namespaces_list(world: World, client: httpx.Client) -> None:
    names = [f"ns-{i}" for i in range(12)]
    ns_ids = [world.add_namespace(name) for name in names]
    page = client.post("/v1/namespaces/list", json={"limit": 5, "offset": 10}).json()
    assert [ns["namespace_name"] for ns in page["results"]] == names[10:]
    assert page["total_count"] == 12
    assert page["results"][0]["namespace_id"] == ns_ids[10]
    assert NAIVE_ISO.fullmatch(page["results"][0]["created_at"])
    assert len(client.post("/v1/namespaces/list").json()["results"]) == 10
    by_name = client.post("/v1/namespaces/list", json={"filters": {"namespace_name": "NS-3"}}).json()
    assert [ns["namespace_id"] for ns in by_name["results"]] == [ns_ids[3]]
    desc = client.post(
        "/v1/namespaces/list", json={"sorts": [{"field": "namespace_name", "direction": "desc"}]}
    )
    assert desc.json()["results"][0]["namespace_name"] == "ns-9"
    assert client.post("/v1/namespaces/list", json={"limit": 1001}).status_code == 422
    assert client.post("/v1/namespaces/list", params={"offset": 10001}).status_code == 422
    refused = client.post("/v1/namespaces/list", json={"namespace": "x"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["type"] == "extra_forbidden"


# Demo


def test_demo_serves_three_namespaces_with_history() -> None:
    demo = start_demo(seed=1)
    try:
        with connect(demo.url, {"Authorization": f"Bearer {demo.api_key}"}) as http:
            names = [ns["namespace_name"] for ns in http.post("/v1/namespaces/list").json()["results"]]
            assert names == ["demo-prod", "demo-staging", "demo-dev"]
            counts = {name: len(walk(http, namespace=name)) for name in names}
        assert counts["demo-prod"] > counts["demo-staging"] > counts["demo-dev"] > 10
        assert 200 < sum(counts.values()) < 1000
        assert sum(demo.world.transitions.values()) > 0
    finally:
        demo.stop()
        demo.stop()


def test_the_demo_loads_no_test_machinery() -> None:
    """The CLI and a running demo never import exporter.simulator.testing (faults, recording, fake clock)."""
    code = (
        "import sys, exporter.cli\n"
        "from exporter.simulator import start_demo\n"
        "start_demo().stop()\n"
        "print(' '.join(sorted(name for name in sys.modules if name.startswith('exporter.simulator'))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "exporter.simulator.server" in loaded.split()
    assert "testing" not in loaded


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [("gzip, deflate", True), ("deflate, gzip;q=0.5", True), ("identity", False), ("gzip;q=0", False)],
)
def test_large_bodies_are_gzipped_when_the_client_accepts_it(
    world: World, server: SimulatorTestServer, accept_encoding: str, gzipped: bool
) -> None:
    """As a real API's edge: the exporter's CPU per task is measured on compressed pages."""
    world.add_namespace("prod")
    for _ in range(20):
        world.create_task("prod", "thumbnail")
    with connect(server.url, {**AUTH, "Accept-Encoding": accept_encoding}) as http:
        listing = http.stream(
            "POST", "/v1/tasks/list", params={"limit": 100}, json={}, headers={"X-Namespace": "prod"}
        )
        with listing as response:
            raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    assert int(response.headers["Content-Length"]) == len(raw)
    body = gzip.decompress(raw) if gzipped else raw
    assert len(json.loads(body)["results"]) == 20
