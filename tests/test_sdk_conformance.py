"""Fidelity of the simulator: the official SDK (mixpeek 1.3.783) and the OpenAPI 0.81 spec accept its answers.

If the SDK parses every response into its own models and raises its own exceptions for the errors, a client
tested against the simulator is tested against the API's real shapes.
"""

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from exporter.simulator import FakeClock, SimulatorServer, World

mixpeek = pytest.importorskip("mixpeek")

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
def server(world: World) -> Iterator[SimulatorServer]:
    with SimulatorServer(world) as running:
        yield running


def sdk_client(url: str, key: str) -> Any:
    return mixpeek.ApiClient(mixpeek.Configuration(host=url, access_token=key))


@pytest.fixture
def api(server: SimulatorServer) -> Iterator[Any]:
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


def test_sdk_pages_through_a_namespace(api: Any, world: World, server: SimulatorServer) -> None:
    prod = world.namespace("prod")
    assert prod is not None
    results = sdk_walk(api, mixpeek.ListTasksRequest(), namespace="prod")
    truth = {task.task_id: task for task in world.tasks("prod")}
    assert len(results) == len(truth) > 200
    assert {task.task_id: task.status.value for task in results} == {k: t.status for k, t in truth.items()}
    assert {task.task_type.value for task in results} == {task.task_type for task in truth.values()}
    assert all(task.additional_data["namespace_id"] == prod.namespace_id for task in results)
    sent = [r for r in server.requests if r.path == "/v1/tasks/list"]
    assert all(r.headers["x-namespace"] == "prod" and r.query["limit"] == "100" for r in sent)
    assert all("cursor" in r.query for r in sent[1:])


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
    assert listed.total_count == 2 and listed.results[0].created_at is not None
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
    assert len(truth) > 100 and len({b.status for b in truth}) >= 4
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
    assert buckets.total_count == 3 and isinstance(buckets.stats, mixpeek.BucketListStats)
    second = buckets.results[1]
    assert second.batch_stats is not None and second.batch_stats.total == len(listed)
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
        SimulatorServer(world, cursor_pagination=False) as older,
        sdk_client(older.url, older.api_key) as client,
    ):
        page = mixpeek.BatchesApi(client).list_all_batches(
            list_batches_request=mixpeek.ListBatchesRequest(offset=5, limit=10)
        )
    assert page.pagination is None and page.total_count == len(world.batches())
    assert [b.batch_id for b in page.results] == [
        b.batch_id for b in sorted(world.batches(), key=lambda b: (b.created_at, b.batch_id), reverse=True)
    ][5:15]


def test_sdk_raises_its_own_exceptions_for_api_errors(api: Any, server: SimulatorServer) -> None:
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
    with SimulatorServer(world, cursor_pagination=False) as older:
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
def http(server: SimulatorServer) -> Iterator[httpx.Client]:
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
    assert response.status_code == 200 and response.json()["results"] == []


def test_statuses_newer_than_the_spec_are_what_clients_must_tolerate(
    spec: OpenApi, http: httpx.Client, world: World
) -> None:
    world.create_task("prod", status="QUEUED")  # in SDK 1.3.783 (API 0.82), not in the 0.81 enum
    response = http.post("/v1/tasks/list", json={"status": "QUEUED"})
    problems = spec.errors(response.json(), spec.response_schema("/v1/tasks/list", "post", 200))
    assert problems == ["$.results[0].status: 'QUEUED' not in enum"]
