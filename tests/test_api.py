"""The API client against scripted responses (httpx.MockTransport): the narrow, malformed cases.

Paging through real listings is tested against the simulated API over HTTP in test_poller.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from support import Sleeps

from exporter.api import (
    TASKS_LIST,
    ApiError,
    ApiHTTPError,
    ApiTimeout,
    ApiUnreachable,
    InvalidResponse,
    MixpeekClient,
    Task,
    error_message,
    parse_retry_after,
    parse_timestamp,
)

KEY = "sk_live_do_not_leak_123"


async def list_tasks(client: MixpeekClient, namespace: str | None) -> tuple[dict[str, Task], int]:
    """Every task of a listing by id (the first sighting wins, as in the exporter's state), and its pages."""
    items: dict[str, Task] = {}

    def keep(page: list[Task]) -> int:
        before = len(items)
        for task in page:
            items.setdefault(task.item_id, task)
        return len(items) - before

    return items, await client.walk_tasks(namespace, keep)


NOW = 1_760_000_000.0
Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, page_size: int = 2, sleeps: Sleeps | None = None) -> MixpeekClient:
    http = httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return MixpeekClient(
        http, lambda: SecretStr(KEY), page_size=page_size, clock=lambda: NOW, sleep=sleeps or Sleeps()
    )


def page(results: list[Any], cursor: str | None = None) -> httpx.Response:
    return httpx.Response(200, json={"results": results, "pagination": {"next_cursor": cursor}})


def item(task_id: str, status: str = "PENDING") -> dict[str, Any]:
    return {"task_id": task_id, "task_type": "thumbnail", "status": status}


async def failure(handler: Handler) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await list_tasks(client_for(handler), "prod")
    assert KEY not in str(caught.value)
    return caught.value


async def test_follows_cursor_and_sends_only_declared_keys() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "cursor" not in request.url.params:
            return page([item("a"), item("b")], cursor="c1")
        return page([item("c")])

    client = client_for(handler)
    items, pages = await list_tasks(client, "prod")
    assert sorted(items) == ["a", "b", "c"]
    assert pages == 2
    assert seen[1].url.params["cursor"] == "c1"
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.headers["X-Namespace"] == "prod"
        assert json.loads(request.content) == {"sort": {"field": "created_at", "direction": "desc"}}
    assert client.requests == {(TASKS_LIST, "200"): 2}


async def test_organization_listing_sends_no_namespace_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return page([item("a")])

    await list_tasks(client_for(handler), None)
    assert "X-Namespace" not in seen[0].headers


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>Bad gateway</html>"),
        httpx.Response(200, text='{"results": [{"task_id": "a", '),
        httpx.Response(200, json={"results": {"task_id": "a"}}),
        httpx.Response(200, json={"results": [{"task_type": "thumbnail", "status": "PENDING"}]}),
        httpx.Response(200, json={"results": [item("a"), item("b"), item("c")]}),
    ],
    ids=["html", "truncated", "results-not-list", "no-task-id", "page-over-limit"],
)
async def test_malformed_pages_are_invalid_responses(response: httpx.Response) -> None:
    error = await failure(lambda request: response)
    assert isinstance(error, InvalidResponse)
    assert error.reason == "invalid_response"


async def test_cursor_loop_is_detected() -> None:
    counter = iter(range(100))

    def handler(request: httpx.Request) -> httpx.Response:
        n = next(counter)
        return page([item(f"t{n}a"), item(f"t{n}b")], cursor="same")

    error = await failure(handler)
    assert isinstance(error, InvalidResponse)


async def test_cursor_pages_repeating_the_same_items_are_detected() -> None:
    counter = iter(range(100))
    error = await failure(lambda request: page([item("a"), item("b")], cursor=f"c{next(counter)}"))
    assert isinstance(error, InvalidResponse)


@pytest.mark.parametrize(
    ("status", "body", "reason", "message"),
    [
        (
            401,
            {"success": False, "status": 401, "error": {"message": "Invalid API key"}},
            "unauthorized",
            "Invalid API key",
        ),
        (403, {"detail": {"error": {"message": "forbidden here"}}}, "unauthorized", "forbidden here"),
        (404, {"error": {"message": "Namespace 'x' not found"}}, "not_found", "Namespace 'x' not found"),
        (
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "bogus"],
                        "msg": "Extra inputs are not permitted",
                        "type": "extra_forbidden",
                    }
                ]
            },
            "http_4xx",
            "Extra inputs are not permitted",
        ),
        (429, {"error": {"message": "slow down"}}, "rate_limited", "slow down"),
        (503, "<html>unavailable</html>", "http_5xx", "unexpected error body"),
        (302, "", "unexpected_status", "unexpected error body"),
    ],
)
async def test_http_errors_carry_bounded_reason_and_message(
    status: int, body: Any, reason: str, message: str
) -> None:
    content = json.dumps(body) if not isinstance(body, str) else body
    error = await failure(lambda request: httpx.Response(status, text=content))
    assert isinstance(error, ApiHTTPError)
    assert error.reason == reason
    assert message in str(error)
    assert str(status) in str(error)


async def test_transport_failures() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    assert isinstance(await failure(timeout), ApiTimeout)
    error = await failure(refused)
    assert isinstance(error, ApiUnreachable)
    assert error.reason == "connection_error"


def test_timestamps() -> None:
    assert parse_timestamp("1970-01-01T00:01:40") == 100.0
    assert parse_timestamp("1970-01-01T00:01:40Z") == 100.0
    assert parse_timestamp("1970-01-01T01:01:40+01:00") == 100.0
    assert parse_timestamp(1234.5) == 1234.5
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None


def test_error_message_of_unknown_shapes() -> None:
    assert error_message(None) == "unexpected error body"
    assert error_message({"detail": "plain"}) == "plain"


def scripted(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with `responses` in turn (the last one repeats), recording the requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    return handler, seen


def rate_limited(
    headers: dict[str, str] | None = None, details: dict[str, Any] | None = None
) -> httpx.Response:
    body = {
        "success": False,
        "status": 429,
        "error": {"message": "Too many requests", "details": details or {}},
    }
    return httpx.Response(429, json=body, headers=headers)


async def test_5xx_is_retried_with_growing_jittered_backoff() -> None:
    handler, seen = scripted(httpx.Response(503), httpx.Response(502), page([item("a")]))
    sleeps = Sleeps()
    items, _ = await list_tasks(client_for(handler, sleeps=sleeps), "prod")
    assert list(items) == ["a"]
    assert len(seen) == 3
    assert 1 <= sleeps.waits[0] <= 2
    assert 2 <= sleeps.waits[1] <= 3


@pytest.mark.parametrize(
    ("response", "wait"),
    [
        (rate_limited({"Retry-After": "7"}), 7.0),
        (rate_limited({"Retry-After": "600"}), 30.0),
        (rate_limited({"Retry-After": "Thu, 09 Oct 2025 08:53:32 GMT"}), 12.0),
        (rate_limited(details={"retry_after_seconds": 4}), 4.0),
        (rate_limited(details={"retry_after": 3}), 3.0),
        (rate_limited(details={"retry_after_seconds": 10**400}), None),
    ],
    ids=["seconds", "capped", "http-date", "body-hint", "body-hint-legacy", "body-hint-absurd"],
)
async def test_429_honours_the_servers_advice(response: httpx.Response, wait: float | None) -> None:
    handler, _ = scripted(response, page([item("a")]))
    sleeps = Sleeps()
    client = client_for(handler, sleeps=sleeps)
    await list_tasks(client, "prod")
    assert (
        sleeps.waits == [wait] if wait is not None else 1 <= sleeps.waits[0] <= 2
    )  # no usable advice: backoff
    assert client.requests == {(TASKS_LIST, "429"): 1, (TASKS_LIST, "200"): 1}


async def test_429_marked_not_retryable_is_not_retried() -> None:
    handler, seen = scripted(rate_limited(details={"retryable": False}))
    error = await failure(handler)
    assert error.reason == "rate_limited"
    assert len(seen) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_4xx_are_never_retried(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json={"error": {"message": "no"}}))
    await failure(handler)
    assert len(seen) == 1


async def test_retries_are_bounded_and_the_last_error_wins() -> None:
    handler, seen = scripted(httpx.Response(500), rate_limited({"Retry-After": "1"}))
    sleeps = Sleeps()
    client = client_for(handler, sleeps=sleeps)
    with pytest.raises(ApiHTTPError) as caught:
        await list_tasks(client, "prod")
    assert caught.value.reason == "rate_limited"
    assert len(seen) == 4
    assert len(sleeps.waits) == 3
    assert client.requests == {(TASKS_LIST, "500"): 1, (TASKS_LIST, "429"): 3}


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2.5", NOW) == 2.5
    assert parse_retry_after("-3", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("Thu, 09 Oct 2025 08:53:10 GMT", NOW) == 0.0
