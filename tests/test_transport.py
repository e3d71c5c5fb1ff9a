"""Hostile upstreams at the transport level (issue 13): bodies too big or endless, gzip bombs, servers that
trickle, error bodies that blow up decoders, odd timestamps, impossible counts. Each test failed before.

Real HTTP over loopback (tests/hostile.py) where the transport matters; httpx.MockTransport for the
narrow cases.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from hostile import HostileServer, RewriteJson, chunked_page, gzip_page, head, trickle
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.typing import EventDict
from support import Exporter, Sleeps

from exporter.api import (
    BATCHES_LIST,
    MAX_COUNT,
    NEWEST_FIRST,
    TASKS_LIST,
    ApiHTTPError,
    ApiTimeout,
    InvalidResponse,
    MixpeekClient,
    RetryPolicy,
    Task,
    _BatchPayload,
    _to_batch,
    parse_timestamp,
)
from exporter.cli import Target, _api_client, _http_client
from exporter.config import load_settings
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

KEY = "sk_live_transport_k3y"
MiB = 1024 * 1024
CAP = MiB
# Far above what any test here should take: on the code before the fix these would otherwise hang.
GUARD_S = 20.0


@asynccontextmanager
async def client_at(url: str, **options: Any) -> AsyncIterator[MixpeekClient]:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        yield MixpeekClient(http, lambda: SecretStr(KEY), retry=RetryPolicy(attempts=1), **options)


async def newest(client: MixpeekClient, namespace: str) -> int:
    """One one-task listing: how many tasks it returned."""
    return len(await client.first_tasks(namespace, NEWEST_FIRST))


async def probe(client: MixpeekClient) -> int:
    return await asyncio.wait_for(newest(client, "prod"), GUARD_S)


# 1. Response size


async def test_a_huge_chunked_body_is_cut_at_the_cap_and_not_read_further() -> None:
    async with (
        HostileServer(chunked_page(64 * MiB)) as server,
        client_at(server.url, max_response_bytes=CAP) as c,
    ):
        with pytest.raises(InvalidResponse) as caught:
            await probe(c)
        sent = server.sent
    assert caught.value.reason == "invalid_response"
    assert "MIXPEEK_MAX_RESPONSE_BYTES" in str(caught.value)
    # What the kernel's loopback buffers hold at most, not the 64 MiB on offer: the client hung up.
    assert sent < 16 * MiB
    assert c.requests == {(TASKS_LIST, "200"): 1}


async def test_a_gzip_bomb_is_cut_at_the_cap_after_decompression() -> None:
    async with (
        HostileServer(gzip_page(256 * MiB)) as server,
        client_at(server.url, max_response_bytes=CAP) as c,
    ):
        with pytest.raises(InvalidResponse) as caught:
            await probe(c)
    assert caught.value.reason == "invalid_response"
    assert "MIXPEEK_MAX_RESPONSE_BYTES" in str(caught.value)


async def test_a_compressed_page_within_the_cap_is_read_whole() -> None:
    async with (
        HostileServer(gzip_page(CAP // 2)) as server,
        client_at(server.url, max_response_bytes=CAP) as c,
    ):
        assert await probe(c) == 0


async def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    async def reply(send: Callable[[bytes], Any]) -> None:
        await send(head(Content_Length=64 * MiB))  # and then nothing: the client must not wait for it

    async with HostileServer(reply) as server, client_at(server.url, max_response_bytes=CAP) as c:
        with pytest.raises(InvalidResponse):
            await probe(c)


async def test_a_page_over_the_cap_from_memory_is_refused() -> None:
    body = b'{"results": []}' + b" " * CAP
    with pytest.raises(InvalidResponse):
        await newest(answering(200, body, max_response_bytes=CAP), "prod")


async def test_an_unsupported_content_encoding_is_an_invalid_response() -> None:
    async def reply(send: Callable[[bytes], Any]) -> None:
        await send(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )

    async with HostileServer(reply) as server, client_at(server.url) as c:
        with pytest.raises(InvalidResponse) as caught:
            await probe(c)
    assert "Content-Encoding" in str(caught.value)


async def test_an_error_whose_body_does_not_decode_is_still_the_http_error() -> None:
    async def reply(send: Callable[[bytes], Any]) -> None:
        await send(head(503, Content_Encoding="gzip", Content_Length=9) + b"not gzip!")

    async with HostileServer(reply) as server, client_at(server.url) as c:
        with pytest.raises(ApiHTTPError) as caught:
            await probe(c)
    assert caught.value.reason == "http_5xx"
    assert c.requests == {(TASKS_LIST, "503"): 1}


def test_the_client_offers_only_the_encodings_it_inflates() -> None:
    settings = load_settings(api_key="k")
    assert _http_client(settings, "http://api.test").headers["Accept-Encoding"] == "gzip, deflate"


# 2. Whole-request deadline


async def test_a_trickling_server_times_out_at_the_request_deadline() -> None:
    """Each byte comes well within the read timeout; the request as a whole never ends."""
    async with HostileServer(trickle(0.05)) as server:
        settings = load_settings(api_key=KEY, api_url=server.url, request_timeout=0.5, max_retries=0)
        async with _http_client(settings, server.url) as http:
            client = _api_client(settings, http, Target(server.url, lambda: SecretStr(KEY), demo=False))
            started = asyncio.get_running_loop().time()
            with pytest.raises(ApiTimeout) as caught:
                await probe(client)
            took = asyncio.get_running_loop().time() - started
    assert caught.value.reason == "timeout"
    assert 0.5 <= took < 2.0
    assert client.requests == {(TASKS_LIST, "error"): 1}


async def test_a_request_past_its_deadline_is_retried_like_any_timeout() -> None:
    hang = asyncio.Event()  # never set: the first answer never comes
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hang.wait()
        return httpx.Response(200, json={"results": []})

    sleeps = Sleeps()
    async with httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(handler)) as http:
        client = MixpeekClient(http, lambda: SecretStr(KEY), deadline=0.05, sleep=sleeps)
        assert await asyncio.wait_for(newest(client, "prod"), GUARD_S) == 0
    assert calls == 2
    assert len(sleeps.waits) == 1
    assert client.requests == {(TASKS_LIST, "error"): 1, (TASKS_LIST, "200"): 1}


# 3. Error bodies that blow up decoders

DEEP = b"[" * 100_000 + b"]" * 100_000


def answering(status: int, body: bytes, **options: Any) -> MixpeekClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    http = httpx.AsyncClient(base_url="http://api.test", transport=transport)
    return MixpeekClient(http, lambda: SecretStr(KEY), retry=RetryPolicy(attempts=1), **options)


@pytest.mark.parametrize("status", [500, 422])
async def test_a_deeply_nested_error_body_is_an_http_error_with_a_fixed_message(status: int) -> None:
    with pytest.raises(ApiHTTPError) as caught:
        await newest(answering(status, DEEP), "prod")
    assert caught.value.status_code == status
    assert str(caught.value) == f"HTTP {status}: unexpected error body"


async def test_a_deeply_nested_error_body_on_namespace_discovery_is_an_http_error() -> None:
    with pytest.raises(ApiHTTPError) as caught:
        await answering(500, b'{"error": {"message": ' + DEEP + b"}}").list_namespaces()
    assert caught.value.reason == "http_5xx"


async def test_deep_nesting_inside_a_page_is_an_invalid_response() -> None:
    page = b'{"results": [{"task_id": "a", "task_type": "t", "status": "PENDING", "additional_data": '
    page += b'{"namespace_id": ' + DEEP + b"}}]}"
    with pytest.raises(InvalidResponse):
        await newest(answering(200, page), "prod")


@pytest.mark.parametrize(
    "body",
    [
        b'{"detail": [{"msg": ' + b"[" * 900 + b"]" * 900 + b"}]}",
        b'{"error": {"message": "' + b"x" * 100_000 + b'"}}',
        b"x" * (1024 * 1024),
    ],
    ids=["nested-msg", "long-message", "long-body"],
)
async def test_an_odd_error_body_gives_a_short_message(body: bytes) -> None:
    with pytest.raises(ApiHTTPError) as caught:
        await newest(answering(503, body), "prod")
    assert caught.value.reason == "http_5xx"
    assert len(str(caught.value)) <= 320


# 4. Timestamps

MS = 1_733_000_000_123


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-12-01T00:00:00", 1_733_011_200.0),
        ("2024-12-01T00:00:00Z", 1_733_011_200.0),
        ("2024-12-01T01:00:00+01:00", 1_733_011_200.0),
        (1_733_000_000, 1_733_000_000.0),
        (1_733_000_000.5, 1_733_000_000.5),
        (MS, MS / 1000),
        (float(MS), MS / 1000),
        ("1733000000", 1_733_000_000.0),
        (f"{MS}", MS / 1000),
        (" 1733000000.25 ", 1_733_000_000.25),
        (0, 0.0),
    ],
)
def test_plausible_timestamps(value: Any, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        math.nan,
        math.inf,
        -math.inf,
        -1,
        10**400,
        1e300,
        "nan",
        "inf",
        "1e5",
        "-5",
        "0000-01-01T00:00:00",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "yesterday",
        "",
        {"seconds": 5},
        [1_733_000_000],
    ],
)
def test_implausible_timestamps_are_absent(value: Any) -> None:
    assert parse_timestamp(value) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    JSON_VALUES
    | st.datetimes().map(lambda d: d.isoformat())
    | st.from_regex(r"[0-9+\-:.TZ ]{0,40}", fullmatch=True)
)
def test_parse_timestamp_never_raises_and_gives_none_or_a_finite_float(value: Any) -> None:
    parsed = parse_timestamp(value)
    assert parsed is None or (isinstance(parsed, float) and math.isfinite(parsed))


def test_an_odd_timestamp_never_rejects_a_page() -> None:
    page = {
        "results": [
            {"task_id": "a", "task_type": "t", "status": "PENDING", "created_at": {"$date": MS}},
            {"task_id": "b", "task_type": "t", "status": "COMPLETED", "created_at": MS, "updated_at": [1]},
        ]
    }
    decoded = msgspec.json.decode(msgspec.json.encode(page["results"]), type=list[Task])
    assert [t.created_at for t in decoded] == [None, pytest.approx(MS / 1000)]
    assert decoded[1].finished_at is None


# 5. Counters never go down


def batch(**fields: Any) -> _BatchPayload:
    payload = {"batch_id": "b1", "bucket_id": "bkt", "status": "COMPLETED_WITH_ERRORS", **fields}
    return msgspec.json.decode(msgspec.json.encode(payload), type=_BatchPayload)


@pytest.mark.parametrize(
    ("fields", "invalid", "objects", "failed"),
    [
        ({"failed_object_count": -5, "progress": {"total": 10}}, ["failed_object_count"], 10, 0),
        ({"failed_object_count": 11, "progress": {"total": 10}}, ["failed_object_count"], 10, 0),
        ({"failed_object_count": MAX_COUNT + 1}, ["failed_object_count"], None, 0),
        ({"failed_object_count": 2.5, "object_ids": ["o1", "o2", "o3"]}, ["failed_object_count"], 3, 0),
        ({"failed_object_count": "3", "progress": {"total": 10}}, ["failed_object_count"], 10, 0),
        (
            {"progress": {"total": -10, "objects_failed": 2}, "object_ids": ["o1", "o2"]},
            ["progress.total"],
            2,
            2,
        ),
        (
            {"failed_object_count": -1, "progress": {"total": 10, "objects_failed": 4}},
            ["failed_object_count"],
            10,
            4,
        ),
        ({"failed_object_count": 3.0, "progress": {"total": 1e10}}, ["progress.total"], None, 3),
        ({"failed_object_count": 0, "progress": {"total": 10, "objects_failed": 0}}, [], 10, 0),
    ],
)
def test_impossible_counts_are_reported_and_absent(
    fields: dict[str, Any], invalid: list[str], objects: int | None, failed: int
) -> None:
    reported: list[str] = []
    result = _to_batch(batch(**fields), reported.append)
    assert reported == invalid
    assert (result.objects, result.failed_objects) == (objects, failed)
    assert all(count >= 0 for _, count in result.tallies)


async def test_a_negative_failed_count_never_lowers_the_object_counter(
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: Callable[..., Exporter],
    logs: list[EventDict],
) -> None:
    """End to end over HTTP: the API says -5 objects failed, twice; the counter stays where it was."""
    first = world.create_batch("prod", status="PROCESSING", objects=10)
    second = world.create_batch("prod", status="PROCESSING", objects=10)

    def negative(page: dict[str, Any]) -> None:
        for item in page["results"]:
            if item["status"] == "COMPLETED_WITH_ERRORS":
                item["failed_object_count"] = -5
                if item.get("progress"):
                    item["progress"]["objects_failed"] = -5

    exporter = make_exporter(
        api, namespaces=("prod",), batches=True, transport=RewriteJson(BATCHES_LIST, negative)
    )
    await exporter.poll()
    objects = "mixpeek_batch_objects_total"
    seen: list[float] = [exporter.total(objects, mixpeek_namespace="prod", outcome="failed")]
    for batch_id in (first, second):
        world.set_batch_status(batch_id, "COMPLETED_WITH_ERRORS", failed_objects=2)
        clock.advance(30)
        await exporter.poll()
        seen.append(exporter.total(objects, mixpeek_namespace="prod", outcome="failed"))
    assert seen == [0, 0, 0]
    assert exporter.total(objects, mixpeek_namespace="prod", outcome="processed") == 20
    invalid = exporter.value(
        "mixpeek_exporter_invalid_values_total", endpoint=BATCHES_LIST, field="failed_object_count"
    )
    assert invalid == 3  # each listing that carries one counts it: one batch, then two
    warnings = [e for e in logs if e["event"].startswith("the API sent an impossible value")]
    assert {(e["endpoint"], e["field"]) for e in warnings} == {
        (BATCHES_LIST, "failed_object_count"),
        (BATCHES_LIST, "progress.objects_failed"),
    }
    assert len(warnings) == 2  # once per (endpoint, field), however many listings repeat it
