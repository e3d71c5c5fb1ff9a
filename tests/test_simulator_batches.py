"""Simulated buckets and batches: the lifecycle and its ground truth, then the listing routes over HTTP."""

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from exporter.simulator import (
    DEFAULT_API_KEY,
    FAILURE_CATEGORIES,
    TERMINAL_STATUSES,
    SimBatch,
    World,
    start_demo,
)
from exporter.simulator.batches import FAILURE_REASONS, HEARTBEAT_S
from exporter.simulator.render import batch_json
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.timestamps import iso

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
NAIVE_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}")
BATCH_LIFECYCLE = {"DRAFT", "PENDING", "PROCESSING", "IN_PROGRESS", *TERMINAL_STATUSES}
# The lifecycle only moves forward through these stages (a poll may miss some); terminal is the last.
STAGE = {"DRAFT": 0, "PENDING": 1, "PROCESSING": 2, "IN_PROGRESS": 2} | dict.fromkeys(TERMINAL_STATUSES, 3)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    world = World(clock, seed=7)
    world.add_namespace("prod")
    world.add_namespace("dev")
    return world


@pytest.fixture
def server(world: World) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world) as running:
        yield running


@pytest.fixture
def client(server: SimulatorTestServer) -> Iterator[httpx.Client]:
    with connect(server.url) as http:
        yield http


def connect(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=AUTH, timeout=30, verify=False)


def tick(clock: FakeClock, world: World, seconds: float) -> None:
    clock.advance(seconds)
    world.advance(seconds)


def post(
    client: httpx.Client, path: str, body: dict[str, Any] | None = None, namespace: str | None = None
) -> httpx.Response:
    headers = {"X-Namespace": namespace} if namespace else {}
    return client.post(path, json=body or {}, headers=headers)


def page_of(client: httpx.Client, path: str, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    response = post(client, path, body, namespace)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def walk(
    client: httpx.Client,
    path: str = "/v1/batches/list",
    body: dict[str, Any] | None = None,
    namespace: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Every batch of a listing, following next_cursor (sent back in the body)."""
    results: list[dict[str, Any]] = []
    cursor = None
    while True:
        request = (body or {}) | {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = page_of(client, path, request, namespace)
        results += page["results"]
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            return results


def ids(results: list[dict[str, Any]]) -> list[str]:
    return [batch["batch_id"] for batch in results]


def newest_first(batches: list[SimBatch]) -> list[str]:
    return [b.batch_id for b in sorted(batches, key=lambda b: (b.created_at, b.batch_id), reverse=True)]


def bucket(world: World, namespace: str, index: int = 0) -> str:
    space = world.namespace(namespace)
    assert space is not None
    return space.bucket_ids[index]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


# The world


def test_create_batch_defaults(world: World, clock: FakeClock) -> None:
    batch = world.get_batch(world.create_batch("prod"))
    assert batch is not None
    assert re.fullmatch(r"btch_[0-9a-f]{12}", batch.batch_id)
    space = world.namespace("prod")
    assert space is not None
    assert batch.namespace_id == space.namespace_id
    assert batch.bucket_id in space.bucket_ids
    assert (batch.status, batch.object_count, batch.created_at, batch.updated_at) == (
        "DRAFT",
        100,
        clock(),
        clock(),
    )
    assert 1 <= batch.total_tiers <= 3
    assert batch.tier_tasks == ()
    assert batch.current_tier is None
    assert batch.last_activity_at is None
    assert not batch.started
    chosen = world.create_batch("dev", bucket_id=bucket(world, "dev", 2), objects=7, created_at=clock() - 60)
    older = world.get_batch(chosen)
    assert older is not None
    assert (older.bucket_id, older.object_count, older.created_at) == (
        bucket(world, "dev", 2),
        7,
        clock() - 60,
    )
    assert [b.batch_id for b in world.batches("dev")] == [chosen]
    assert [b.batch_id for b in world.batches()] == [batch.batch_id, chosen]
    with pytest.raises(KeyError):
        world.create_batch("prod", bucket_id=bucket(world, "dev"))
    with pytest.raises(KeyError):
        world.create_batch("staging")
    with pytest.raises(ValueError, match="at least one object"):
        world.create_batch("prod", objects=0)


def test_advance_runs_batches_through_their_tiers_with_exact_ground_truth(clock: FakeClock) -> None:
    world = World(clock, seed=11, batch_rate_per_s=0.05, batch_failure_ratio=0.2)
    world.add_namespace("prod")
    world.add_namespace("dev", batch_rate_per_s=0.02, batch_failure_ratio=0.5)
    start = clock()
    history: dict[str, list[str]] = {}
    for _ in range(720):  # two hours in 10 s steps, watching every status a batch takes
        tick(clock, world, 10)
        for batch in world.batches():
            seen = history.setdefault(batch.batch_id, [])
            if not seen or seen[-1] != batch.status:
                seen.append(batch.status)
    batches = world.batches()
    assert 300 < len(world.batches("prod")) < 420  # Poisson around 0.05/s for 7200 s: 360
    assert {b.status for b in batches} <= BATCH_LIFECYCLE
    for statuses in history.values():
        assert all(STAGE[before] < STAGE[after] for before, after in itertools.pairwise(statuses))
    for batch in batches:
        assert start <= batch.created_at <= batch.updated_at <= clock()
        check_tiers(batch)
    finished = [b for b in batches if b.status in TERMINAL_STATUSES]
    assert world.batch_transitions == Counter((b.namespace_id, b.bucket_id, b.status) for b in finished)
    objects: Counter[tuple[str, str, str]] = Counter()
    for b in finished:
        objects[(b.namespace_id, b.bucket_id, "processed")] += b.object_count - b.failed_object_count
        objects[(b.namespace_id, b.bucket_id, "failed")] += b.failed_object_count
    assert world.batch_objects == objects
    assert world.batch_failures == Counter(
        (b.namespace_id, b.bucket_id, b.failure_category) for b in finished if b.failure_category
    )
    outcomes = Counter(b.status for b in finished)
    assert outcomes["COMPLETED"] > outcomes["FAILED"] > outcomes["COMPLETED_WITH_ERRORS"] > 0
    assert outcomes["CANCELED"] > 0
    assert {b.failure_category for b in finished if b.status == "FAILED"} <= set(FAILURE_CATEGORIES)
    assert len({b.failure_category for b in finished if b.status == "FAILED"}) >= 4
    assert any(b.total_tiers == 3 and b.status == "COMPLETED" for b in finished)
    failure_share = {
        name: sum(b.status == "FAILED" for b in finished if b.namespace_id == ns.namespace_id)
        / sum(b.namespace_id == ns.namespace_id for b in finished)
        for name in ("prod", "dev")
        if (ns := world.namespace(name)) is not None
    }
    assert 0.1 < failure_share["prod"] < 0.3
    assert 0.35 < failure_share["dev"] < 0.65


def check_tiers(batch: SimBatch) -> None:
    """The invariants of a batch's tiers in every status."""
    tiers = batch.tier_tasks
    assert [tier.tier_num for tier in tiers] == list(range(len(tiers)))
    assert len(tiers) <= batch.total_tiers
    assert [tier.collection_ids for tier in tiers] == list(batch.dag_tiers[: len(tiers)])
    assert all(tier.source_type == ("bucket" if tier.tier_num == 0 else "collection") for tier in tiers)
    if batch.status == "DRAFT":
        assert tiers == ()
    elif batch.status == "PENDING":
        assert [tier.status for tier in tiers] == ["PENDING"]
        assert not batch.started
    elif batch.status in ("PROCESSING", "IN_PROGRESS"):
        assert tiers[-1].status == batch.status
        assert tiers[-1].completed_at is None
        assert batch.current_tier == tiers[-1].tier_num
        assert batch.last_activity_at is not None
        assert batch.last_activity_at >= (tiers[-1].started_at or 0)
        assert 0 <= batch.processed <= batch.object_count
    else:
        assert tiers[-1].status == batch.status
        assert batch.current_tier == tiers[-1].tier_num
        assert batch.last_activity_at == tiers[-1].completed_at == batch.updated_at
        completed = batch.status in ("COMPLETED", "COMPLETED_WITH_ERRORS")
        assert (len(tiers) == batch.total_tiers) or not completed
        assert (batch.failure_category is not None) == (batch.status == "FAILED")
        assert (batch.failed_object_count > 0) == (batch.status == "COMPLETED_WITH_ERRORS") or (
            batch.status == "FAILED"
        )
        if completed:
            assert batch.processed == batch.object_count - batch.failed_object_count
    for before, after in itertools.pairwise(tiers):
        assert before.status == "COMPLETED"
        assert before.completed_at == after.started_at
    for tier in tiers:
        if tier.started_at is not None and tier.completed_at is not None:
            assert tier.duration_ms == pytest.approx((tier.completed_at - tier.started_at) * 1000, abs=0.001)


def test_progress_moves_with_heartbeats(world: World, clock: FakeClock) -> None:
    batch_id = world.create_batch("prod", objects=2000, status="PROCESSING")
    started = clock()
    progress = []
    for _ in range(6):
        tick(clock, world, 7)
        batch = world.get_batch(batch_id)
        assert batch is not None
        assert batch.status == "PROCESSING"
        progress.append((batch.last_activity_at, batch.processed))
    beats = [at for at, _ in progress if at is not None]
    assert len(beats) == len(progress)
    assert all((at - started) % HEARTBEAT_S == 0 for at in beats)
    assert beats[-1] == started + 40
    assert beats == sorted(beats)
    assert [p for _, p in progress] == sorted(p for _, p in progress)
    assert progress[-1][1] > 0


def test_the_same_seed_gives_the_same_batches_and_batches_leave_the_tasks_alone() -> None:
    def run(batch_rate: float) -> tuple[list[Any], list[SimBatch]]:
        clock = FakeClock()
        world = World(clock, seed=5, spawn_rate_per_s=0.3, batch_rate_per_s=batch_rate)
        world.add_namespace("prod")
        for _ in range(30):
            tick(clock, world, 20)
        return world.tasks(), world.batches()

    tasks, batches = run(0.05)
    assert run(0.05) == (tasks, batches)
    assert len(batches) > 10
    assert run(0.0) == (tasks, [])


def test_nothing_happens_before_the_window_a_test_asks_for(world: World, clock: FakeClock) -> None:
    """A batch created in the past waits for the next window, like a task: advance(0) changes nothing."""
    batch_id = world.create_batch("prod", status="PENDING", created_at=clock() - 3600)
    world.advance(0)
    batch = world.get_batch(batch_id)
    assert batch is not None
    assert batch.status == "PENDING"
    tick(clock, world, 3600)
    batch = world.get_batch(batch_id)
    assert batch is not None
    assert batch.status != "PENDING"
    assert batch.tier_tasks[0].started_at is not None
    assert batch.tier_tasks[0].started_at > clock() - 3600


def test_set_batch_status_counts_the_first_terminal_status_once(world: World, clock: FakeClock) -> None:
    ns = world.namespace("prod")
    assert ns is not None
    where = (ns.namespace_id, ns.bucket_ids[1])
    batch_id = world.create_batch("prod", bucket_id=ns.bucket_ids[1], objects=50, status="PROCESSING")
    clock.advance(30)
    world.set_batch_status(batch_id, "COMPLETED_WITH_ERRORS", failed_objects=5, failure_category="pipeline")
    world.set_batch_status(batch_id, "PROCESSING")  # a regression, then terminal again: not counted twice
    world.set_batch_status(batch_id, "FAILED")
    batch = world.get_batch(batch_id)
    assert batch is not None
    assert (batch.status, batch.failure_category, batch.updated_at) == ("FAILED", "unknown", clock())
    assert batch.failure_reason == FAILURE_REASONS["unknown"][1]
    assert world.batch_transitions == Counter({(*where, "COMPLETED_WITH_ERRORS"): 1})
    assert world.batch_objects == Counter({(*where, "processed"): 45, (*where, "failed"): 5})
    assert world.batch_failures == Counter({(*where, "pipeline"): 1})
    created_done = world.create_batch("dev", objects=10, status="COMPLETED")
    done = world.get_batch(created_done)
    assert done is not None
    assert (done.processed, done.failed_object_count) == (10, 0)
    assert sum(world.batch_transitions.values()) == 2
    with pytest.raises(ValueError, match="terminal"):
        world.set_batch_status(batch_id, "PROCESSING", failed_objects=1)
    with pytest.raises(ValueError, match="within"):
        world.set_batch_status(batch_id, "FAILED", failed_objects=51)
    with pytest.raises(KeyError):
        world.set_batch_status("btch_nope", "FAILED")


def test_statuses_outside_the_lifecycle_stay_put(world: World, clock: FakeClock) -> None:
    archived = world.create_batch("prod", status="ARCHIVED")
    done = world.create_batch("prod", status="CANCELED")
    tick(clock, world, 3600)
    assert [b.status for b in world.batches()] == ["ARCHIVED", "CANCELED"]
    assert world.get_batch(archived) is not None
    assert world.get_batch(done) is not None


def test_fail_batch_burst_fails_every_batch_on_the_next_advance(world: World, clock: FakeClock) -> None:
    ns = world.namespace("dev")
    assert ns is not None
    burst = world.fail_batch_burst("dev", 20, bucket_id=ns.bucket_ids[2])
    assert Counter(b.status for b in world.batches("dev")) == Counter({"PROCESSING": 20})
    tick(clock, world, 1)
    failed = [world.get_batch(batch_id) for batch_id in burst]
    assert all(b is not None and b.status == "FAILED" and b.updated_at == clock() for b in failed)
    assert world.batch_transitions == Counter({(ns.namespace_id, ns.bucket_ids[2], "FAILED"): 20})
    categories = world.batch_failures
    assert sum(categories.values()) == 20
    assert {key[2] for key in categories} <= set(FAILURE_CATEGORIES)
    assert world.batch_objects[(ns.namespace_id, ns.bucket_ids[2], "failed")] == 20 * 100


def test_batches_are_kept_unlike_tasks_and_removed_ones_stay_counted(world: World, clock: FakeClock) -> None:
    world.create_task("prod")
    kept = world.create_batch("prod", status="COMPLETED")
    removed = world.create_batch("prod")
    world.set_batch_status(removed, "FAILED", failure_category="timeout")
    tick(clock, world, 3 * 24 * 3600)
    assert world.tasks() == []
    assert world.get_batch(kept) is not None
    world.remove_batch(removed)
    assert world.get_batch(removed) is None
    assert [b.batch_id for b in world.batches()] == [kept]
    assert sum(world.batch_transitions.values()) == 2
    assert sum(world.batch_failures.values()) == 1
    with pytest.raises(KeyError):
        world.remove_batch(removed)


def test_buckets_have_names_and_figures_from_their_batches(world: World) -> None:
    ns = world.namespace("prod")
    assert ns is not None
    world.create_batch("prod", bucket_id=ns.bucket_ids[0], objects=10, status="COMPLETED")
    failed = world.create_batch("prod", bucket_id=ns.bucket_ids[0], objects=20)
    world.set_batch_status(failed, "FAILED", failed_objects=20)
    world.create_batch("prod", bucket_id=ns.bucket_ids[0], objects=5, status="PENDING")
    buckets = world.buckets("prod")
    assert [b.bucket_id for b in buckets] == list(ns.bucket_ids)
    assert [b.bucket_name for b in buckets] == ["media-uploads", "product-images", "support-videos"]
    first = buckets[0]
    assert (first.object_count, first.failed_object_count) == (35, 20)
    assert (first.batch_stats.total, first.batch_stats.active) == (3, 1)
    assert (first.batch_stats.completed, first.batch_stats.failed) == (1, 1)
    assert buckets[1].object_count == 0
    assert buckets[1].last_upload_at is None


def test_batch_json_in_each_state(world: World, clock: FakeClock) -> None:
    draft = world.get_batch(world.create_batch("prod", objects=40))
    running_id = world.create_batch("prod", objects=40, status="IN_PROGRESS")
    tick(clock, world, 1)
    running = world.get_batch(running_id)
    assert draft is not None
    assert running is not None
    shown = batch_json(draft)
    assert shown["progress"] is None
    assert shown["current_tier"] is None
    assert shown["tier_tasks"] == []
    assert (shown["lifecycle"], shown["status_message"]) == ("accepted", "Draft: not submitted yet")
    assert NAIVE_ISO.fullmatch(str(shown["created_at"]))
    assert shown["last_activity_at"] is None
    live = batch_json(running)
    assert (live["status"], live["health"], live["lifecycle"], live["current_tier"]) == (
        "IN_PROGRESS",
        "healthy",
        "extracting",
        0,
    )
    live_tiers, live_progress = live["tier_tasks"], live["progress"]
    assert isinstance(live_tiers, list)
    assert isinstance(live_progress, dict)
    tier = live_tiers[0]
    assert (tier["source_type"], tier["status"], tier["completed_at"]) == ("bucket", "IN_PROGRESS", None)
    assert tier["started_at"] == iso(running.created_at)
    assert tier["parent_task_id"] is None
    assert live_progress["total"] == 40
    clock.advance(5)
    world.set_batch_status(running_id, "FAILED", failure_category="infrastructure")
    failed = world.get_batch(running_id)
    assert failed is not None
    gone = batch_json(failed)
    assert (gone["failure_category"], gone["lifecycle"]) == ("infrastructure", "failed")
    assert (
        gone["failure_reason"]
        == gone["error"]
        == gone["lifecycle_reason"]
        == FAILURE_REASONS["infrastructure"][1]
    )
    assert gone["failed_object_count"] == 40
    gone_tiers, gone_progress = gone["tier_tasks"], gone["progress"]
    assert isinstance(gone_tiers, list)
    assert isinstance(gone_progress, dict)
    assert gone_progress["objects_failed"] == 40
    assert gone_tiers[0]["duration_ms"] == 6000


# HTTP: the rules


@pytest.mark.parametrize("path", ["/v1/batches/list", "/v1/buckets/list", "/v1/buckets/bkt_x/batches/list"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk_wrong"}])
def test_batch_and_bucket_routes_need_the_key(
    server: SimulatorTestServer, path: str, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{server.url}{path}", json={}, headers=headers | {"X-Namespace": "prod"})
    assert response.status_code == 401
    assert error_of(response)["type"] == "UnauthorizedError"


@pytest.mark.parametrize("path", ["/v1/batches/list", "/v1/buckets/BUCKET/batches/list"])
@pytest.mark.parametrize(
    ("body", "loc", "error_type"),
    [
        ({"foo": 1}, "foo", "extra_forbidden"),
        ({"sort": {"field": "created_at"}}, "sort", "extra_forbidden"),
        ({"limit": 1001}, "limit", "less_than_equal"),
        ({"limit": 0}, "limit", "greater_than_equal"),
        ({"offset": 10001}, "offset", "less_than_equal"),
        ({"offset": -1}, "offset", "greater_than_equal"),
        ({"limit": "10"}, "limit", "int_type"),
        ({"status": "failed"}, "status", "enum"),
        ({"bucket_id": 3}, "bucket_id", "string_type"),
        ({"cursor": "not-a-cursor"}, "cursor", "value_error"),
    ],
)
def test_batch_listings_refuse_bad_bodies_with_422(
    world: World, client: httpx.Client, path: str, body: dict[str, Any], loc: str, error_type: str
) -> None:
    response = post(client, path.replace("BUCKET", bucket(world, "prod")), body, "prod")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", loc], error_type)
    if error_type == "extra_forbidden":
        assert "status, collection_id, bucket_id, namespace_id, offset, limit, cursor" in error["msg"]


def test_x_namespace_and_namespace_id_scope_the_org_listing(world: World, client: httpx.Client) -> None:
    prod = [world.create_batch("prod") for _ in range(3)]
    dev = [world.create_batch("dev") for _ in range(2)]
    prod_id = world.namespace("prod")
    assert prod_id is not None
    everything = page_of(client, "/v1/batches/list", {}, None)
    assert sorted(ids(everything["results"])) == sorted(prod + dev)
    assert everything["total_count"] == 5
    assert sorted(ids(page_of(client, "/v1/batches/list", {}, "prod")["results"])) == sorted(prod)
    assert sorted(ids(page_of(client, "/v1/batches/list", {}, prod_id.namespace_id)["results"])) == sorted(
        prod
    )
    by_body = page_of(client, "/v1/batches/list", {"namespace_id": "dev"}, None)
    assert sorted(ids(by_body["results"])) == sorted(dev)
    agreeing = page_of(client, "/v1/batches/list", {"namespace_id": prod_id.namespace_id}, "prod")
    assert sorted(ids(agreeing["results"])) == sorted(prod)
    # The SDK documents a conflicting header and body as a 400 (not a validation error).
    conflict = post(client, "/v1/batches/list", {"namespace_id": "dev"}, "prod")
    assert conflict.status_code == 400
    assert error_of(conflict)["type"] == "BadRequestError"
    for body, header in [({}, "staging"), ({"namespace_id": "staging"}, None)]:
        unknown = post(client, "/v1/batches/list", body, header)
        assert unknown.status_code == 404
        assert error_of(unknown)["details"] == {"resource": "namespace", "id": "staging"}


def test_status_bucket_and_collection_filters(world: World, client: httpx.Client) -> None:
    first, second = bucket(world, "prod", 0), bucket(world, "prod", 1)
    failed = world.create_batch("prod", bucket_id=first, status="FAILED")
    done = world.create_batch("prod", bucket_id=second, status="COMPLETED")
    draft = world.create_batch("prod", bucket_id=second)
    world.create_batch("dev", status="FAILED")
    assert ids(page_of(client, "/v1/batches/list", {"status": "FAILED"}, "prod")["results"]) == [failed]
    by_bucket = page_of(client, "/v1/batches/list", {"bucket_id": second}, None)
    assert sorted(ids(by_bucket["results"])) == sorted([done, draft])
    assert by_bucket["total_count"] == 2
    both = page_of(client, "/v1/batches/list", {"bucket_id": second, "status": "DRAFT"}, "prod")
    assert ids(both["results"]) == [draft]
    collection = world.get_batch(failed)
    assert collection is not None
    by_collection = page_of(client, "/v1/batches/list", {"collection_id": collection.dag_tiers[0][0]}, None)
    assert ids(by_collection["results"]) == [failed]


def test_newest_first_ties_broken_by_batch_id_and_default_page_of_100(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    for i in range(130):
        world.create_batch("prod", created_at=clock() - (i % 7))  # many batches share a created_at
    page = page_of(client, "/v1/batches/list", {}, "prod")
    assert ids(page["results"]) == newest_first(world.batches("prod"))[:100]
    assert page["pagination"]["page_size"] == 100
    assert page["total_count"] == 130
    offset = page_of(client, "/v1/batches/list", {"offset": 120, "limit": 50}, "prod")
    assert ids(offset["results"]) == newest_first(world.batches("prod"))[120:]
    assert offset["pagination"]["next_cursor"] is None


def test_bucket_batches_route(world: World, client: httpx.Client) -> None:
    first = bucket(world, "prod", 0)
    mine = [world.create_batch("prod", bucket_id=first, status=s) for s in ("DRAFT", "FAILED", "COMPLETED")]
    world.create_batch("prod", bucket_id=bucket(world, "prod", 1))
    by_id = walk(client, f"/v1/buckets/{first}/batches/list", namespace="prod", limit=2)
    assert sorted(ids(by_id)) == sorted(mine)
    by_name = page_of(client, "/v1/buckets/media-uploads/batches/list", {"status": "FAILED"}, "prod")
    assert ids(by_name["results"]) == [mine[1]]
    assert by_name["total_count"] == 1
    elsewhere = page_of(client, f"/v1/buckets/{first}/batches/list", {"bucket_id": "bkt_other"}, "prod")
    assert elsewhere["results"] == []
    for ref, namespace in [("bkt_nope", "prod"), (first, "dev")]:  # a bucket of another namespace is unknown
        missing = post(client, f"/v1/buckets/{ref}/batches/list", {}, namespace)
        assert missing.status_code == 404
        assert error_of(missing)["details"] == {"resource": "bucket", "id": ref}
    unscoped = post(client, f"/v1/buckets/{first}/batches/list", {})
    assert unscoped.status_code == 400
    assert error_of(unscoped)["type"] == "BadRequestError"
    assert post(client, f"/v1/buckets/{first}/batches/list", {}, "staging").status_code == 404
    conflict = post(client, f"/v1/buckets/{first}/batches/list", {"namespace_id": "dev"}, "prod")
    assert conflict.status_code == 400


def test_a_cursor_only_fits_its_own_query(world: World, client: httpx.Client) -> None:
    for _ in range(3):
        world.create_batch("prod")
    cursor = page_of(client, "/v1/batches/list", {"limit": 1}, "prod")["pagination"]["next_cursor"]
    assert page_of(client, "/v1/batches/list", {"limit": 1, "cursor": cursor}, "prod")["results"]
    for body, namespace in [({"status": "DRAFT"}, "prod"), ({}, None), ({}, "dev")]:
        response = post(client, "/v1/batches/list", body | {"limit": 1, "cursor": cursor}, namespace)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "cursor"]


def test_cursor_paging_past_10000_batches_reads_each_once(
    world: World, client: httpx.Client, clock: FakeClock
) -> None:
    start = clock()
    for i in range(10_500):  # three batches a second, ties included; one object each keeps pages small
        world.create_batch("prod", objects=1, created_at=start - i // 3)
    truth = newest_first(world.batches("prod"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        body = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
        page = page_of(client, "/v1/batches/list", body, "prod")
        seen += ids(page["results"])
        pages += 1
        if pages == 3:  # a batch created and one removed while the client pages
            clock.advance(1)
            world.create_batch("prod")
            world.remove_batch(truth[-1])
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            break
    assert pages == 11
    assert len(seen) == len(set(seen))
    assert seen == truth[:-1]


def test_offset_only_mode_serves_api_081_pages(world: World) -> None:
    for i in range(10_050):
        world.create_batch("prod", objects=1, created_at=1_760_000_000.0 - i)
    with SimulatorTestServer(world, cursor_pagination=False) as older, connect(older.url) as http:
        first = page_of(http, "/v1/batches/list", {"limit": 1000, "cursor": "ignored"}, "prod")
        assert set(first) == {"results", "total_count"}
        assert first["total_count"] == 10_050
        seen = ids(first["results"])
        offset = 1000
        while offset <= 10_000:
            seen += ids(
                page_of(http, "/v1/batches/list", {"limit": 1000, "offset": offset}, "prod")["results"]
            )
            offset += 1000
        assert seen == newest_first(world.batches("prod"))
        deeper = post(http, "/v1/batches/list", {"limit": 1000, "offset": 10_001}, "prod")
        assert deeper.status_code == 422
        assert deeper.json()["detail"][0]["loc"] == ["body", "offset"]


# HTTP: buckets


def test_buckets_list(world: World, client: httpx.Client) -> None:
    ns = world.namespace("prod")
    assert ns is not None
    failed = world.create_batch("prod", bucket_id=ns.bucket_ids[2], objects=30)
    world.set_batch_status(failed, "FAILED", failed_objects=4)
    page = page_of(client, "/v1/buckets/list", {}, "prod")
    assert [b["bucket_id"] for b in page["results"]] == list(ns.bucket_ids)
    assert page["total_count"] == 3
    assert page["pagination"]["page_size"] == 10
    videos = page["results"][2]
    assert (videos["bucket_name"], videos["object_count"], videos["failed_object_count"]) == (
        "support-videos",
        30,
        4,
    )
    assert videos["batch_stats"] == {"total": 1, "active": 0, "completed": 0, "failed": 1}
    assert page["stats"]["total_objects"] == 30
    paged = page_of(client, "/v1/buckets/list", {"limit": 1, "offset": 1}, "prod")
    assert [b["bucket_name"] for b in paged["results"]] == ["product-images"]
    query_paged = client.post(
        "/v1/buckets/list", params={"limit": 2}, json={}, headers={"X-Namespace": "prod"}
    )
    assert len(query_paged.json()["results"]) == 2
    searched = page_of(client, "/v1/buckets/list", {"search": "VIDEO"}, "prod")
    assert [b["bucket_name"] for b in searched["results"]] == ["support-videos"]
    filtered = page_of(client, "/v1/buckets/list", {"filters": {"bucket_name": "media-uploads"}}, "prod")
    assert [b["bucket_id"] for b in filtered["results"]] == [ns.bucket_ids[0]]
    by_name = page_of(
        client, "/v1/buckets/list", {"sort": {"field": "bucket_name", "direction": "desc"}}, "prod"
    )
    assert by_name["results"][0]["bucket_name"] == "support-videos"
    assert post(client, "/v1/buckets/list", {}).status_code == 400
    assert post(client, "/v1/buckets/list", {}, "staging").status_code == 404
    refused = post(client, "/v1/buckets/list", {"status": "ACTIVE"}, "prod")
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["type"] == "extra_forbidden"
    assert post(client, "/v1/buckets/list", {"limit": 1001}, "prod").status_code == 422


# Demo


def test_demo_namespaces_have_batches_some_failing() -> None:
    demo = start_demo(seed=1)
    try:
        with connect(demo.url) as http:
            counts = {
                name: len(walk(http, namespace=name)) for name in ("demo-prod", "demo-staging", "demo-dev")
            }
        assert counts["demo-prod"] > counts["demo-dev"] > 0
        statuses = Counter(batch.status for batch in demo.world.batches())
        assert statuses["COMPLETED"] > 0
        assert sum(demo.world.batch_failures.values()) > 0
    finally:
        demo.stop()
