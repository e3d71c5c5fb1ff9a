"""The simulated API's switchable faults, each checked over real HTTP on 127.0.0.1 with plain httpx."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from exporter.simulator import DEFAULT_API_KEY, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.testing.faults import (
    UNSEEN_STATUSES,
    UNSEEN_TASK_TYPES,
    CursorBackToStart,
    DuplicateItems,
    GarbledEncoding,
    Hang,
    HtmlPage,
    HttpError,
    Latency,
    OmitItems,
    OversizedPage,
    RateLimited,
    RepeatCursor,
    Requests,
    Reset,
    ResultsNotList,
    TaskWithoutId,
    TruncatedJson,
    http_date,
)

TASKS = "/v1/tasks/list"
NEWEST_FIRST = {"sort": {"field": "created_at", "direction": "desc"}}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    world = World(clock, seed=3)
    world.add_namespace("prod")
    world.add_namespace("staging")
    for i in range(7):
        world.create_task("prod", "thumbnail", status="COMPLETED" if i % 2 else "PROCESSING")
        clock.advance(1)
    world.create_task("staging", "thumbnail")
    return world


@pytest.fixture
def server(world: World) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world) as running:
        yield running


@pytest.fixture
def client(server: SimulatorTestServer) -> Iterator[httpx.Client]:
    with connect(server) as http:
        yield http


def connect(server: SimulatorTestServer, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=timeout, verify=False)


def post(
    client: httpx.Client, namespace: str | None = "prod", path: str = TASKS, **params: Any
) -> httpx.Response:
    headers = {"X-Namespace": namespace} if namespace else {}
    return client.post(path, params=params, json=NEWEST_FIRST, headers=headers)


def walk(client: httpx.Client, namespace: str = "prod", limit: int = 3, max_pages: int = 20) -> list[str]:
    """Every task id of a listing, in order, repeats included, following next_cursor (at most max_pages)."""
    ids: list[str] = []
    cursor = None
    for _ in range(max_pages):
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = post(client, namespace, **params).json()
        ids += [task["task_id"] for task in page["results"]]
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            return ids
    raise AssertionError(f"still paging after {max_pages} pages")


def newest_first(world: World, namespace: str = "prod") -> list[str]:
    return [t.task_id for t in sorted(world.tasks(namespace), key=lambda t: (t.created_at, t.task_id))][::-1]


# Choosing requests


def test_requests_are_numbered_per_rule_path_and_namespace(
    server: SimulatorTestServer, client: httpx.Client
) -> None:
    rule = server.inject(HttpError(503), namespace="prod", requests=Requests.nth(2, 3))
    codes = []
    for namespace in ("prod", "staging", "prod", "staging", "prod", "prod"):
        codes.append((namespace, post(client, namespace).status_code))
    assert client.post("/v1/namespaces/list", json={}).status_code == 200  # another path: not matched
    assert codes == [
        ("prod", 200),
        ("staging", 200),
        ("prod", 503),
        ("staging", 200),
        ("prod", 503),
        ("prod", 200),
    ]
    assert (rule.matched, rule.fired) == (4, 2)
    assert [(f.namespace, f.number) for f in server.faults.fired] == [("prod", 2), ("prod", 3)]


def test_from_the_nth_on_only_n_times_first_rule_wins_and_clear(
    server: SimulatorTestServer, client: httpx.Client
) -> None:
    server.inject(HttpError(500), requests=Requests.starting(2), times=2)
    server.inject(HttpError(502))  # any namespace, every request: fires when the first rule does not
    assert [post(client).status_code for _ in range(5)] == [502, 500, 500, 502, 502]
    server.clear_faults()
    assert post(client).status_code == 200
    any_path = server.inject(HttpError(503), path=None, requests=Requests.every())
    assert client.post("/v1/namespaces/list", json={}).status_code == 503
    assert client.get("/v1/tasks/tsk_none").status_code == 503
    server.faults.remove(any_path)
    assert client.get("/v1/tasks/tsk_none").status_code == 404
    with pytest.raises(ValueError, match="start at 1"):
        Requests.nth(0)
    assert 7 in Requests.starting(3)
    assert 2 not in Requests.starting(3)
    assert 4 in Requests.every()


# Time and sockets: these faults hold real connections for real seconds, so wall time is the only clock.


def test_latency_delays_one_answer_while_others_are_served(server: SimulatorTestServer) -> None:
    latency = Latency(0.4)
    server.inject(latency, namespace="prod")
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        with connect(server) as own:
            started = time.monotonic()
            slow["status"] = post(own, "prod").status_code
            slow["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=slow_request)
    thread.start()
    with connect(server) as other:
        started = time.monotonic()
        assert post(other, "staging").status_code == 200
        fast = time.monotonic() - started
    thread.join()
    assert fast < latency.seconds
    assert slow["status"] == 200
    assert slow["seconds"] >= latency.seconds


def test_hang_holds_the_connection_until_the_client_times_out(server: SimulatorTestServer) -> None:
    hang, patience = Hang(5.0), 0.2
    server.inject(hang, requests=Requests.nth(1))
    with connect(server, timeout=patience) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(impatient)
        assert patience <= time.monotonic() - started < hang.seconds / 5  # the client's timeout, not the hang
        assert post(impatient).status_code == 200  # the next request is answered, on a new connection
    started = time.monotonic()
    server.stop()  # wakes the held handler instead of waiting out the hang
    assert time.monotonic() - started < hang.seconds / 5


def test_reset_closes_the_socket_with_an_rst(server: SimulatorTestServer, client: httpx.Client) -> None:
    server.inject(Reset(), requests=Requests.nth(1))
    with pytest.raises(httpx.ReadError, match="reset"):
        post(client)
    assert post(client).status_code == 200


# Error statuses


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_error_uses_the_api_envelope(
    server: SimulatorTestServer, client: httpx.Client, status: int
) -> None:
    server.inject(HttpError(status, "upstream on fire"))
    response = post(client)
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False
    assert body["status"] == status
    assert body["error"]["message"] == "upstream on fire"
    assert body["error"]["details"] == {}


def test_http_error_can_say_not_retryable(server: SimulatorTestServer, client: httpx.Client) -> None:
    server.inject(HttpError(503, retryable=False, headers={"Retry-After": "4"}))
    response = post(client)
    assert response.headers["Retry-After"] == "4"
    assert response.json()["error"]["details"] == {"retryable": False}


def test_rate_limited_gives_retry_after_in_seconds_or_as_a_date_and_a_body_hint(
    server: SimulatorTestServer, client: httpx.Client, clock: FakeClock
) -> None:
    server.inject(RateLimited(retry_after=7), requests=Requests.nth(1))
    server.inject(RateLimited(retry_after=http_date(clock() + 20)), requests=Requests.nth(2))
    server.inject(RateLimited(retry_after=None, hint_seconds=3.5), requests=Requests.nth(3))
    server.inject(RateLimited(retryable=False), requests=Requests.nth(4))
    first, second, third, fourth = (post(client) for _ in range(4))
    assert {r.status_code for r in (first, second, third, fourth)} == {429}
    assert first.headers["Retry-After"] == "7"
    assert first.json()["error"]["type"] == "TooManyRequestsError"
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert parsedate_to_datetime(second.headers["Retry-After"]).timestamp() == clock() + 20
    assert "Retry-After" not in third.headers
    assert third.json()["error"]["details"] == {"retry_after_seconds": 3.5}
    assert fourth.json()["error"]["details"] == {"retryable": False}
    assert post(client).status_code == 200


# Malformed bodies


def test_html_page_with_status_200(server: SimulatorTestServer, client: httpx.Client) -> None:
    server.inject(HtmlPage())
    server.inject(HtmlPage(502), namespace="staging")  # the first rule wins; this one never fires
    response = post(client)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html"
    assert response.text.startswith("<!DOCTYPE html>")
    server.clear_faults()
    server.inject(HtmlPage(502))
    assert post(client, "staging").status_code == 502


def test_truncated_json_has_a_matching_content_length(
    server: SimulatorTestServer, client: httpx.Client
) -> None:
    full = post(client).content
    server.inject(TruncatedJson())
    response = post(client)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) == len(full) // 2
    assert full.startswith(response.content)
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_garbled_encoding_cannot_be_decoded(server: SimulatorTestServer, client: httpx.Client) -> None:
    server.inject(GarbledEncoding())
    with pytest.raises(httpx.DecodingError):
        post(client)


def test_results_not_a_list(server: SimulatorTestServer, client: httpx.Client, world: World) -> None:
    server.inject(ResultsNotList())
    body = post(client, limit=100).json()
    assert isinstance(body["results"], dict)
    assert set(body["results"]) == {t.task_id for t in world.tasks("prod")}


def test_task_without_id(server: SimulatorTestServer, client: httpx.Client, world: World) -> None:
    server.inject(TaskWithoutId(index=1))
    results = post(client, limit=3).json()["results"]
    assert ["task_id" in task for task in results] == [True, False, True]
    world.add_namespace("empty")
    results = post(client, "empty").json()["results"]
    assert len(results) == 1
    assert "task_id" not in results[0]


def test_oversized_page(server: SimulatorTestServer, client: httpx.Client) -> None:
    server.inject(OversizedPage(extra=2))
    page = post(client, limit=3).json()
    assert len(page["results"]) == 5
    assert page["pagination"]["page_size"] == 3
    assert not any(t["task_id"].startswith("phantom-") for t in page["results"])  # real next tasks
    padded = post(client, "staging", limit=3).json()["results"]  # 1 task: made-up ones fill the page
    assert len(padded) == 5
    assert sum(t["task_id"].startswith("phantom-") for t in padded) == 4


# Paging


def test_duplicate_items_repeat_the_previous_page_and_skip_nothing(
    server: SimulatorTestServer, client: httpx.Client, world: World
) -> None:
    server.inject(DuplicateItems(count=2))
    ids = walk(client, limit=3)
    truth = newest_first(world)
    assert list(dict.fromkeys(ids)) == truth  # every task, in order, once de-duplicated
    repeats = Counter(ids) - Counter(truth)
    assert sum(repeats.values()) > 0
    assert ids[:3] == truth[:3]  # the first page has no previous page
    assert ids[3:5] == truth[1:3]  # page 2 starts with the last 2 items of page 1


def test_omit_items_hides_tasks_and_keeps_the_rest(
    server: SimulatorTestServer, client: httpx.Client, world: World
) -> None:
    truth = newest_first(world)
    server.inject(OmitItems(task_ids=frozenset({truth[1], truth[5]})))
    assert walk(client, limit=3) == [t for t in truth if t not in {truth[1], truth[5]}]
    server.clear_faults()
    server.inject(OmitItems(first=3), requests=Requests.nth(1))  # a whole first page gone
    assert walk(client, limit=3) == truth[3:]


def test_repeat_cursor_serves_the_same_page_forever(
    server: SimulatorTestServer, client: httpx.Client
) -> None:
    server.inject(RepeatCursor())
    first = post(client, limit=3).json()
    cursor = first["pagination"]["next_cursor"]
    assert cursor  # the first page sent no cursor: it is unchanged
    second = post(client, limit=3, cursor=cursor).json()
    third = post(client, limit=3, cursor=second["pagination"]["next_cursor"]).json()
    assert second["pagination"]["next_cursor"] == third["pagination"]["next_cursor"] == cursor
    assert second["results"] == third["results"] != first["results"]


def test_cursor_back_to_start_gives_fresh_cursors_to_the_first_page(
    server: SimulatorTestServer, client: httpx.Client, world: World
) -> None:
    server.inject(CursorBackToStart(), requests=Requests.starting(2))
    first = post(client, limit=3).json()
    cursors = [first["pagination"]["next_cursor"]]
    pages = []
    for _ in range(4):
        page = post(client, limit=3, cursor=cursors[-1]).json()
        pages.append([t["task_id"] for t in page["results"]])
        cursors.append(page["pagination"]["next_cursor"])
    truth = newest_first(world)
    assert pages == [truth[3:6], truth[:3], truth[:3], truth[:3]]
    assert len(set(cursors)) == 5  # never the same cursor twice
    server.clear_faults()
    assert post(client, limit=3, cursor=cursors[-1]).status_code == 422  # an unknown cursor again


def test_cursor_back_to_start_on_an_empty_listing_gives_empty_pages_while_it_fires(
    server: SimulatorTestServer, client: httpx.Client, world: World
) -> None:
    world.add_namespace("empty")
    server.inject(CursorBackToStart(), namespace="empty", times=3)
    cursors, pages = [], 0
    cursor = None
    while True:
        page = post(client, "empty", limit=3, **({"cursor": cursor} if cursor else {})).json()
        assert page["results"] == []
        pages += 1
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            break
        cursors.append(cursor)
    assert pages == 4
    assert len(set(cursors)) == 3


# Enum drift and the ground truth


def test_unknown_enum_values_are_served_as_they_are(
    server: SimulatorTestServer, client: httpx.Client, world: World
) -> None:
    world.add_namespace("drift")
    for status, task_type in zip(UNSEEN_STATUSES, UNSEEN_TASK_TYPES, strict=True):
        world.create_task("drift", task_type, status=status)
    served = {(t["status"], t["task_type"]) for t in post(client, "drift", limit=10).json()["results"]}
    assert served == set(zip(UNSEEN_STATUSES, UNSEEN_TASK_TYPES, strict=True))


def test_faults_leave_the_ground_truth_alone(
    server: SimulatorTestServer, client: httpx.Client, world: World, clock: FakeClock
) -> None:
    before, statuses = world.transitions, world.status_counts()
    for fault in (
        Reset(),
        HttpError(500),
        RateLimited(),
        HtmlPage(),
        TruncatedJson(),
        ResultsNotList(),
        TaskWithoutId(),
        OversizedPage(),
        DuplicateItems(),
        OmitItems(first=1),
        RepeatCursor(),
        CursorBackToStart(),
    ):
        server.inject(fault, times=1)
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError, AssertionError):
            walk(client, limit=2, max_pages=10)
        server.clear_faults()
    assert world.transitions == before
    assert world.status_counts() == statuses
    assert walk(client, limit=2) == newest_first(world)
