"""Fault injection: the real exporter against a simulated API that times out, resets, fails and lies.

Every poll is explicit (`await run.poll()`), retries wait on the recording no-wait sleep of
`make_exporter`, and after every poll `Run` checks that no counter went down. Metric values are asserted
exactly: counters against the World's ground truth since the exporter's baseline poll, gauges against the
World's live tasks.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import API_KEY
from support import Exporter, Series, select

from exporter.api import MAX_BARREN_PAGES, TASKS_LIST
from exporter.simulator import ApiProfile, NamespaceIds, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.testing.faults import (
    UNSEEN_STATUSES,
    UNSEEN_TASK_TYPES,
    CursorBackToStart,
    DuplicateItems,
    Fault,
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

MakeExporter = Callable[..., Exporter]
Key = tuple[str, str]
TRANSITIONS = "mixpeek_task_terminal_transitions_total"
TASKS_GAUGE = "mixpeek_tasks"
POLL_ERRORS = "mixpeek_exporter_poll_errors_total"
API_REQUESTS = "mixpeek_exporter_api_requests_total"
COUNTER_SUFFIXES = ("_total", "_count", "_bucket", "_sum")
TERMINAL = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED")
CLIENT_TIMEOUT = 0.15  # seconds; only the few timeout tests set it, each hang costs this much real time


def sanitised(raw: str) -> str:
    """The label rule of docs/metrics.md (Semantics), written out independently of the exporter's code."""
    return re.sub(r"[^A-Za-z0-9_.:\-]", "_", raw.strip())[:64] or "none"


def nonzero(values: dict[Key, int]) -> dict[Key, int]:
    return {key: n for key, n in values.items() if n}


class Run:
    """One exporter against the simulated API, with the ground truth and the never-decreasing check."""

    def __init__(self, exporter: Exporter, world: World, namespaces: tuple[str, ...]) -> None:
        self.exporter = exporter
        self.world = world
        self.namespaces = namespaces
        self.baselines: dict[str, Counter[tuple[str, str, str]]] = {}
        self._counters: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self._requests: dict[str, int] = {}
        self._scraped: tuple[object, Series] | None = None

    def scrape(self) -> Series:
        """The exposition, parsed once per published snapshot (the poller swaps in a new one per change)."""
        snapshot = self.exporter.poller.snapshot
        if self._scraped is None or self._scraped[0] is not snapshot:
            # The collector's samples, as /metrics renders them; skipping the text round trip (tested in
            # test_server.py) keeps a check after every poll cheap.
            samples = (s for family in self.exporter.registry.collect() for s in family.samples)
            self._scraped = (snapshot, {(s.name, frozenset(s.labels.items())): s.value for s in samples})
        return self._scraped[1]

    async def poll(self) -> None:
        await self.exporter.poll()
        self.check_counters()
        for namespace in self.namespaces:
            if namespace not in self.baselines and self.up(namespace):
                self.baselines[namespace] = self.world.transitions  # the exporter's baseline poll

    def check_counters(self) -> None:
        """No counter sample (counters, histogram buckets, counts, sums) went down or disappeared."""
        now = {key: value for key, value in self.scrape().items() if key[0].endswith(COUNTER_SUFFIXES)}
        for key, value in self._counters.items():
            assert key in now, f"counter {key} disappeared"
            assert now[key] >= value, f"counter {key} went down: {value} -> {now[key]}"
        self._counters = now

    # What the exporter shows

    def up(self, namespace: str) -> bool:
        found = select(self.scrape(), "mixpeek_up", mixpeek_namespace=namespace)
        return bool(found) and next(iter(found.values())) == 1

    def counted(self, namespace: str) -> dict[Key, int]:
        found = select(self.scrape(), TRANSITIONS, mixpeek_namespace=namespace)
        return nonzero({(dict(k)["status"], dict(k)["task_type"]): int(v) for k, v in found.items()})

    def gauges(self, namespace: str) -> dict[Key, int]:
        found = select(self.scrape(), TASKS_GAUGE, mixpeek_namespace=namespace)
        return nonzero({(dict(k)["status"], dict(k)["task_type"]): int(v) for k, v in found.items()})

    def errors(self, namespace: str) -> dict[str, int]:
        found = select(self.scrape(), POLL_ERRORS, mixpeek_namespace=namespace)
        return {dict(k)["reason"]: int(v) for k, v in found.items() if v}  # every reason is served from 0

    def requests(self) -> dict[str, int]:
        """Task-listing requests by code since the last call."""
        found = select(self.scrape(), API_REQUESTS, endpoint=TASKS_LIST)
        now = {dict(k)["code"]: int(v) for k, v in found.items()}
        delta = {code: n - self._requests.get(code, 0) for code, n in now.items()}
        self._requests = dict(now)
        return {code: n for code, n in delta.items() if n}

    def scalar(self, name: str, namespace: str) -> float:
        return self.scrape()[(name, frozenset({("mixpeek_namespace", namespace)}))]

    # The truth

    def truth(self, namespace: str) -> dict[Key, int]:
        """Tasks of `namespace` that truly entered each terminal status since the exporter's baseline poll."""
        ns = self.world.namespace(namespace)
        assert ns is not None
        base = self.baselines.get(namespace, self.world.transitions)
        since = self.world.transitions - base
        result: Counter[Key] = Counter()
        for (ns_id, status, task_type), n in since.items():
            if ns_id == ns.namespace_id:
                result[(sanitised(status), sanitised(task_type))] += n
        return dict(result)

    def live(self, namespace: str, hidden: frozenset[str] = frozenset()) -> dict[Key, int]:
        """The World's live tasks by status and type (less `hidden`: tasks the server left out)."""
        tasks = [t for t in self.world.tasks(namespace) if t.task_id not in hidden]
        return dict(Counter((sanitised(t.status), sanitised(t.task_type)) for t in tasks))


def start(
    make_exporter: MakeExporter, server: SimulatorTestServer, world: World, *namespaces: str, **options: Any
) -> Run:
    """An exporter for `namespaces`; its transport skips loading CA certificates (plain HTTP on loopback)."""
    transport = httpx.AsyncHTTPTransport(verify=False)
    exporter = make_exporter(server, namespaces=namespaces, transport=transport, **options)
    return Run(exporter, world, namespaces)


@pytest.fixture
def seeded(world: World, clock: FakeClock) -> dict[str, list[str]]:
    """6 PROCESSING tasks in prod, 1 in staging, created 1 s apart. Newest first in pages of 2, prod's
    page 1 holds ids 5 and 4, page 2 ids 3 and 2, page 3 ids 1 and 0."""
    ids: dict[str, list[str]] = {"prod": [], "staging": []}
    for i in range(7):
        namespace = "prod" if i < 6 else "staging"
        ids[namespace].append(world.create_task(namespace, "thumbnail", status="PROCESSING"))
        clock.advance(1)
    return ids


@pytest.fixture
async def run(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, seeded: dict[str, list[str]]
) -> Run:
    """An exporter for prod and staging, page size 2, after its baseline poll (prod: 3 pages, staging 1)."""
    started = start(make_exporter, api, world, "prod", "staging", page_size=2)
    await started.poll()
    assert started.up("prod")
    assert started.up("staging")
    assert started.requests() == {"200": 4}
    return started


async def assert_consistent(run: Run, *namespaces: str) -> None:
    """After a successful poll: counters equal the truth, gauges the World's live tasks."""
    for namespace in namespaces:
        assert run.up(namespace)
        assert run.counted(namespace) == run.truth(namespace)
        assert run.gauges(namespace) == run.live(namespace)


# Retries that succeed within one poll


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (HttpError(500), "500"),
        (HttpError(502), "502"),
        (HttpError(503), "503"),
        (HttpError(504), "504"),
        (HtmlPage(502), "502"),  # a proxy's HTML 502: no JSON envelope, still a 5xx
        (RateLimited(retry_after=2), "429"),
        (Reset(), "error"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
async def test_three_failed_attempts_then_success_leave_the_poll_successful(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]], fault: Fault, code: str
) -> None:
    world.set_status(seeded["prod"][2], "FAILED")  # on page 2 of the newest-first listing
    api.inject(fault, namespace="prod", requests=Requests.nth(2, 3, 4))  # page 2, attempts 1 to 3
    await run.poll()
    assert run.requests() == {"200": 4, code: 3}  # prod: 3 pages, one of them on its 4th attempt
    assert len(run.exporter.sleeps.waits) == 3
    assert run.errors("prod") == {}
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}


async def test_a_timeout_then_success_leaves_the_poll_successful(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    run.exporter.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    world.set_status(seeded["prod"][0], "CANCELED")
    api.inject(Hang(2.0), namespace="prod", requests=Requests.nth(1))
    await run.poll()
    assert run.requests() == {"200": 4, "error": 1}
    assert run.errors("prod") == {}
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("CANCELED", "thumbnail"): 1}


# Retries exhausted: the poll fails part-way and changes nothing


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (HttpError(500), "500", "http_5xx"),
        (HttpError(503), "503", "http_5xx"),
        (HtmlPage(502), "502", "http_5xx"),
        (RateLimited(retry_after=5), "429", "rate_limited"),
        (Reset(), "error", "connection_error"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
async def test_exhausted_retries_fail_the_poll_and_change_no_task_state(
    run: Run,
    api: SimulatorTestServer,
    world: World,
    clock: FakeClock,
    seeded: dict[str, list[str]],
    fault: Fault,
    code: str,
    reason: str,
) -> None:
    gauges, tracked = run.gauges("prod"), run.scalar("mixpeek_exporter_tracked_tasks", "prod")
    last_success = run.scalar("mixpeek_exporter_last_success_timestamp_seconds", "prod")
    world.set_status(seeded["prod"][5], "FAILED")  # page 1: read, then thrown away with the poll
    world.set_status(seeded["prod"][3], "COMPLETED")  # page 2: never read
    rule = api.inject(fault, namespace="prod", requests=Requests.starting(2))
    clock.advance(30)
    await run.poll()
    assert run.requests() == {"200": 2, code: 4}  # prod page 1, staging; then page 2 four times
    assert rule.fired == 4
    assert not run.up("prod")
    assert run.up("staging")
    assert run.errors("prod") == {reason: 1}
    assert run.errors("staging") == {}
    assert run.gauges("prod") == gauges  # the last good listing, though page 1 had news
    assert run.counted("prod") == {}
    assert run.scalar("mixpeek_exporter_tracked_tasks", "prod") == tracked
    assert run.scalar("mixpeek_exporter_last_success_timestamp_seconds", "prod") == last_success
    api.clear_faults()
    clock.advance(30)
    await run.poll()  # recovery: both transitions counted once, at the next complete poll
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1, ("COMPLETED", "thumbnail"): 1}
    assert run.errors("prod") == {reason: 1}
    assert run.scalar("mixpeek_exporter_last_success_timestamp_seconds", "prod") == clock()
    await run.poll()
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1, ("COMPLETED", "thumbnail"): 1}


async def test_timeouts_exhaust_the_retries(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    """Four real client timeouts (4 x 0.15 s): the poll fails with reason timeout, then recovers."""
    run.exporter.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    gauges = run.gauges("prod")
    world.set_status(seeded["prod"][5], "FAILED")
    api.inject(Hang(2.0), namespace="prod", requests=Requests.nth(1, 2, 3, 4))
    await run.poll()
    assert run.requests() == {"200": 1, "error": 4}
    assert run.errors("prod") == {"timeout": 1}
    assert not run.up("prod")
    assert run.gauges("prod") == gauges
    assert run.counted("prod") == {}
    await run.poll()
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}


async def test_backoff_without_advice_grows_exponentially_with_jitter(
    run: Run, api: SimulatorTestServer
) -> None:
    api.inject(HttpError(500), namespace="prod")
    await run.poll()
    low_high = [(1, 2), (2, 3), (4, 5)]  # initial 1 s doubling, plus up to 1 s of jitter
    waits = run.exporter.sleeps.waits
    assert len(waits) == 3
    assert all(lo <= w <= hi for w, (lo, hi) in zip(waits, low_high, strict=True))
    assert run.errors("prod") == {"http_5xx": 1}


# 429 and Retry-After


@pytest.mark.parametrize(
    ("advice", "wait"),
    [
        (lambda now: RateLimited(retry_after=7), 7.0),
        (lambda now: RateLimited(retry_after=http_date(now + 12)), 12.0),
        (lambda now: RateLimited(retry_after=None, hint_seconds=3.5), 3.5),
        (lambda now: RateLimited(retry_after=None, hint_seconds=2, hint_key="retry_after"), 2.0),
        (lambda now: RateLimited(retry_after=120), 30.0),  # capped at 30 s
        (lambda now: RateLimited(retry_after=9, hint_seconds=1), 9.0),  # the header wins over the body
        (lambda now: HttpError(503, headers={"Retry-After": "6"}), 6.0),
    ],
    ids=["seconds", "http-date", "body-hint", "body-retry_after", "capped", "header-first", "503"],
)
async def test_a_429_storm_waits_as_advised_exhausts_the_retries_and_recovers(
    run: Run,
    api: SimulatorTestServer,
    world: World,
    clock: FakeClock,
    seeded: dict[str, list[str]],
    advice: Callable[[float], Fault],
    wait: float,
) -> None:
    world.set_status(seeded["prod"][1], "COMPLETED_WITH_ERRORS")
    fault = advice(clock())  # the client reads an HTTP date against its clock: the same FakeClock
    api.inject(fault, namespace="prod")
    await run.poll()
    assert run.exporter.sleeps.waits == [wait] * 3
    status = "429" if isinstance(fault, RateLimited) else "503"
    assert run.requests() == {"200": 1, status: 4}
    reason = "rate_limited" if isinstance(fault, RateLimited) else "http_5xx"
    assert run.errors("prod") == {reason: 1}
    assert not run.up("prod")
    assert run.counted("prod") == {}
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("COMPLETED_WITH_ERRORS", "thumbnail"): 1}


# Not retried: retryable false and other 4xx


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (RateLimited(retry_after=1, retryable=False), "429", "rate_limited"),
        (HttpError(503, retryable=False), "503", "http_5xx"),
        (HttpError(400), "400", "http_4xx"),
        (HttpError(401), "401", "unauthorized"),
        (HttpError(403), "403", "unauthorized"),
        (HttpError(404), "404", "not_found"),
        (HttpError(422), "422", "http_4xx"),
    ],
    ids=["429-not-retryable", "503-not-retryable", "400", "401", "403", "404", "422"],
)
async def test_errors_that_must_not_be_retried_fail_the_poll_at_once(
    run: Run, api: SimulatorTestServer, fault: Fault, code: str, reason: str
) -> None:
    gauges = run.gauges("prod")
    api.inject(fault, namespace="prod", requests=Requests.nth(2))  # page 2
    await run.poll()
    assert run.exporter.sleeps.waits == []
    assert run.requests() == {"200": 2, code: 1}
    assert run.errors("prod") == {reason: 1}
    assert not run.up("prod")
    assert run.up("staging")
    assert run.gauges("prod") == gauges


# Invalid responses with status 200


@pytest.mark.parametrize(
    ("fault", "requests"),
    [
        (HtmlPage(), 2),
        (TruncatedJson(), 2),
        (ResultsNotList(), 2),
        (TaskWithoutId(index=1), 2),
        (OversizedPage(extra=1), 2),
        (RepeatCursor(), 2),  # page 2 names its own cursor as the next one
        (CursorBackToStart(), 3),  # page 2 points to a fresh cursor: page 1 again, every task already read
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v),
)
async def test_an_invalid_page_abandons_the_poll_part_way(
    run: Run,
    api: SimulatorTestServer,
    world: World,
    clock: FakeClock,
    seeded: dict[str, list[str]],
    fault: Fault,
    requests: int,
) -> None:
    gauges = run.gauges("prod")
    world.set_status(seeded["prod"][5], "FAILED")  # page 1, read before the bad page
    world.set_status(seeded["prod"][0], "FAILED")  # page 3, never reached
    api.inject(fault, namespace="prod", requests=Requests.nth(2))
    clock.advance(30)
    await run.poll()
    assert run.requests() == {"200": requests + 1}  # + staging; no retry: a bad body is not transient
    assert run.exporter.sleeps.waits == []
    assert run.errors("prod") == {"invalid_response": 1}
    assert not run.up("prod")
    assert run.gauges("prod") == gauges
    assert run.counted("prod") == {}
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 2}


async def test_an_undecodable_body_fails_the_poll_instead_of_crashing_it(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    """Regression: httpx.DecodingError is neither a timeout nor a transport error, and used to escape
    poll_once (in `run()` it would have ended that namespace's polling loop for good)."""
    gauges = run.gauges("prod")
    world.set_status(seeded["prod"][0], "FAILED")
    api.inject(GarbledEncoding(), namespace="prod", requests=Requests.nth(2))
    await run.poll()
    assert run.requests() == {"200": 2, "error": 1}  # no decoded response: counted as "error", not retried
    assert run.errors("prod") == {"invalid_response": 1}
    assert not run.up("prod")
    assert run.up("staging")
    assert run.counted("prod") == {}
    assert run.gauges("prod") == gauges
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}


async def test_empty_pages_with_ever_new_cursors_end_the_poll(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    """Regression: an empty page passed both loop checks (its cursor was new, and it repeated no task), so
    a server answering empty pages with ever-new cursors was followed forever."""
    world.add_namespace("empty")
    run = start(make_exporter, api, world, "empty")
    # The server lies 60 times, then stops: without that bound a looping client would never end the test.
    rule = api.inject(CursorBackToStart(), namespace="empty", times=60)
    await run.poll()
    # A barren page or two can be honest (items hidden from this key); three in a row is a loop.
    assert rule.fired == MAX_BARREN_PAGES, f"followed {rule.fired} empty pages, each with a new cursor"
    assert run.requests() == {"200": MAX_BARREN_PAGES}
    assert run.errors("empty") == {"invalid_response": 1}
    assert not run.up("empty")


# Paging that lies: duplicated and missing items


async def test_items_duplicated_across_pages_count_once(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, clock: FakeClock
) -> None:
    ids = []
    for _ in range(9):
        ids.append(world.create_task("prod", "api_buckets_batches_process", status="PROCESSING"))
        clock.advance(1)
    run = start(make_exporter, api, world, "prod", page_size=3)
    api.inject(DuplicateItems(count=2))  # every page after the first repeats 2 tasks of the previous one
    await run.poll()
    for task_id in ids[::2]:
        world.set_status(task_id, "FAILED")
    world.set_status(ids[1], "COMPLETED")
    await run.poll()
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {
        ("FAILED", "api_buckets_batches_process"): 5,
        ("COMPLETED", "api_buckets_batches_process"): 1,
    }
    assert run.scalar("mixpeek_exporter_tracked_tasks", "prod") == 9
    # A page of 3 new tasks, then pages of 2 repeated + 1 new: 7 pages a poll, and the rule hit each.
    assert run.requests() == {"200": 14}
    assert len(api.faults.fired) == 14


async def test_a_page_with_missing_items_neither_double_counts_nor_goes_negative(
    run: Run, api: SimulatorTestServer, world: World, clock: FakeClock, seeded: dict[str, list[str]]
) -> None:
    """The server leaves tasks out of one listing. The exporter cannot tell a lie from an expiry: for that
    poll the missing tasks look vanished (gauges lack them, a non-terminal one is forgotten). What it can
    promise: a finished task that reappears is not counted again, a task that finished while hidden is
    counted once, when next seen, and no counter moves backwards."""
    a, b, c = seeded["prod"][0], seeded["prod"][2], seeded["prod"][4]
    world.set_status(a, "FAILED")
    await run.poll()
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
    world.set_status(b, "FAILED")  # finishes while the server hides it
    hidden = frozenset({a, b, c})
    api.inject(OmitItems(task_ids=hidden), namespace="prod")
    await run.poll()
    assert run.up("prod")
    assert run.gauges("prod") == run.live("prod", hidden=hidden)  # what the listing said
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}  # b is not visible yet: not counted yet
    assert run.scalar("mixpeek_exporter_tracked_tasks", "prod") == 3
    api.clear_faults()
    world.set_status(c, "COMPLETED")
    await run.poll()  # a comes back (finished before: not counted again); b and c seen terminal: once each
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 2, ("COMPLETED", "thumbnail"): 1}
    api.inject(OmitItems(first=2), namespace="prod", requests=Requests.nth(1))  # newest two, once more
    await run.poll()
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 2, ("COMPLETED", "thumbnail"): 1}


# Statuses going back, tasks vanishing, enumerations drifting


async def test_status_regressions_never_uncount_nor_double_count(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    task = seeded["prod"][3]
    world.set_status(task, "FAILED")
    await run.poll()
    world.set_status(task, "PROCESSING")  # the API says it runs again
    await run.poll()
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
    assert run.gauges("prod")[("PROCESSING", "thumbnail")] == 6
    world.set_status(task, "COMPLETED")  # terminal again, under another status: still one transition
    api.inject(HttpError(503), namespace="prod")  # ... seen only after an outage
    await run.poll()
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod")  # the World counts a task's first terminal status only
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
    assert run.gauges("prod")[("COMPLETED", "thumbnail")] == 1


async def test_a_finished_task_that_vanishes_is_never_counted_again(
    run: Run, world: World, seeded: dict[str, list[str]]
) -> None:
    done, running = seeded["prod"][0], seeded["prod"][1]
    world.set_status(done, "FAILED")
    await run.poll()
    world.remove_task(done)  # expired
    world.remove_task(running)  # expired while running: forgotten, never counted
    await run.poll()
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
    assert run.scalar("mixpeek_exporter_tracked_tasks", "prod") == 4


async def test_unknown_statuses_and_task_types_are_exported_sanitised(
    run: Run, api: SimulatorTestServer, world: World, clock: FakeClock
) -> None:
    drifted = [
        world.create_task("prod", task_type, status=status)
        for status, task_type in zip(UNSEEN_STATUSES, UNSEEN_TASK_TYPES, strict=True)
    ]
    api.inject(DuplicateItems(count=1), namespace="prod")  # and paged across duplicates, for good measure
    await run.poll()
    await assert_consistent(run, "prod")
    labels = {key for key in run.gauges("prod") if key[1] != "thumbnail"}
    assert labels == {
        ("RETRYING", "api_quantum_teleport"),
        ("PAUSED_BY_OPERATOR", "engine.v2:reindex"),
        ("_chec_d_finitif__", "type_with_spaces_"),
        ("S" * 64, "t" * 64),
    }
    for task_id in drifted:
        world.set_status(task_id, "FAILED")  # an unknown status is non-terminal: this is a transition
    clock.advance(30)
    await run.poll()
    await assert_consistent(run, "prod")
    assert run.counted("prod") == {
        ("FAILED", "api_quantum_teleport"): 1,
        ("FAILED", "engine.v2:reindex"): 1,
        ("FAILED", "type_with_spaces_"): 1,
        ("FAILED", "t" * 64): 1,
    }


# Namespaces fail, and slow down, independently


async def test_one_namespace_failing_does_not_stop_the_other(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    api.inject(RateLimited(retry_after=1), namespace="prod")
    for task_id in seeded["staging"]:
        world.set_status(task_id, "COMPLETED")
    world.set_status(seeded["prod"][0], "FAILED")
    for _ in range(3):
        await run.poll()
    await assert_consistent(run, "staging")
    assert run.counted("staging") == {("COMPLETED", "thumbnail"): 1}
    assert run.errors("prod") == {"rate_limited": 3}
    assert run.errors("staging") == {}
    assert run.counted("prod") == {}
    api.clear_faults()
    await run.poll()
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}


async def test_a_slow_namespace_does_not_delay_the_others_poll(
    run: Run, api: SimulatorTestServer, world: World, seeded: dict[str, list[str]]
) -> None:
    """poll_once gathers the namespaces: staging's poll completes while prod's first page is still held.
    The order of events proves it (staging counted, prod not, the poll not done), not a stopwatch."""
    world.set_status(seeded["staging"][0], "FAILED")
    world.set_status(seeded["prod"][0], "FAILED")
    api.inject(Latency(0.5), namespace="prod", requests=Requests.nth(1))
    polling = asyncio.create_task(run.poll())
    while not run.counted("staging"):
        assert not polling.done()
        await asyncio.sleep(0.01)  # waits for staging's poll to land, not for a schedule
    assert run.counted("staging") == {("FAILED", "thumbnail"): 1}
    assert run.counted("prod") == {}  # prod's listing is still in flight
    assert not polling.done()
    await polling
    await assert_consistent(run, "prod", "staging")
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}


# An outage, and what happened during it


async def test_transitions_during_an_outage_are_counted_once_at_recovery(
    run: Run, api: SimulatorTestServer, world: World, clock: FakeClock, seeded: dict[str, list[str]]
) -> None:
    prod = seeded["prod"]
    world.set_status(prod[5], "FAILED")
    await run.poll()
    assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
    outage: list[tuple[Fault, Requests]] = [
        (HttpError(503), Requests.every()),
        (Reset(), Requests.every()),
        (RateLimited(retry_after=3), Requests.every()),
        (TruncatedJson(), Requests.nth(3)),  # part-way: pages 1 and 2 were fine
        (HttpError(502), Requests.starting(2)),
    ]
    born_and_gone = []
    for step, (fault, requests) in enumerate(outage):
        api.inject(fault, namespace="prod", requests=requests)
        clock.advance(30)
        if step == 0:
            world.set_status(prod[0], "FAILED")
            world.set_status(prod[1], "COMPLETED")
        elif step == 1:
            world.set_status(prod[0], "PROCESSING")  # regresses during the outage ...
            world.create_task("prod", "engine_inference_run", status="CANCELED")  # born finished
        elif step == 2:
            world.set_status(prod[0], "FAILED")  # ... and fails again: one transition
            world.set_status(prod[5], "PROCESSING")  # counted before the outage: regressed
        elif step == 3:
            gone = world.create_task("prod", "thumbnail", status="PROCESSING")
            world.set_status(gone, "FAILED")
            world.remove_task(gone)  # born, finished and vanished unseen: no poller can count it
            born_and_gone.append(gone)
        else:
            world.set_status(prod[5], "FAILED")  # terminal again: not a new transition
        await run.poll()
        assert not run.up("prod")
        assert run.up("staging")
        assert run.counted("prod") == {("FAILED", "thumbnail"): 1}
        api.clear_faults()
    assert run.errors("prod") == {
        "http_5xx": 2,
        "connection_error": 1,
        "rate_limited": 1,
        "invalid_response": 1,
    }
    await run.poll()
    # Observable truth: the World's truth since the baseline, less the task nobody could ever see.
    truth = Counter(run.truth("prod"))
    truth[("FAILED", "thumbnail")] -= len(born_and_gone)
    assert run.counted("prod") == nonzero(dict(truth))
    assert run.counted("prod") == {
        ("FAILED", "thumbnail"): 2,
        ("COMPLETED", "thumbnail"): 1,
        ("CANCELED", "engine_inference_run"): 1,
    }
    assert run.gauges("prod") == run.live("prod")
    await run.poll()
    assert run.counted("prod") == nonzero(dict(truth))


async def test_an_outage_before_the_first_success_moves_the_baseline(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter, clock: FakeClock
) -> None:
    """No baseline until a poll succeeds: what finished during a start-up outage is history, not news."""
    running = world.create_task("prod", "thumbnail", status="PROCESSING")
    run = start(make_exporter, api, world, "prod")
    api.inject(Reset(), namespace="prod")
    await run.poll()
    assert run.errors("prod") == {"connection_error": 1}
    assert not run.up("prod")
    assert select(run.scrape(), TASKS_GAUGE) == {}
    world.set_status(running, "FAILED")
    api.clear_faults()
    await run.poll()  # the baseline
    assert run.counted("prod") == {} == run.truth("prod")
    assert run.gauges("prod") == {("FAILED", "thumbnail"): 1}


async def test_organization_scope_recovers_from_an_outage_without_a_phantom_namespace(
    world: World, make_exporter: MakeExporter
) -> None:
    """Regression: a failure before the first success was recorded against a placeholder namespace
    'unknown', which later successes never updated: its mixpeek_up stayed 0 forever."""
    world.create_task("prod", "thumbnail")
    profile = ApiProfile(header_honoured=False, namespace_ids=NamespaceIds.ALL)
    with SimulatorTestServer(world, api_key=API_KEY, profile=profile) as org_api:
        exporter = make_exporter(org_api, organization=True, transport=httpx.AsyncHTTPTransport(verify=False))
        org_api.inject(HttpError(500))
        await exporter.poll()
        org_api.clear_faults()
        await exporter.poll()
        ups: dict[str, Any] = {
            dict(k)["mixpeek_namespace"]: v for k, v in select(exporter.scrape(), "mixpeek_up").items()
        }
    assert ups, "no mixpeek_up after a successful poll"
    assert set(ups.values()) == {1.0}, f"after a successful poll: {ups}"
