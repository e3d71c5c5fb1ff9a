"""Fidelity of the simulator: the official SDK (mixpeek 1.3.783) and the OpenAPI 0.81 spec accept its answers.

If the SDK parses every response into its own models and raises its own exceptions for the errors, a client
tested against the simulator is tested against the API's real shapes. The enumerations the checks compare
against come from the SDK's models, never from the exporter's vocabulary (nor the simulator's copy), so the
oracle cannot share a mistake with the code under test. The SDK's request models also judge the bodies the
exporter sends; where they cannot represent one, the tests below say so by asserting it.
"""

import json
import re
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from support import build_exporter, by_profile, simulator

from exporter.simulator import (
    DOCUMENTED,
    FAILURE_CATEGORIES,
    TASK_STATUSES,
    TASK_TYPES,
    TERMINAL_STATUSES,
    ApiProfile,
    World,
)
from exporter.simulator.enums import (
    BATCH_PROCESS_TASK_TYPE,
    BATCH_TASK_TYPES,
    FILTER_OPERATORS,
    SORT_DIRECTIONS,
)
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.world import TASK_TYPE_MIX

mixpeek = pytest.importorskip("mixpeek")

# The SDK's enumerations: the truth this file checks the simulator (and the exporter's requests) against.
SDK_STATUSES = frozenset(member.value for member in mixpeek.TaskStatusEnum)
SDK_TASK_TYPES = frozenset(member.value for member in mixpeek.TaskType)
SDK_FAILURE_CATEGORIES = frozenset(member.value for member in mixpeek.FailureCategory)
SDK_OPERATORS = frozenset(member.value for member in mixpeek.FilterOperator)
SDK_DIRECTIONS = frozenset(member.value for member in mixpeek.SortDirection)
# A batch's status is typed by BatchModel itself (it happens to be the same TaskStatusEnum today).
(_BATCH_STATUS_ENUM,) = (
    arg
    for arg in typing.get_args(mixpeek.BatchModel.model_fields["status"].annotation)
    if arg is not type(None)
)
SDK_BATCH_STATUSES = frozenset(member.value for member in _BATCH_STATUS_ENUM)
# The terminal statuses, as TaskStatusEnum's documentation lists them (empty if it stops: a test says so).
_TERMINAL_DOC = re.search(
    r"Terminal Statuses:\s+([A-Z_, ]+) are terminal", mixpeek.TaskStatusEnum.__doc__ or ""
)
SDK_TERMINAL = frozenset(re.findall(r"[A-Z_]+", _TERMINAL_DOC[1]) if _TERMINAL_DOC else ())

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "mixpeek-openapi-0.81.json"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    """Two namespaces after half an hour of traffic (tasks and batches); no QUEUED, which API 0.81 did not
    know yet."""
    world = World(
        clock,
        seed=21,
        spawn_rate_per_s=0.2,
        failure_ratio=0.2,
        queue_ratio=0.0,
        batch_rate_per_s=0.05,
        batch_failure_ratio=0.3,
    )
    world.add_namespace("prod")
    world.add_namespace("dev", spawn_rate_per_s=0.05)
    clock.advance(1800)
    world.advance(1800)
    return world


@pytest.fixture
def profile() -> ApiProfile:
    """The documented API; tests that run in other profiles parametrise this."""
    return DOCUMENTED


@pytest.fixture
def server(world: World, profile: ApiProfile) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, profile=profile) as running:
        yield running


def sdk_client(url: str, key: str) -> Any:
    return mixpeek.ApiClient(mixpeek.Configuration(host=url, access_token=key))


@pytest.fixture
def api(server: SimulatorTestServer) -> Iterator[Any]:
    with sdk_client(server.url, server.api_key) as client:
        yield client


def sdk_walk(api: Any, request: Any, namespace: str | None = None, limit: int = 100) -> list[Any]:
    """All tasks of a listing through the SDK, following next_cursor as its docs say."""
    tasks_api = mixpeek.TasksApi(api)
    headers = {"X-Namespace": namespace} if namespace else None
    results: list[Any] = []
    cursor = None
    while True:
        page = tasks_api.list_tasks(limit=limit, cursor=cursor, list_tasks_request=request, _headers=headers)
        assert isinstance(page, mixpeek.ListTasksResponse)
        assert all(isinstance(task, mixpeek.TaskResponse) for task in page.results)
        results += page.results
        cursor = page.pagination.next_cursor
        if not cursor:
            return results


# Every profile whose task answers the SDK can parse (all of them: refusals and 404s come only when asked).
@by_profile()
def test_sdk_pages_through_a_namespace(
    api: Any, world: World, server: SimulatorTestServer, profile: ApiProfile
) -> None:
    prod = world.namespace("prod")
    assert prod is not None
    results = sdk_walk(api, mixpeek.ListTasksRequest(), namespace="prod")
    truth = {task.task_id: task for task in world.tasks("prod" if profile.header_honoured else None)}
    assert len(results) == len(truth) > 200
    assert {task.task_id: task.status.value for task in results} == {k: t.status for k, t in truth.items()}
    assert {task.task_type.value for task in results} == {task.task_type for task in truth.values()}
    for task in results:
        shown = task.additional_data.get("namespace_id")
        assert shown in (None, truth[task.task_id].namespace_id)
        assert (shown is not None) == profile.shows_namespace_id(task.task_type.value)
        assert (task.model_extra or {}).keys() == set()  # the SDK's model drops what it does not declare
    sent = [r for r in server.requests if r.path == "/v1/tasks/list"]
    assert all(r.headers["x-namespace"] == "prod" and r.query["limit"] == "100" for r in sent)
    assert all("cursor" in r.query for r in sent[1:])
    one = next(iter(truth.values()))
    got = mixpeek.TasksApi(api).get_task(one.task_id, _headers={"X-Namespace": "prod"})
    assert isinstance(got, mixpeek.TaskResponse)
    assert got.status.value == one.status


def test_sdk_filters_by_status_and_by_filters(api: Any, world: World) -> None:
    failed = sdk_walk(api, mixpeek.ListTasksRequest(status=mixpeek.TaskStatusEnum.FAILED), namespace="dev")
    assert len(failed) == world.status_counts("dev")["FAILED"] > 0
    assert all(task.error and task.error == task.additional_data["error"] for task in failed)
    # The SDK's FilterCondition.value only models DynamicValue, so literal conditions go through from_dict.
    filters = mixpeek.LogicalOperatorInput.from_dict(
        {"AND": [{"field": "status", "operator": "in", "value": ["FAILED", "CANCELED"]}]}
    )
    sort = mixpeek.SortOption(field="created_at", direction=mixpeek.SortDirection.DESC)
    ended_badly = sdk_walk(api, mixpeek.ListTasksRequest(filters=filters, sort=sort), limit=1000)
    counts = world.status_counts()
    assert Counter(task.status.value for task in ended_badly) == {
        "FAILED": counts["FAILED"],
        "CANCELED": counts["CANCELED"],
    }
    truth = {task.task_id: task.created_at for task in world.tasks()}
    instants = [truth[task.task_id] for task in ended_badly]
    assert instants == sorted(instants, reverse=True)


def test_sdk_gets_one_task(api: Any, world: World) -> None:
    task = next(t for t in world.tasks() if t.status == "FAILED")
    got = mixpeek.TasksApi(api).get_task(task.task_id)
    assert isinstance(got, mixpeek.TaskResponse)
    assert (got.task_id, got.status.value, got.task_type.value) == (task.task_id, "FAILED", task.task_type)
    assert got.error == task.additional_data["error"]
    with pytest.raises(mixpeek.exceptions.NotFoundException):
        mixpeek.TasksApi(api).get_task("no-such-task")


def test_sdk_lists_namespaces(api: Any, world: World) -> None:
    namespaces = mixpeek.NamespacesApi(api)
    listed = namespaces.list_namespaces(list_namespaces_request=mixpeek.ListNamespacesRequest(limit=1000))
    assert isinstance(listed, mixpeek.ListNamespacesResponse)
    assert all(isinstance(ns, mixpeek.NamespaceModel) for ns in listed.results)
    assert [(ns.namespace_id, ns.namespace_name) for ns in listed.results] == [
        (ns.namespace_id, ns.namespace_name) for ns in world.namespaces()
    ]
    assert listed.total_count == 2
    assert listed.results[0].created_at is not None
    second = namespaces.list_namespaces(
        list_namespaces_request=mixpeek.ListNamespacesRequest(limit=1, offset=1)
    )
    assert [ns.namespace_name for ns in second.results] == ["dev"]


def sdk_batches(
    fetch: Any, request: dict[str, Any] | None = None, namespace: str | None = None, limit: int = 25
) -> list[Any]:
    """All batches of a listing through one of the SDK's batch list calls, following the cursor."""
    headers = {"X-Namespace": namespace} if namespace else None
    results: list[Any] = []
    cursor = None
    while True:
        body = mixpeek.ListBatchesRequest.from_dict((request or {}) | {"limit": limit, "cursor": cursor})
        page = fetch(list_batches_request=body, _headers=headers)
        assert isinstance(page, mixpeek.ListBatchesResponse)
        assert all(isinstance(batch, mixpeek.BatchModel) for batch in page.results)
        assert len(page.results) <= limit
        results += page.results
        cursor = page.pagination["next_cursor"]
        if not cursor:
            return results


def test_sdk_lists_every_batch_of_the_organisation_and_of_a_namespace(api: Any, world: World) -> None:
    """The SDK calls it `list_all_batches` (POST /v1/batches/list)."""
    batches_api = mixpeek.BatchesApi(api)
    everything = sdk_batches(batches_api.list_all_batches)
    truth = world.batches()
    assert len(truth) > 100
    assert len({b.status for b in truth}) >= 4
    assert sorted(b.batch_id for b in everything) == sorted(b.batch_id for b in truth)
    assert [b.created_at for b in everything] == sorted((b.created_at for b in everything), reverse=True)
    by_id = {b.batch_id: b for b in truth}
    for got in everything:
        want = by_id[got.batch_id]
        assert (got.status.value, got.bucket_id, got.namespace_id) == (
            want.status,
            want.bucket_id,
            want.namespace_id,
        )
        assert (got.total_tiers, got.current_tier, got.failed_object_count) == (
            want.total_tiers,
            want.current_tier,
            want.failed_object_count,
        )
        assert (got.failure_category.value if got.failure_category else None) == want.failure_category
        assert [tier.source_type for tier in got.tier_tasks] == [t.source_type for t in want.tier_tasks]
        assert (got.progress is None) == (not want.started)
    prod = world.namespace("prod")
    assert prod is not None
    scoped = sdk_batches(batches_api.list_all_batches, namespace="prod", limit=1000)
    assert sorted(b.batch_id for b in scoped) == sorted(b.batch_id for b in world.batches("prod"))
    failed = sdk_batches(
        batches_api.list_all_batches, {"status": "FAILED", "namespace_id": prod.namespace_id}
    )
    assert len(failed) == sum(b.status == "FAILED" for b in world.batches("prod")) > 0
    assert all(b.failure_category and b.failure_reason for b in failed)


def test_sdk_lists_one_buckets_batches_and_the_buckets(api: Any, world: World) -> None:
    prod = world.namespace("prod")
    assert prod is not None
    bucket_id = prod.bucket_ids[1]
    bucket_api = mixpeek.BucketBatchesApi(api)
    listed = sdk_batches(
        lambda **kw: bucket_api.list_batches_buckets(bucket_id, **kw), namespace="prod", limit=10
    )
    assert sorted(b.batch_id for b in listed) == sorted(
        b.batch_id for b in world.batches("prod") if b.bucket_id == bucket_id
    )
    buckets = mixpeek.BucketsApi(api).list_buckets(
        list_buckets_request=mixpeek.ListBucketsRequest(limit=2), _headers={"X-Namespace": "prod"}
    )
    assert isinstance(buckets, mixpeek.ListBucketsResponse)
    assert all(isinstance(bucket, mixpeek.BucketResponse) for bucket in buckets.results)
    assert [b.bucket_id for b in buckets.results] == list(prod.bucket_ids[:2])
    assert buckets.total_count == 3
    assert isinstance(buckets.stats, mixpeek.BucketListStats)
    second = buckets.results[1]
    assert second.batch_stats is not None
    assert second.batch_stats.total == len(listed)
    assert second.object_count == sum(
        b.object_count for b in world.batches("prod") if b.bucket_id == bucket_id
    )


def test_sdk_raises_its_own_exceptions_for_batch_errors(api: Any, world: World) -> None:
    batches_api, bucket_api = mixpeek.BatchesApi(api), mixpeek.BucketBatchesApi(api)
    with pytest.raises(mixpeek.exceptions.BadRequestException):
        batches_api.list_all_batches(
            list_batches_request=mixpeek.ListBatchesRequest(namespace_id="dev"),
            _headers={"X-Namespace": "prod"},
        )
    with pytest.raises(mixpeek.exceptions.NotFoundException) as missing:
        bucket_api.list_batches_buckets("bkt_nope", _headers={"X-Namespace": "prod"})
    assert missing.value.data.error.type == "NotFoundError"
    extra = mixpeek.ListBatchesRequest.from_dict({"sort": {"field": "created_at"}})  # kept as an extra key
    with pytest.raises(mixpeek.exceptions.UnprocessableEntityException):
        batches_api.list_all_batches(list_batches_request=extra)


def test_sdk_parses_the_older_batch_listing(world: World) -> None:
    """API 0.81's ListBatchesResponse: results and total_count, no pagination; clients page by offset."""
    with (
        SimulatorTestServer(world, cursor_pagination=False) as older,
        sdk_client(older.url, older.api_key) as client,
    ):
        page = mixpeek.BatchesApi(client).list_all_batches(
            list_batches_request=mixpeek.ListBatchesRequest(offset=5, limit=10)
        )
    assert page.pagination is None
    assert page.total_count == len(world.batches())
    assert [b.batch_id for b in page.results] == [
        b.batch_id for b in sorted(world.batches(), key=lambda b: (b.created_at, b.batch_id), reverse=True)
    ][5:15]


def test_sdk_raises_its_own_exceptions_for_api_errors(api: Any, server: SimulatorTestServer) -> None:
    with (
        sdk_client(server.url, "sk_not_the_key") as stranger,
        pytest.raises(mixpeek.exceptions.UnauthorizedException),
    ):
        mixpeek.TasksApi(stranger).list_tasks()
    tasks_api = mixpeek.TasksApi(api)
    with pytest.raises(mixpeek.exceptions.NotFoundException) as missing:
        tasks_api.list_tasks(_headers={"X-Namespace": "staging"})
    assert missing.value.data.error.type == "NotFoundError"
    with pytest.raises(mixpeek.exceptions.UnprocessableEntityException):
        tasks_api.list_tasks(cursor="not-a-cursor")


def test_sdk_parses_the_older_api_and_the_documented_model(world: World) -> None:
    with SimulatorTestServer(world, cursor_pagination=False) as older:
        with sdk_client(older.url, older.api_key) as client:
            page = mixpeek.TasksApi(client).list_tasks(limit=10, offset=10)
        assert page.pagination.next_cursor is None
        assert page.pagination.total == len(world.tasks())
        assert page.pagination.next_page == "/v1/tasks/list?offset=20&limit=10"


def test_sdk_models_refuse_statuses_they_do_not_know(api: Any, world: World) -> None:
    """Why a client must not parse tasks with the SDK's models: one new status breaks the whole page."""
    world.set_status(world.tasks("prod")[0].task_id, "RETRYING")
    with pytest.raises(pydantic.ValidationError, match="status"):
        mixpeek.TasksApi(api).list_tasks(limit=1000, _headers={"X-Namespace": "prod"})


@by_profile("in_refused", "nin_refused", "gte_refused")
def test_sdk_raises_its_own_exception_for_a_refused_operator(api: Any, profile: ApiProfile) -> None:
    operator = profile.refuse_operator
    filters = mixpeek.LogicalOperatorInput.from_dict(
        {"AND": [{"field": "created_at", "operator": operator, "value": [0] if "in" in str(operator) else 0}]}
    )
    with pytest.raises(mixpeek.exceptions.UnprocessableEntityException) as refused:
        mixpeek.TasksApi(api).list_tasks(list_tasks_request=mixpeek.ListTasksRequest(filters=filters))
    [error] = json.loads(refused.value.body)["detail"]
    assert error["loc"] == ["body", "filters", "AND", 0, "operator"]
    assert f"'{operator}'" in error["msg"]
    assert sdk_walk(api, mixpeek.ListTasksRequest(status=mixpeek.TaskStatusEnum.FAILED))  # the rest works


@by_profile("batches_list_absent")
def test_sdk_without_the_org_batch_listing(api: Any, world: World) -> None:
    with pytest.raises(mixpeek.exceptions.NotFoundException):
        mixpeek.BatchesApi(api).list_all_batches(list_batches_request=mixpeek.ListBatchesRequest())
    buckets = mixpeek.BucketsApi(api).list_buckets(
        list_buckets_request=mixpeek.ListBucketsRequest(limit=100), _headers={"X-Namespace": "dev"}
    )
    bucket_api = mixpeek.BucketBatchesApi(api)
    listed = []
    for bucket in buckets.results:

        def fetch(bucket_id: str = bucket.bucket_id, **kw: Any) -> Any:
            return bucket_api.list_batches_buckets(bucket_id, **kw)

        listed += sdk_batches(fetch, namespace="dev", limit=7)
    assert sorted(b.batch_id for b in listed) == sorted(b.batch_id for b in world.batches("dev"))
    assert len(listed) > 7


# Enumerations: the simulator's, and what it emits, against the SDK's models


def test_the_simulators_enumerations_are_the_sdks() -> None:
    assert set(TASK_STATUSES) == SDK_STATUSES == SDK_BATCH_STATUSES
    assert (
        set(TERMINAL_STATUSES) == SDK_TERMINAL == {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED"}
    )
    assert set(TASK_TYPES) == SDK_TASK_TYPES
    assert set(FAILURE_CATEGORIES) == SDK_FAILURE_CATEGORIES
    assert set(FILTER_OPERATORS) == SDK_OPERATORS
    assert set(SORT_DIRECTIONS) == SDK_DIRECTIONS
    assert set(TASK_TYPE_MIX) | BATCH_TASK_TYPES <= SDK_TASK_TYPES
    # The one task type the SDK documents additional_data.namespace_id as REQUIRED on: the default profile's.
    described = mixpeek.TaskResponse.model_fields["additional_data"].description
    assert re.findall(r"Batch-specific fields \(task_type=(\w+)\)", described) == [BATCH_PROCESS_TASK_TYPE]
    assert "'namespace_id': Namespace identifier (REQUIRED)" in described


def test_every_value_the_simulator_emits_is_one_the_sdk_declares(http: httpx.Client, world: World) -> None:
    """Raw JSON, not the SDK's parse: a value outside its enums would fail the parse above, but here the
    check names it. QUEUED is emitted too (the fixture's world has none: API 0.81 did not know it)."""
    world.create_task("prod", status="QUEUED")
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = http.post(
            "/v1/tasks/list", params={"limit": 1000} | ({"cursor": cursor} if cursor else {})
        ).json()
        tasks += page["results"]
        if not (cursor := page["pagination"]["next_cursor"]):
            break
    batches = http.post("/v1/batches/list", json={"limit": 1000}).json()["results"]
    assert len(tasks) == len(world.tasks())
    assert len(batches) == len(world.batches())
    statuses = {task["status"] for task in tasks}
    assert statuses >= {"PENDING", "QUEUED", "PROCESSING", *TERMINAL_STATUSES}
    assert statuses <= SDK_STATUSES
    assert {task["task_type"] for task in tasks} <= SDK_TASK_TYPES
    assert {batch["status"] for batch in batches} <= SDK_BATCH_STATUSES
    for batch in batches:
        assert {tier["status"] for tier in batch["tier_tasks"]} <= SDK_BATCH_STATUSES
    categories = {batch["failure_category"] for batch in batches} - {None}
    assert categories
    assert categories <= SDK_FAILURE_CATEGORIES


# The exporter's requests, judged by the SDK's request models

TERMINAL_LIST = sorted(SDK_TERMINAL)
# The bodies the exporter's incremental polls send: the active set, a lookup of finished tasks by id, and
# the listing newest first (its births).
EXPORTER_BODIES: dict[str, dict[str, Any]] = {
    "active set": {
        "filters": {
            "NOT": [
                {"OR": [{"field": "status", "operator": "eq", "value": status} for status in TERMINAL_LIST]}
            ]
        }
    },
    "lookup by id": {
        "filters": {
            "AND": [{"field": "task_id", "operator": "in", "value": ["3f0e6a2c-0000-4000-8000-000000000001"]}]
        }
    },
    "newest first": {"sort": {"field": "created_at", "direction": "desc"}},
}


def conditions(filters: Any) -> list[dict[str, Any]]:
    """Every condition ({field, operator, value}) of a filters object, however nested."""
    found: list[dict[str, Any]] = []
    for key in ("AND", "OR", "NOT"):
        for item in filters.get(key) or []:
            found += [item] if isinstance(item.get("field"), str) else conditions(item)
    return found


@pytest.mark.parametrize("name", list(EXPORTER_BODIES))
def test_the_sdks_request_models_accept_the_exporters_bodies_only_through_a_loophole(name: str) -> None:
    """ListTasksRequest takes each body, but FilterCondition.value models only a DynamicValue (a reference to
    a request field): it cannot hold a literal list or string. A condition with a literal value is therefore
    read as a LogicalOperatorInput with extra keys (the shorthand-equality form), which keeps the keys
    verbatim: the body survives the SDK, but its models do not represent the condition. This is the gap."""
    body = EXPORTER_BODIES[name]
    request = mixpeek.ListTasksRequest.from_dict(body)  # accepted: no exception
    assert set(body) <= set(request.to_dict())
    if "sort" in body:
        assert isinstance(request.sort, mixpeek.SortOption)
        assert (request.sort.var_field, request.sort.direction) == ("created_at", mixpeek.SortDirection.DESC)
        assert request.sort.to_json() == json.dumps(body["sort"])  # a sort, the SDK represents exactly
    if "filters" not in body:
        return
    found = conditions(body["filters"])
    assert found
    assert {c["operator"] for c in found} <= SDK_OPERATORS
    for condition in found:
        assert not isinstance(condition["value"], dict)  # a literal: a list of strings, or a timestamp string
        with pytest.raises(pydantic.ValidationError, match="DynamicValue"):
            mixpeek.FilterCondition.from_dict(condition)
    parsed = conditions(request.to_dict()["filters"])
    assert [{k: c[k] for k in ("field", "operator", "value")} for c in parsed] == found  # kept verbatim...
    assert all(c["case_sensitive"] is False for c in parsed)  # ...plus a key a condition does not have
    models = [
        inner.actual_instance
        for key in ("var_and", "var_or", "var_not")
        for inner in getattr(request.filters, key) or []
    ]
    assert not any(isinstance(model, mixpeek.FilterCondition) for model in models)


def test_what_the_sdk_would_send_selects_what_the_exporters_body_selects(
    http: httpx.Client, world: World
) -> None:
    """The SDK's serialisation of those bodies (with its extra case_sensitive keys) means the same to the
    simulator as the exporter's own: a FilterCondition has no case_sensitive, the operator's applies."""
    for name, body in EXPORTER_BODIES.items():
        own = http.post("/v1/tasks/list", params={"limit": 1000}, json=body)
        via_sdk = http.post(
            "/v1/tasks/list", params={"limit": 1000}, json=mixpeek.ListTasksRequest.from_dict(body).to_dict()
        )
        assert own.status_code == via_sdk.status_code == 200, name
        assert own.json()["results"] == via_sdk.json()["results"], name
    active = http.post("/v1/tasks/list", params={"limit": 1000}, json=EXPORTER_BODIES["active set"]).json()
    assert {t["task_id"] for t in active["results"]} == {
        t.task_id for t in world.tasks() if t.status not in SDK_TERMINAL
    }


@by_profile("timestamps", "documented")
async def test_every_body_the_exporter_sends_is_one_the_sdk_accepts(
    world: World, clock: FakeClock, profile: ApiProfile
) -> None:
    """Whatever the exporter's polls send (full listings, incremental ones, lookups), ListTasksRequest takes
    it, its operators and sort directions are the SDK's, and each literal-valued condition is in the gap."""
    with simulator(world, profile) as api:
        exporter = build_exporter(
            api.url, api.api_key, clock, namespaces=("prod", "dev"), page_size=100, reconcile_every=10
        )
        try:
            for _ in range(4):
                await exporter.poll()
                clock.advance(30)
                world.advance(30)
        finally:
            await exporter.http.aclose()
        bodies = [r.body for r in api.requests if r.path == "/v1/tasks/list"]
    assert len(bodies) >= 8
    assert all(isinstance(body, dict) for body in bodies)
    if profile.timestamps:  # incremental polls: the filtered bodies this test is about
        assert sum(bool(body.get("filters")) for body in bodies if isinstance(body, dict)) >= 3
    for body in bodies:
        assert isinstance(body, dict)
        request = mixpeek.ListTasksRequest.from_dict(body)
        assert set(body) <= set(request.to_dict())
        if body.get("sort"):
            assert body["sort"].get("direction", "asc") in SDK_DIRECTIONS
        for condition in conditions(body.get("filters") or {}):
            assert condition["operator"] in SDK_OPERATORS
            if not isinstance(condition["value"], dict):
                with pytest.raises(pydantic.ValidationError):
                    mixpeek.FilterCondition.from_dict(condition)


# The OpenAPI 0.81 document


class OpenApi:
    """Just enough JSON Schema (2020-12 as OpenAPI 3.1 uses it) to check this API's responses; formats are
    not checked, since the API's naive timestamps are not RFC 3339 date-times."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def response_schema(self, path: str, method: str, status: int) -> dict[str, Any]:
        response = self.document["paths"][path][method]["responses"][str(status)]
        schema: dict[str, Any] = response["content"]["application/json"]["schema"]
        return schema

    def component(self, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = self.document["components"]["schemas"][name]
        return schema

    def errors(self, value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.errors(value, self.component(schema["$ref"].rsplit("/", 1)[1]), at)
        problems: list[str] = []
        for key in ("anyOf", "oneOf"):  # oneOf is read as anyOf: FastAPI's unions do not overlap here
            if key in schema and all(self.errors(value, option, at) for option in schema[key]):
                problems.append(f"{at}: {json.dumps(value)[:80]} matches no {key} option")
        for part in schema.get("allOf", []):
            problems += self.errors(value, part, at)
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{at}: {value!r} not in enum")
        kinds = schema.get("type")
        if kinds is not None and not any(
            _is(value, kind) for kind in ([kinds] if isinstance(kinds, str) else kinds)
        ):
            return [*problems, f"{at}: {json.dumps(value)[:80]} is not {kinds}"]
        if isinstance(value, dict):
            problems += [f"{at}: missing {name}" for name in schema.get("required", []) if name not in value]
            properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
            for name, item in value.items():
                if name in properties:
                    problems += self.errors(item, properties[name], f"{at}.{name}")
                elif extra is False:
                    problems.append(f"{at}: unexpected {name}")
                elif isinstance(extra, dict):
                    problems += self.errors(item, extra, f"{at}.{name}")
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                problems += self.errors(item, schema["items"], f"{at}[{i}]")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                problems.append(f"{at}: {value} < {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                problems.append(f"{at}: {value} > {schema['maximum']}")
        return problems


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number"):
        numeric = int if kind == "integer" else int | float
        return isinstance(value, numeric) and not isinstance(value, bool)
    types = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}
    return isinstance(value, types[kind])


@pytest.fixture
def spec() -> OpenApi:
    if not SPEC_PATH.exists():
        pytest.skip(f"{SPEC_PATH} is absent")
    return OpenApi(json.loads(SPEC_PATH.read_text()))


@pytest.fixture
def http(server: SimulatorTestServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10, verify=False) as client:
        yield client


def test_responses_match_the_openapi_spec(spec: OpenApi, http: httpx.Client, world: World) -> None:
    failed = next(t for t in world.tasks() if t.status == "FAILED")
    exchanges = [
        ("/v1/tasks/list", "post", http.post("/v1/tasks/list", params={"limit": 1000}, json={})),
        ("/v1/tasks/list", "post", http.post("/v1/tasks/list", json={"foo": 1})),
        ("/v1/tasks/list", "post", http.post("/v1/tasks/list", json={}, headers={"X-Namespace": "nope"})),
        (
            "/v1/tasks/list",
            "post",
            http.post("/v1/tasks/list", json={}, headers={"Authorization": "Bearer x"}),
        ),
        ("/v1/tasks/{task_id}", "get", http.get(f"/v1/tasks/{failed.task_id}")),
        ("/v1/namespaces/list", "post", http.post("/v1/namespaces/list", json={})),
    ]
    assert [response.status_code for *_, response in exchanges] == [200, 422, 404, 401, 200, 200]
    prod = {"X-Namespace": "prod"}
    bucket_id = world.buckets("prod")[0].bucket_id
    bucket_batches = "/v1/buckets/{bucket_identifier}/batches/list"
    exchanges += [
        ("/v1/buckets/list", "post", http.post("/v1/buckets/list", json={}, headers=prod)),
        ("/v1/buckets/list", "post", http.post("/v1/buckets/list", json={}, headers={"X-Namespace": "nope"})),
        (bucket_batches, "post", http.post(f"/v1/buckets/{bucket_id}/batches/list", json={}, headers=prod)),
        (bucket_batches, "post", http.post("/v1/buckets/bkt_nope/batches/list", json={}, headers=prod)),
    ]
    assert [response.status_code for *_, response in exchanges[-4:]] == [200, 404, 200, 404]
    assert exchanges[-2][2].json()["total_count"] > 0
    for path, method, response in exchanges:
        schema = spec.response_schema(path, method, response.status_code)
        assert spec.errors(response.json(), schema) == [], (path, response.status_code)


@by_profile()
def test_task_answers_match_the_openapi_spec_in_every_profile(
    spec: OpenApi, http: httpx.Client, world: World, profile: ApiProfile
) -> None:
    prod = {"X-Namespace": "prod"}
    listed = http.post(
        "/v1/tasks/list", params={"limit": 1000}, json={"sort": {"field": "status"}}, headers=prod
    )
    one = http.get(f"/v1/tasks/{world.tasks('prod')[0].task_id}", headers=prod)
    bucket_id = world.buckets("prod")[0].bucket_id
    batches = http.post(f"/v1/buckets/{bucket_id}/batches/list", json={"limit": 5}, headers=prod)
    assert [listed.status_code, one.status_code, batches.status_code] == [200, 200, 200]
    for path, method, response in [
        ("/v1/tasks/list", "post", listed),
        ("/v1/tasks/{task_id}", "get", one),
        ("/v1/buckets/{bucket_identifier}/batches/list", "post", batches),
    ]:
        assert spec.errors(response.json(), spec.response_schema(path, method, 200)) == [], path


def test_the_reference_example_request_is_accepted(spec: OpenApi, http: httpx.Client) -> None:
    """The request example of the reference page (seeds/tasks-list.txt) is valid and served."""
    condition = {"field": "name", "operator": "eq", "value": "John"}
    example = {
        "status": "PENDING",
        "task_type": "api_namespaces_create",
        "filters": {"AND": [condition], "OR": [condition], "NOT": [condition], "case_sensitive": True},
        "sort": {"field": "created_at", "direction": "desc"},
        "search": "<string>",
    }
    assert spec.errors(example, spec.component("ListTasksRequest")) == []
    response = http.post("/v1/tasks/list", json=example)
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_statuses_newer_than_the_spec_are_what_clients_must_tolerate(
    spec: OpenApi, http: httpx.Client, world: World
) -> None:
    world.create_task("prod", status="QUEUED")  # in SDK 1.3.783 (API 0.82), not in the 0.81 enum
    response = http.post("/v1/tasks/list", json={"status": "QUEUED"})
    problems = spec.errors(response.json(), spec.response_schema("/v1/tasks/list", "post", 200))
    assert problems == ["$.results[0].status: 'QUEUED' not in enum"]
