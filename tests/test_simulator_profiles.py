"""The simulator's API profiles: the documented API by default, and one switch per behaviour the documentation
leaves open (exporter/simulator/profile.py), each checked over HTTP against the world's truth."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import PROFILES, by_profile, known_namespace, profile_named, simulator

from exporter.simulator import (
    DEFAULT_API_KEY,
    DOCUMENTED,
    TERMINAL_STATUSES,
    ApiProfile,
    NamespaceIds,
    World,
    start_demo,
)
from exporter.simulator.enums import FILTER_OPERATORS
from exporter.simulator.testing import FakeClock, SimulatorTestServer

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
# TaskResponse's fields, as the 0.81 spec and SDK 1.3.783 declare them: nothing else is documented.
DOCUMENTED_FIELDS = {
    "task_id",
    "task_type",
    "status",
    "inputs",
    "outputs",
    "additional_data",
    "error",
    "cancellation",
    "queue_position",
    "estimated_wait_minutes",
}
TIMESTAMPS = {"created_at", "updated_at", "completed_at"}
BATCH_PROCESS = "api_buckets_batches_process"
TYPES = (BATCH_PROCESS, "api_buckets_batches_submit", "engine_inference_run", "thumbnail")
NEWEST_FIRST = {"field": "created_at", "direction": "desc"}
ACTIVE = {"NOT": [{"field": "status", "operator": "in", "value": list(TERMINAL_STATUSES)}]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    """Two namespaces, each with tasks a second apart of every type, half of them finished."""
    world = World(clock, seed=12)
    for name in ("prod", "dev"):
        world.add_namespace(name)
        for i in range(8):
            world.create_task(
                name, TYPES[i % 4], ("PROCESSING", "COMPLETED", "FAILED", "PENDING")[i // 2 % 4]
            )
            clock.advance(1)
    return world


@pytest.fixture
def profile() -> ApiProfile:
    return DOCUMENTED


@pytest.fixture
def server(world: World, profile: ApiProfile) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, profile=profile) as running:
        yield running


@pytest.fixture
def client(server: SimulatorTestServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10, verify=False) as http:
        yield http


def listing(
    client: httpx.Client, body: dict[str, Any] | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    headers = {"X-Namespace": namespace} if namespace else {}
    response = client.post("/v1/tasks/list", params={"limit": 1000}, json=body or {}, headers=headers)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def ids(results: list[dict[str, Any]]) -> list[str]:
    return [task["task_id"] for task in results]


def by_creation(world: World, namespace: str | None = None, *, newest_first: bool = False) -> list[str]:
    ordered = sorted(world.tasks(namespace), key=lambda t: (t.created_at, t.task_id), reverse=newest_first)
    return [task.task_id for task in ordered]


# The documented default


def test_the_default_serves_exactly_the_documented_task_fields(world: World, client: httpx.Client) -> None:
    results = listing(client)
    assert len(results) == 16
    assert all(set(task) == DOCUMENTED_FIELDS for task in results)
    got = client.get(f"/v1/tasks/{results[0]['task_id']}").json()
    assert set(got) == DOCUMENTED_FIELDS


def test_the_default_shows_namespace_ids_on_batch_processing_tasks_only(
    world: World, client: httpx.Client
) -> None:
    prod = world.namespace("prod")
    assert prod is not None
    shown = {
        task["task_type"]: "namespace_id" in task["additional_data"] for task in listing(client, None, "prod")
    }
    assert shown == {
        BATCH_PROCESS: True,
        "api_buckets_batches_submit": False,
        "engine_inference_run": False,
        "thumbnail": False,
    }
    batch_task = next(t for t in listing(client, None, "prod") if t["task_type"] == BATCH_PROCESS)
    assert batch_task["additional_data"]["namespace_id"] == prod.namespace_id
    # The world still knows every task's namespace: it is the payload that does not show it.
    assert all(task.additional_data["namespace_id"] == prod.namespace_id for task in world.tasks("prod"))


def test_the_default_still_sorts_and_filters_by_the_created_at_it_does_not_show(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    assert ids(listing(client, {"sort": NEWEST_FIRST})) == by_creation(world, newest_first=True)
    assert ids(listing(client)) == by_creation(world)
    since = clock() - 4.5
    recent = {"filters": {"AND": [{"field": "created_at", "operator": "gte", "value": since}]}}
    assert ids(listing(client, recent)) == [t.task_id for t in world.tasks() if t.created_at >= since]
    assert len(listing(client, recent)) == 4  # created a second apart, the newest a second ago


def test_the_default_honours_x_namespace_filters_and_both_batch_listings(
    world: World, client: httpx.Client
) -> None:
    assert set(ids(listing(client, None, "dev"))) == {t.task_id for t in world.tasks("dev")}
    active = {t.task_id for t in world.tasks() if t.status not in TERMINAL_STATUSES}
    assert set(ids(listing(client, {"filters": ACTIVE}))) == active
    assert client.post("/v1/batches/list", json={}).status_code == 200


# One switch at a time


@by_profile("timestamps")
def test_timestamps_switch_shows_them(world: World, client: httpx.Client) -> None:
    results = listing(client)
    finished = {t.task_id for t in world.tasks() if t.completed_at is not None}
    for task in results:
        expected = DOCUMENTED_FIELDS | {"created_at", "updated_at"}
        assert set(task) == expected | ({"completed_at"} if task["task_id"] in finished else set())
    assert set(client.get(f"/v1/tasks/{next(iter(finished))}").json()) >= TIMESTAMPS


@pytest.mark.parametrize(
    ("namespace_ids", "shown_on"),
    [
        (NamespaceIds.ALL, set(TYPES)),
        (NamespaceIds.BATCH, {BATCH_PROCESS}),
        (NamespaceIds.NONE, set()),
    ],
)
def test_namespace_ids_switch(world: World, namespace_ids: NamespaceIds, shown_on: set[str]) -> None:
    with (
        simulator(world, ApiProfile(namespace_ids=namespace_ids)) as api,
        httpx.Client(base_url=api.url, headers=AUTH, verify=False) as http,
    ):
        results = listing(http)
        got = http.get(f"/v1/tasks/{results[0]['task_id']}").json()
    assert {t["task_type"] for t in results if "namespace_id" in t["additional_data"]} == shown_on
    assert ("namespace_id" in got["additional_data"]) == (got["task_type"] in shown_on)


@by_profile("header_ignored")
def test_header_ignored_lists_and_gets_organisation_wide(world: World, client: httpx.Client) -> None:
    everything = set(by_creation(world))
    for namespace in ("prod", "dev", "no-such-namespace"):
        assert set(ids(listing(client, None, namespace))) == everything
    dev_task = world.tasks("dev")[0].task_id
    answer = client.get(f"/v1/tasks/{dev_task}", headers={"X-Namespace": "prod"})
    assert answer.status_code == 200
    assert answer.json()["task_id"] == dev_task


def test_header_honoured_scopes_gets_too(world: World, client: httpx.Client) -> None:
    dev_task = world.tasks("dev")[0].task_id
    assert client.get(f"/v1/tasks/{dev_task}", headers={"X-Namespace": "prod"}).status_code == 404
    assert client.get(f"/v1/tasks/{dev_task}", headers={"X-Namespace": "dev"}).status_code == 200


@by_profile("filters_ignored")
def test_filters_ignored_lists_as_if_none_were_sent(world: World, client: httpx.Client) -> None:
    everything = by_creation(world)
    some = [world.tasks()[3].task_id]
    by_id = {"AND": [{"field": "task_id", "operator": "in", "value": some}]}
    for filters in (ACTIVE, by_id, {"status": "FAILED"}):
        assert ids(listing(client, {"filters": filters})) == everything
    # Still validated: a malformed filter is the model's 422, whatever the server then does with it.
    bad = client.post(
        "/v1/tasks/list", json={"filters": {"AND": [{"field": "x", "operator": "like", "value": 1}]}}
    )
    assert bad.status_code == 422
    # What is not a filter still selects.
    assert {t["status"] for t in listing(client, {"status": "FAILED"})} == {"FAILED"}


@pytest.mark.parametrize(
    ("operator", "filters", "loc"),
    [
        ("in", ACTIVE, ["body", "filters", "NOT", 0, "operator"]),
        (
            "gte",
            {"OR": [{"status": "FAILED"}, {"AND": [{"field": "created_at", "operator": "gte", "value": 0}]}]},
            ["body", "filters", "OR", 1, "AND", 0, "operator"],
        ),
        ("eq", {"status": "FAILED"}, ["body", "filters", "status"]),  # the shorthand is eq
        ("eq", {"AND": [{"field": "status", "value": "FAILED"}]}, ["body", "filters", "AND", 0, "operator"]),
    ],
)
def test_a_refused_operator_is_fastapis_422_naming_it(
    world: World, operator: str, filters: dict[str, Any], loc: list[Any]
) -> None:
    with (
        simulator(world, f"refuse_operator={operator}") as api,
        httpx.Client(base_url=api.url, headers=AUTH, verify=False) as http,
    ):
        refused = http.post("/v1/tasks/list", json={"filters": filters})
        others = [op for op in ("in", "nin", "gte", "eq") if op != operator]
        other = {
            "AND": [{"field": "created_at", "operator": others[0], "value": [0] if "in" in others[0] else 0}]
        }
        accepted = http.post("/v1/tasks/list", json={"filters": other, "sort": NEWEST_FIRST})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert set(error) >= {"loc", "msg", "type"}
    assert error["loc"] == loc
    assert f"'{operator}'" in error["msg"]
    assert error["type"] == "value_error"
    assert error["input"] == operator
    assert accepted.status_code == 200


def test_refusing_an_operator_refuses_it_even_where_filters_are_ignored(world: World) -> None:
    with (
        simulator(world, "filters=ignored,refuse_operator=nin") as api,
        httpx.Client(base_url=api.url, headers=AUTH, verify=False) as http,
    ):
        nin = {"AND": [{"field": "status", "operator": "nin", "value": ["FAILED"]}]}
        assert http.post("/v1/tasks/list", json={"filters": nin}).status_code == 422
        assert ids(listing(http, {"filters": {"status": "FAILED"}})) == by_creation(world)


@by_profile("sort_ignored")
def test_sort_ignored_keeps_created_at_ascending(world: World, client: httpx.Client) -> None:
    oldest_first = by_creation(world)
    for sort in (NEWEST_FIRST, {"field": "status", "direction": "desc"}, {"field": "task_id"}):
        assert ids(listing(client, {"sort": sort})) == oldest_first
    bad = client.post("/v1/tasks/list", json={"sort": {"field": "created_at", "direction": "down"}})
    assert bad.status_code == 422  # still validated
    # Cursor paging still reads each task once, in the order served.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = client.post("/v1/tasks/list", params=params, json={"sort": NEWEST_FIRST}).json()
        seen += ids(page["results"])
        if not (cursor := page["pagination"]["next_cursor"]):
            break
    assert seen == oldest_first


@pytest.mark.parametrize("cursor_pagination", [True, False])
def test_without_the_org_batch_listing_buckets_and_their_batches_still_list_every_batch(
    world: World, clock: FakeClock, cursor_pagination: bool
) -> None:
    for i in range(25):
        world.create_batch("prod", bucket_id=known_namespace(world, "prod").bucket_ids[i % 3])
        clock.advance(1)
    with (
        simulator(world, "batches_list=absent", cursor_pagination=cursor_pagination) as api,
        httpx.Client(base_url=api.url, headers=AUTH | {"X-Namespace": "prod"}, verify=False) as http,
    ):
        missing = http.post("/v1/batches/list", json={})
        buckets = http.post("/v1/buckets/list", json={"limit": 2}).json()
        rest = http.post("/v1/buckets/list", json={"limit": 2, "offset": 2}).json()
        seen: list[str] = []
        for found in buckets["results"] + rest["results"]:
            offset = 0
            while True:  # paging in the body, as in API 0.81: offset and limit
                body = {"offset": offset, "limit": 4}
                page = http.post(f"/v1/buckets/{found['bucket_id']}/batches/list", json=body).json()
                seen += [batch["batch_id"] for batch in page["results"]]
                offset += len(page["results"])
                if len(page["results"]) < 4:
                    break
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "NotFoundError"
    assert buckets["total_count"] == 3
    assert len(buckets["results"]) == 2
    assert len(rest["results"]) == 1
    assert sorted(seen) == sorted(b.batch_id for b in world.batches("prod"))
    assert len(seen) == 25


def test_the_bucket_batch_listing_follows_its_cursor_in_the_body(world: World, clock: FakeClock) -> None:
    bucket_id = known_namespace(world, "prod").bucket_ids[0]
    made = []
    for _ in range(7):
        made.append(world.create_batch("prod", bucket_id=bucket_id))
        clock.advance(1)
    with (
        simulator(world, "batches_list=absent") as api,
        httpx.Client(base_url=api.url, headers=AUTH | {"X-Namespace": "prod"}, verify=False) as http,
    ):
        seen: list[str] = []
        cursor = None
        while True:
            body = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = http.post(f"/v1/buckets/{bucket_id}/batches/list", json=body).json()
            seen += [batch["batch_id"] for batch in page["results"]]
            if not (cursor := page["pagination"]["next_cursor"]):
                break
    assert seen == made[::-1]


# Every profile


@by_profile()
def test_every_profile_serves_the_same_tasks_with_the_same_statuses(
    world: World, client: httpx.Client, profile: ApiProfile
) -> None:
    """What a profile changes is what is shown and how a listing is selected, never the tasks themselves."""
    results = listing(client, None, "prod")
    truth = {
        t.task_id: (t.status, t.task_type) for t in world.tasks("prod" if profile.header_honoured else None)
    }
    assert {t["task_id"]: (t["status"], t["task_type"]) for t in results} == truth
    assert all(
        set(task) - DOCUMENTED_FIELDS <= (TIMESTAMPS if profile.timestamps else set()) for task in results
    )


# The compact text form


def test_parse_reads_every_setting_and_round_trips() -> None:
    text = (
        "timestamps,header=ignored,namespace_ids=all,filters=ignored,refuse_operator=in,sort=ignored,"
        "batches_list=absent"
    )
    profile = ApiProfile.parse(text)
    assert profile == ApiProfile(
        timestamps=True,
        header_honoured=False,
        namespace_ids=NamespaceIds.ALL,
        filters_honoured=False,
        refuse_operator="in",
        sort_honoured=False,
        batches_list=False,
    )
    assert str(profile) == text
    assert ApiProfile.parse(str(profile)) == profile
    assert ApiProfile.parse("") == ApiProfile.parse("default") == DOCUMENTED
    assert str(DOCUMENTED) == "default"
    assert ApiProfile.parse(" timestamps=absent , header=honoured,namespace_ids=batch ") == DOCUMENTED
    assert ApiProfile.parse("timestamps=present") == ApiProfile(timestamps=True)
    for name, named in PROFILES.items():
        assert ApiProfile.parse(str(named)) == named, name
        assert profile_named(name) == profile_named(str(named)) == named


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp", "unknown API profile setting 'timestamp'"),
        ("header=maybe", "header='maybe': expected one of honoured, ignored"),
        ("namespace_ids=some", "expected one of all, batch, none"),
        ("refuse_operator=like", "not a filter operator"),
        ("refuse_operator", "not a filter operator"),
        ("sort", "sort='': expected one of honoured, ignored"),
        ("filters=ignored,filters=honoured", "given twice"),
    ],
)
def test_parse_refuses_anything_unknown_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        ApiProfile.parse(text)
    assert "\n" not in str(refused.value)


def test_a_profile_refuses_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="'like'"):
        ApiProfile(refuse_operator="like")
    assert all(ApiProfile(refuse_operator=op).refuse_operator == op for op in FILTER_OPERATORS)


def test_the_demo_runs_the_documented_api_unless_told_otherwise() -> None:
    demo = start_demo(seed=2)
    other = start_demo(ApiProfile.parse("timestamps,batches_list=absent"), seed=2)
    try:
        assert demo.profile == DOCUMENTED
        for running, fields, batches in (
            (demo, DOCUMENTED_FIELDS, 200),
            (other, DOCUMENTED_FIELDS | TIMESTAMPS, 404),
        ):
            with httpx.Client(
                base_url=running.url, headers={"Authorization": f"Bearer {running.api_key}"}, verify=False
            ) as http:
                task = http.post("/v1/tasks/list", json={}).json()["results"][0]
                assert set(task) - {"completed_at"} == fields - {"completed_at"}
                assert http.post("/v1/batches/list", json={}).status_code == batches
    finally:
        demo.stop()
        other.stop()
