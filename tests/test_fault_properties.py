"""Property-based: random task histories, interleaved with random faults and polls, keep every promise.

Each example builds a fresh FakeClock, World, simulated API and exporter, then plays a random script: tasks
created, moved to any status (regressions and unknown values included), removed, the World's own lifecycle
advanced, and polls, each under at most one fault. After every poll:

- a namespace whose poll succeeded shows counters equal to the observable truth and gauges equal to what the
  listing showed (the World's live tasks, less any the server left out);
- a namespace whose poll failed shows the same gauges and transition counters as before, and one more error;
- no counter sample went down.

The observable truth is what a perfect observer of the successful listings counts: a task counts once, at the
first successful poll that lists it in a terminal status, unless that poll is the baseline. At the end of each
example it is tied back to the World's own ground truth (`world.transitions`), task by task.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import Exporter, Series, build_exporter, select

from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.testing.faults import (
    CursorBackToStart,
    DuplicateItems,
    Fault,
    HtmlPage,
    HttpError,
    OmitItems,
    OversizedPage,
    RateLimited,
    RepeatCursor,
    Requests,
    Reset,
    ResultsNotList,
    TaskWithoutId,
    TruncatedJson,
)

KEY = "sk_property_k3y"
POLL_ERRORS = "mixpeek_exporter_poll_errors_total"
NAMESPACES = ("prod", "staging")
TERMINAL = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED"})
STATUSES = ("PENDING", "QUEUED", "PROCESSING", "IN_PROGRESS", *sorted(TERMINAL), "RETRYING", "échec/β")
TASK_TYPES = ("thumbnail", "engine_inference_run", "api_quantum_teleport!")
COUNTER_SUFFIXES = ("_total", "_count", "_bucket", "_sum")

# Faults that cost no real time, by what they do to one request.
TRANSIENT: dict[str, tuple[Fault, str]] = {  # retried; reason when the retries run out
    "500": (HttpError(500), "http_5xx"),
    "503": (HttpError(503), "http_5xx"),
    "429": (RateLimited(retry_after=2), "rate_limited"),
    "reset": (Reset(), "connection_error"),
}
FATAL: dict[str, tuple[Fault, str]] = {  # never retried; the poll fails when they take effect
    "html": (HtmlPage(), "invalid_response"),
    "truncated": (TruncatedJson(), "invalid_response"),
    "not-a-list": (ResultsNotList(), "invalid_response"),
    "no-task-id": (TaskWithoutId(), "invalid_response"),
    "oversized": (OversizedPage(), "invalid_response"),
    "repeat-cursor": (RepeatCursor(), "invalid_response"),
    "back-to-start": (CursorBackToStart(), "invalid_response"),
    "404": (HttpError(404), "not_found"),
    "429-final": (RateLimited(retryable=False), "rate_limited"),
}


def sanitised(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:\-]", "_", raw.strip())[:64] or "none"


# The script


@dataclass(frozen=True)
class Create:
    namespace: str
    task_type: str
    status: str


@dataclass(frozen=True)
class SetStatus:
    task: int  # index into the live tasks, modulo their number
    status: str


@dataclass(frozen=True)
class Remove:
    task: int


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Poll:
    kind: str  # "none", "duplicates", "omit", a TRANSIENT key or a FATAL key
    namespace: str | None  # the faulted namespace; None: both
    numbers: frozenset[int]  # the faulted request numbers (for transient and fatal kinds)
    omit: frozenset[int] = frozenset()  # indexes of live tasks the server leaves out ("omit")


polls = st.builds(
    Poll,
    # Weighted: the lying-server kinds need a history behind them to matter, so they come often.
    kind=st.sampled_from(["none", "none", "duplicates", "omit", "omit", "omit", *TRANSIENT, *FATAL]),
    namespace=st.sampled_from([None, *NAMESPACES]),
    numbers=st.one_of(  # the first page's 4 attempts, or a few of the first requests
        st.just(frozenset({1, 2, 3, 4})), st.frozensets(st.integers(1, 5), min_size=1, max_size=4)
    ),
    omit=st.frozensets(st.integers(0, 30), max_size=3),
)
changes = st.one_of(
    st.builds(Create, st.sampled_from(NAMESPACES), st.sampled_from(TASK_TYPES), st.sampled_from(STATUSES)),
    st.builds(SetStatus, st.integers(0, 30), st.sampled_from(STATUSES)),
    st.builds(Remove, st.integers(0, 30)),
    st.builds(Advance, st.sampled_from([1.0, 10.0, 60.0])),
)
Step = Create | SetStatus | Remove | Advance | Poll
# Rounds of a few changes to the World, each ended by a poll: every example polls several times.
scripts = st.lists(st.tuples(st.lists(changes, max_size=5), polls), min_size=2, max_size=7).map(
    lambda rounds: [step for changed, poll in rounds for step in (*changed, poll)]
)


# The model: what a perfect observer of the successful listings counts, and the World's truth per task


@dataclass
class Observer:
    """One namespace as a perfect observer of its successful listings sees it."""

    baseline: int | None = None  # the step of the first successful poll
    ever_listed_terminal: set[str] = field(default_factory=set)
    counted: Counter[tuple[str, str]] = field(default_factory=Counter)
    counted_tasks: dict[str, int] = field(default_factory=dict)  # task -> the step it was counted at
    listed_terminal_at: dict[str, list[int]] = field(default_factory=dict)
    listed_at_baseline: dict[str, str] = field(default_factory=dict)

    def see(self, step: int, listing: dict[str, tuple[str, str]]) -> None:
        for task_id, (status, task_type) in listing.items():
            if sanitised(status) not in TERMINAL:
                continue
            self.listed_terminal_at.setdefault(task_id, []).append(step)
            if task_id not in self.ever_listed_terminal and self.baseline is not None:
                self.counted[(sanitised(status), sanitised(task_type))] += 1
                self.counted_tasks[task_id] = step
            self.ever_listed_terminal.add(task_id)
        if self.baseline is None:
            self.baseline = step
            self.listed_at_baseline = {t: status for t, (status, _) in listing.items()}


@dataclass
class Truth:
    """The World's truth per task, recorded after every step; checked against `world.transitions`."""

    first_terminal: dict[str, tuple[int, str, str, str]] = field(default_factory=dict)
    """task -> (step, namespace id, status, task type) of its first terminal status."""

    def record(self, step: int, world: World) -> None:
        for task in world.tasks():
            if task.status in TERMINAL and task.task_id not in self.first_terminal:
                self.first_terminal[task.task_id] = (step, task.namespace_id, task.status, task.task_type)

    def check(self, world: World) -> None:
        recorded = Counter((ns, status, ttype) for _, ns, status, ttype in self.first_terminal.values())
        assert recorded == world.transitions


# Running a script


@contextmanager
def simulated_api(world: World) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, api_key=KEY) as server, structlog.testing.capture_logs():
        yield server  # logs captured (and dropped): 60 examples of poll lines are noise, and cost time


def predicted(poll: Poll, namespace: str) -> str | None:
    """'ok', or the poll error reason, when the fault decides the outcome whatever the listing; else None."""
    if poll.namespace not in (None, namespace) or poll.kind in ("none", "duplicates", "omit"):
        return "ok"
    if poll.kind in TRANSIENT:
        if len(poll.numbers) <= 3:  # at most 3 failures in all: never 4 attempts of one request
            return "ok"
        if {1, 2, 3, 4} <= poll.numbers:  # the first page's 4 attempts
            return TRANSIENT[poll.kind][1]
        return None
    if 1 in poll.numbers and poll.kind not in ("repeat-cursor", "back-to-start"):
        return FATAL[poll.kind][1]  # the first request always happens; these faults always take effect
    return None


def fault_for(poll: Poll, live: list[str]) -> tuple[Fault, Requests] | None:
    if poll.kind == "none":
        return None
    if poll.kind == "duplicates":
        return DuplicateItems(count=1), Requests.every()
    if poll.kind == "omit":
        hidden = frozenset(live[i % len(live)] for i in poll.omit) if live else frozenset()
        return OmitItems(task_ids=hidden), Requests.every()
    fault = (TRANSIENT.get(poll.kind) or FATAL[poll.kind])[0]
    return fault, Requests.nth(*poll.numbers)


def samples(exporter: Exporter) -> Series:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in exporter.registry.collect()
        for s in family.samples
    }


def by_key(series: Series, name: str, namespace: str) -> dict[tuple[str, str], int]:
    found = select(series, name, mixpeek_namespace=namespace)
    return {(dict(k)["status"], dict(k)["task_type"]): int(v) for k, v in found.items() if v}


async def play(script: list[Step], page_size: int) -> None:
    clock = FakeClock()
    world = World(clock, seed=1, mean_pending_s=20, mean_queued_s=20, mean_running_s=40)
    for namespace in NAMESPACES:
        world.add_namespace(namespace)
    truth = Truth()
    observers = {namespace: Observer() for namespace in NAMESPACES}
    with simulated_api(world) as api:
        transport = httpx.AsyncHTTPTransport(verify=False)
        exporter = build_exporter(
            api.url, KEY, clock, namespaces=NAMESPACES, page_size=page_size, transport=transport
        )
        try:
            previous = samples(exporter)
            for step, action in enumerate([*script, Poll("none", None, frozenset())]):
                match action:
                    case Create(namespace, task_type, status):
                        world.create_task(namespace, task_type, status=status)
                    case SetStatus(task, status) if live := world.tasks():
                        world.set_status(live[task % len(live)].task_id, status)
                    case Remove(task) if live := world.tasks():
                        world.remove_task(live[task % len(live)].task_id)
                    case Advance(seconds):
                        clock.advance(seconds)
                        world.advance(seconds)
                    case Poll():
                        previous = await poll_and_check(
                            action, step, world, api, exporter, observers, previous
                        )
                truth.record(step, world)
        finally:
            await exporter.http.aclose()
    truth.check(world)
    for namespace, observer in observers.items():
        tie_to_the_world(namespace, observer, truth, world)


async def poll_and_check(
    poll: Poll,
    step: int,
    world: World,
    api: SimulatorTestServer,
    exporter: Exporter,
    observers: dict[str, Observer],
    previous: Series,
) -> Series:
    fault = fault_for(poll, [t.task_id for t in world.tasks()])
    hidden: frozenset[str] = frozenset()
    if fault is not None:
        api.inject(fault[0], namespace=poll.namespace, requests=fault[1])
        if isinstance(fault[0], OmitItems):
            hidden = fault[0].task_ids
    listings = {  # what a successful listing shows, taken before the poll (the World does not move during it)
        namespace: {
            t.task_id: (t.status, t.task_type)
            for t in world.tasks(namespace)
            if not (t.task_id in hidden and poll.namespace in (None, namespace))
        }
        for namespace in NAMESPACES
    }
    await exporter.poll()
    api.clear_faults()
    now = samples(exporter)
    for key, value in previous.items():
        if key[0].endswith(COUNTER_SUFFIXES):
            assert now.get(key, -1) >= value, (
                f"counter {key} went down or vanished: {value} -> {now.get(key)}"
            )
    for namespace in NAMESPACES:
        up = now[("mixpeek_up", frozenset({("mixpeek_namespace", namespace)}))] == 1
        errors_before, errors_now = (
            {
                k: v for k, v in select(s, POLL_ERRORS, mixpeek_namespace=namespace).items() if v
            }  # served from 0
            for s in (previous, now)
        )
        expected = predicted(poll, namespace)
        event(f"poll {'ok' if up else 'failed'} under {poll.kind}")
        if up:
            assert expected in ("ok", None), f"{namespace}: expected {expected} under {poll}"
            observer = observers[namespace]
            observer.see(step, listings[namespace])
            assert by_key(now, "mixpeek_task_terminal_transitions_total", namespace) == dict(observer.counted)
            gauges = Counter((sanitised(s), sanitised(t)) for s, t in listings[namespace].values())
            assert by_key(now, "mixpeek_tasks", namespace) == dict(gauges)
            assert errors_now == errors_before
        else:
            reasons = {dict(k)["reason"] for k, v in errors_now.items() if v > errors_before.get(k, 0)}
            assert len(reasons) == 1
            assert sum(errors_now.values()) == sum(errors_before.values()) + 1
            assert expected != "ok", f"{namespace} failed ({reasons}) under {poll}, which must succeed"
            kinds = {**TRANSIENT, **FATAL}
            assert poll.kind in kinds, f"{namespace} failed: {poll}"
            assert poll.namespace in (None, namespace), f"{namespace} failed: {poll}"
            assert reasons == {expected or kinds[poll.kind][1]}
            for name in ("mixpeek_tasks", "mixpeek_task_terminal_transitions_total"):
                assert by_key(now, name, namespace) == by_key(previous, name, namespace)
    return now


def tie_to_the_world(namespace: str, observer: Observer, truth: Truth, world: World) -> None:
    """The observable truth against the World's: every difference is one the caveats explain.

    - A task that truly finished after the baseline is counted iff a successful poll listed it terminal after
      that (it may have vanished first, or been hidden, or regressed and not finished again yet).
    - A task counted although its first terminal status came before the baseline was not listed terminal by
      the baseline poll: it had regressed by then, or the server left it out; nobody could know it had
      finished before.
    """
    ns = world.namespace(namespace)
    assert ns is not None
    if observer.baseline is None:
        assert not observer.counted
        return
    for task_id, (step, ns_id, _status, _type) in truth.first_terminal.items():
        if ns_id != ns.namespace_id:
            continue
        listed_after = [s for s in observer.listed_terminal_at.get(task_id, []) if s >= step]
        if step > observer.baseline:
            assert (task_id in observer.counted_tasks) == bool(listed_after), task_id
        elif task_id in observer.counted_tasks:
            assert sanitised(observer.listed_at_baseline.get(task_id, "PENDING")) not in TERMINAL
    assert set(observer.counted_tasks) <= set(truth.first_terminal)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=scripts, page_size=st.sampled_from([2, 2, 3, 1000]))
def test_random_histories_under_random_faults_keep_every_promise(script: list[Step], page_size: int) -> None:
    asyncio.run(play(script, page_size))
