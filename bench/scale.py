"""How the exporter scales: the real exporter polling a simulated Mixpeek API of 10k to 1M tasks.

    python bench/scale.py                          # every scenario, a few minutes
    python bench/scale.py --scenarios 10k,100k     # a subset
    python bench/scale.py --no-cursor --page-concurrency 8 --reconcile-every 5
    python bench/scale.py --scenarios 100k --api filters=ignored --api sort=ignored

Each scenario runs once per simulated API profile (`--api`, as `ApiProfile.parse` reads it; by default the
documented API, `default`, then `timestamps`), in a fresh process, so its peak RSS is that exporter's alone,
with the simulated API in a child process of its own. The world is a busy organisation's: most tasks
finished, a small active set.
Between polls the API's process applies the churn (by default 1 % of the tasks change: active tasks finish,
some FAILED; pending tasks start; as many new tasks are born as the oldest finished ones expire), through a
control pipe, so no change lands while a poll runs. The exporter is built from its real pieces, as
`exporter.cli` builds it (its /metrics rendered in the background), and each poll is triggered with
`await poller.poll_once()`. Beside it, in its own fresh process against the same simulated API, runs the
naive exporter of bench/naive.py (`--exporters` picks), and every figure is also given as ours / naive.

While each steady poll runs, 20 scrapers in a process of their own hit /metrics at once, round after round
(bench/scrape.py's Hammer): new connections without gzip during some polls, kept-alive ones with gzip during
the others; after each steady poll one scrape times what a scraper sees first. Their CPU counts as the
exporter's: `--no-hammer` for CPU figures. The load average at the start and the end of each run is printed:
the machine's two cores are shared.

Printed, as markdown: per run (scenario and API profile) and kind of poll (the first, a full listing; then
incremental polls and full ones, as the exporter itself reports them: a full listing sets its namespace's
`last_full`), the API requests of every endpoint (the exporter's own count), wall time, the exporter's CPU
(and the simulated API's, to show where the wall time went); then per run the peak RSS, the RSS grown over
the polls per tracked task, /metrics latency while polls run, the exposition's size, how the exporter
polls at the end (its poll-mode gauge) and the API checks it saw fail, so that a fallback shows, and a check:
the exporter counted exactly the terminal transitions the world made after the first poll.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import cProfile
import gc
import multiprocessing
import os
import pstats
import random
import re
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from statistics import mean
from typing import Any, Protocol

import components  # bench/components.py
import httpx
from naive import PAGE_SIZE, NaiveExporter  # bench/naive.py: run as `python bench/scale.py`
from pydantic import SecretStr
from scrape import Hammer, ScrapeTimes, percentile

from exporter.api import MixpeekClient
from exporter.cli import _http_client as http_client
from exporter.cli import build_exposition, build_poller
from exporter.config import Settings, load_settings
from exporter.exposition import Exposition
from exporter.logs import configure_logging
from exporter.poller import Poller
from exporter.server import MetricsServer
from exporter.simulator import TERMINAL_STATUSES, ApiProfile, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.simulator.testing.faults import HttpError, Requests
from exporter.simulator.world import TASK_TYPE_MIX

KEY = "sk_bench_scale"
HISTORY_S = 20 * 3600.0  # tasks were created over the last 20 h: none expires during a run (24 h)
# How a task that finishes ends; the rest COMPLETED.
OUTCOMES = (("FAILED", 0.10), ("COMPLETED_WITH_ERRORS", 0.03), ("CANCELED", 0.02))
PENDING_SHARE = 0.4  # of the active tasks; the others are PROCESSING


@dataclass(frozen=True)
class Scenario:
    name: str
    namespaces: int
    tasks_per_namespace: int

    @property
    def tasks(self) -> int:
        return self.namespaces * self.tasks_per_namespace


DEFAULT_SCENARIOS = ("10k", "100k", "1M", "200x5k")
DEFAULT_APIS = ("default", "timestamps")
OURS, NAIVE = "ours", "naive"
"""The documented API, then the one that adds task timestamps (what the simulator served before issue 12)."""
_SCENARIO = re.compile(r"(?:(\d+)x)?(\d+)([kM]?)")


def scenario(name: str) -> Scenario:
    """`100k`: one namespace of 100,000 tasks; `200x5k`: 200 namespaces of 5,000."""
    match = _SCENARIO.fullmatch(name)
    if match is None:
        raise argparse.ArgumentTypeError(f"{name!r}: expected e.g. 50k, 1M or 200x5k")
    namespaces, count, unit = match.groups()
    return Scenario(name, int(namespaces or 1), int(count) * {"": 1, "k": 1000, "M": 1_000_000}[unit])


@dataclass(frozen=True)
class Options:
    steady_polls: int
    reconcile_every: int | None
    page_concurrency: int | None
    cursor: bool
    churn: float
    active: float
    hammer: bool
    """Scrapers hit /metrics while the steady polls run."""
    scrape_concurrency: int
    interval: float
    seed: int
    profile: int = 0
    """Profile the last poll (cProfile): print its time by component (bench/components.py) and this many
    of its costliest functions, to see where CPU goes. Its CPU figures then include cProfile's cost."""
    sample: bool = False
    """Sample the last poll with py-spy and print its time by component (bench/components.py)."""
    switch_interval_ms: float | None = None
    """sys.setswitchinterval of the exporter's process, in ms (None: as the exporter sets it)."""
    refuse_lookup: bool = False
    """The first incremental poll's `task_id in` lookup is answered 422, so the exporter looks tasks up by
    GET from then on: no API profile refuses the lookup alone (its `in` is the active filter's too)."""


@dataclass(frozen=True)
class Poll:
    kind: str  # first, incremental, full
    requests: int
    wall: float
    cpu: float
    api_cpu: float
    endpoints: Counter[str] = field(default_factory=Counter)
    """The requests by endpoint (the exporter's count, whatever the answer)."""


@dataclass
class Result:
    scenario: Scenario
    api: str
    """The simulated API's profile, as `ApiProfile.parse` reads it."""
    build_s: float = 0.0
    polls: list[Poll] = field(default_factory=list)
    tracked: int = 0
    peak_rss: int = 0
    rss_before: int = 0
    rss_after: int = 0
    exporter: str = "ours"
    """ours, or naive (bench/naive.py)"""
    load: str = ""
    """The 1-minute load average at the start and at the end of the run."""
    scrape_new: ScrapeTimes | None = None
    """While steady polls run: 20 at once, a new connection each, no gzip."""
    scrape_kept: ScrapeTimes | None = None
    """While steady polls run: 20 at once, kept-alive connections, gzip (as Prometheus)."""
    after_poll: list[float] = field(default_factory=list)
    """Seconds of the first scrape after each steady poll (a new connection, Prometheus' headers)."""
    check: str = ""
    error: str | None = None
    settings: str = ""
    """The exporter's settings that shape a poll, as it resolved them."""
    modes: str = ""
    """How the exporter polls the tasks at the end, and why (its poll-mode gauge), per namespace."""
    check_failures: str = ""
    """The API checks the exporter saw fail, and how often."""


# The simulated API's process


class Churn:
    """The world's tasks by phase, per namespace, to move 1 % of them between two polls."""

    def __init__(self, world: World, clock: FakeClock, rng: random.Random, options: Options) -> None:
        self._world, self._clock, self._rng, self._options = world, clock, rng, options
        self._pending: dict[str, deque[str]] = {}
        self._processing: dict[str, list[str]] = {}
        self._finished: dict[str, deque[str]] = {}  # oldest first: the next to expire
        self._size: dict[str, int] = {}

    def populate(self, namespace: str, size: int) -> None:
        """`size` tasks created over the last HISTORY_S, oldest first; `active` of them not finished."""
        now, rng, active = self._clock(), self._rng, self._options.active
        types = _task_types(rng, size)
        statuses = [_status(rng.random(), active) for _ in range(size)]
        step = HISTORY_S / size
        ids = self._world.create_tasks(
            namespace, ((types[i], statuses[i], now - HISTORY_S + i * step) for i in range(size))
        )
        self._size[namespace] = size
        self._pending[namespace] = deque(t for t, s in zip(ids, statuses, strict=True) if s == "PENDING")
        self._processing[namespace] = [t for t, s in zip(ids, statuses, strict=True) if s == "PROCESSING"]
        self._finished[namespace] = deque(
            t for t, s in zip(ids, statuses, strict=True) if s in TERMINAL_STATUSES
        )

    def active(self, namespace: str) -> int:
        return len(self._pending[namespace]) + len(self._processing[namespace])

    def apply(self) -> int:
        """One poll interval passes; in each namespace a third of the churn finishes, a third starts and
        a third is born, and as many finished tasks expire. Returns how many tasks changed status."""
        self._clock.advance(self._options.interval)
        now, changed = self._clock(), 0
        for namespace, size in self._size.items():
            third = max(1, round(size * self._options.churn / 3))
            changed += self._finish(namespace, third) + self._start(namespace, third)
            born = self._world.create_tasks(
                namespace, [(t, "PENDING", now) for t in _task_types(self._rng, third)]
            )
            self._pending[namespace].extend(born)
            changed += len(born)
            finished = self._finished[namespace]
            for _ in range(min(third, len(finished))):
                self._world.remove_task(finished.popleft())
        return changed

    def _finish(self, namespace: str, count: int) -> int:
        running, finished = self._processing[namespace], self._finished[namespace]
        count = min(count, len(running))
        for _ in range(count):
            i = self._rng.randrange(len(running))
            running[i], running[-1] = running[-1], running[i]
            task_id = running.pop()
            self._world.set_status(task_id, _outcome(self._rng.random()))
            finished.append(task_id)
        return count

    def _start(self, namespace: str, count: int) -> int:
        pending, running = self._pending[namespace], self._processing[namespace]
        started = [pending.popleft() for _ in range(min(count, len(pending)))]
        for task_id in started:
            self._world.set_status(task_id, "PROCESSING")
        running.extend(started)
        return len(started)


def _task_types(rng: random.Random, count: int) -> list[str]:
    return rng.choices(list(TASK_TYPE_MIX), weights=list(TASK_TYPE_MIX.values()), k=count)


def _status(draw: float, active: float) -> str:
    if draw < active * PENDING_SHARE:
        return "PENDING"
    if draw < active:
        return "PROCESSING"
    return _outcome((draw - active) / (1 - active))


def _outcome(draw: float) -> str:
    for status, share in OUTCOMES:
        if draw < share:
            return status
        draw -= share
    return "COMPLETED"


def serve_world(scenario: Scenario, api: str, options: Options, control: Connection) -> None:
    """The simulated API's process: build the world, serve it, and obey the control pipe."""
    started = time.perf_counter()
    clock = FakeClock(time.time())
    world = World(clock=clock, seed=options.seed)
    churn = Churn(world, clock, random.Random(options.seed), options)  # noqa: S311 - a simulation
    names = ["bench"] if scenario.namespaces == 1 else [f"ns-{i:03d}" for i in range(scenario.namespaces)]
    for name in names:
        world.add_namespace(name)
        churn.populate(name, scenario.tasks_per_namespace)
    gc.freeze()  # the world lives until the end: collections need not walk it again
    profile = ApiProfile.parse(api)
    server = SimulatorTestServer(world, api_key=KEY, cursor_pagination=options.cursor, profile=profile)
    server.start()
    ids = {ns.namespace_id: ns.namespace_name for ns in world.namespaces()}
    control.send((server.url, names, time.perf_counter() - started))
    cpu = time.process_time()
    while True:
        command = control.recv()
        if command == "churn":
            control.send(churn.apply())
            cpu = time.process_time()  # the API's CPU of the next poll, not the churn's
        elif isinstance(command, tuple) and command[0] == "refuse lookup":
            # The first namespace's next /v1/tasks/list requests: the active set's pages, one page of
            # births (fewer than a page are born per poll), then the lookup. (The exporter then stops
            # looking up in every namespace.)
            lookup = -(-churn.active(names[0]) // command[1]) + 2
            server.inject(
                HttpError(422, "Value error, filter operator 'in' is not supported on task_id"),
                namespace=names[0],
                requests=Requests.nth(lookup),
            )
            control.send(None)
        elif command == "polled":  # the API's CPU during the last poll
            server.clear_requests()  # kept by the server for tests: not to grow over the run
            control.send(time.process_time() - cpu)
            cpu = time.process_time()
        elif command == "truth":
            truth = Counter(
                {(ids[ns], status, kind): n for (ns, status, kind), n in world.transitions.items()}
            )
            control.send(truth)
        else:
            break
    server.stop()


# The exporter's process


def run_scenario(scenario: Scenario, api_profile: str, options: Options, exporter: str = OURS) -> Result:
    """One scenario against one API profile, in this (fresh) process: the API in a child, the exporter
    (ours, or the naive one of bench/naive.py) here."""
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    api = context.Process(target=serve_world, args=(scenario, api_profile, options, child_end), daemon=True)
    api.start()
    result = Result(scenario, api_profile, exporter=exporter, load=_load())
    if options.switch_interval_ms is not None:
        sys.setswitchinterval(options.switch_interval_ms / 1000)
    try:
        url, names, result.build_s = control.recv()
        run = _exporter if exporter == OURS else _naive
        asyncio.run(run(url, names, options, control, result))
    except Exception as exc:  # report it in the table, go on with the next scenario
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(OSError):  # the API's process may be gone already
            control.send("stop")
        api.join(30)
    result.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.load += f" to {_load()}"
    return result


class Subject(Protocol):
    """An exporter as the benchmark drives it."""

    async def poll_once(self) -> None: ...
    def requests(self) -> Counter[str]:
        """Requests so far, by endpoint."""

    def kind(self, first: bool) -> str:
        """first, full or incremental: the poll just made."""


def bench_settings(url: str, names: list[str], options: Options) -> Settings:
    """The exporter's settings for a run against the simulated API at `url`."""
    overrides: dict[str, Any] = {
        "api_key": KEY,
        "api_url": url,
        "namespaces": ",".join(names),
        "batches": False,
        "poll_interval": options.interval,
        "listen": "127.0.0.1:0",
        "log_level": "warning",
    }
    if options.reconcile_every is not None:
        overrides["reconcile_every"] = options.reconcile_every
    if options.page_concurrency is not None:
        overrides["page_concurrency"] = options.page_concurrency
    return load_settings(**overrides)


@contextlib.asynccontextmanager
async def built_exporter(
    settings: Settings, url: str
) -> AsyncIterator[tuple[MixpeekClient, Poller, Exposition]]:
    """The pooled client, the poller and /metrics' exposition as exporter.cli builds them (not started)."""
    configure_logging("json", settings.log_level, lambda: [KEY])
    key = SecretStr(KEY)
    async with http_client(settings, url) as http:
        client = MixpeekClient(
            http, lambda: key, page_size=settings.page_size, page_concurrency=settings.page_concurrency
        )
        poller = build_poller(settings, client, settings.poll_interval)
        yield client, poller, build_exposition(settings, poller)


async def _exporter(
    url: str, names: list[str], options: Options, control: Connection, result: Result
) -> None:
    settings = bench_settings(url, names, options)
    result.settings = (
        f"page size {settings.page_size}, reconcile every {settings.reconcile_every} polls, "
        f"page concurrency {settings.page_concurrency}, concurrency {settings.concurrency}"
    )
    # /metrics rendered in the background, as the exporter serves it.
    async with built_exporter(settings, url) as (client, poller, exposition):
        host, port = settings.listen_address
        exposition.start()
        server = MetricsServer(host, port, exposition, poller.ready)
        server.start()
        try:
            control.send("truth")
            truth_before = control.recv()
            subject = _Ours(poller, client)
            await _drive(subject, f"http://127.0.0.1:{server.port}/metrics", options, control, result)
            result.tracked = sum(state.tracked for state in poller.snapshot.namespaces.values())
            control.send("truth")
            truth = control.recv() - truth_before
            counted = Counter(
                {
                    (namespace, status, task_type): n
                    for namespace, state in poller.snapshot.namespaces.items()
                    for (status, task_type), n in state.transitions.items()
                    if n
                }
            )
            result.check = _compare(counted, truth)
            result.modes, result.check_failures = _fallbacks(poller)
        finally:
            server.stop()
            exposition.stop()


class _Ours:
    def __init__(self, poller: Poller, client: MixpeekClient) -> None:
        self._poller, self._client = poller, client

    async def poll_once(self) -> None:
        await self._poller.poll_once()
        failed = [ns for ns, health in self._poller.snapshot.health.items() if not health.up]
        if failed:
            raise RuntimeError(
                f"poll failed in {len(failed)} namespaces ({self._poller.snapshot.health[failed[0]].failing})"
            )

    def requests(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (endpoint, _), n in self._client.requests.items():
            counts[endpoint] += n
        return counts

    def kind(self, first: bool) -> str:
        # A full listing sets last_full to the time the poll succeeded: the exporter's own word for it.
        full = any(
            h.last_full is not None and h.last_full == h.last_success
            for h in self._poller.snapshot.health.values()
        )
        return "first" if first else "full" if full else "incremental"


async def _naive(url: str, names: list[str], options: Options, control: Connection, result: Result) -> None:
    result.settings = f"page size {PAGE_SIZE}, a full listing every poll"
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        naive = NaiveExporter(http, KEY, names)
        port = naive.serve()
        await _drive(_Naive(naive), f"http://127.0.0.1:{port}/metrics", options, control, result)
        result.tracked = sum(len(seen) for seen in naive.seen.values())
        result.check = "not checked"


class _Naive:
    def __init__(self, naive: NaiveExporter) -> None:
        self._naive = naive

    async def poll_once(self) -> None:
        await self._naive.poll_once()

    def requests(self) -> Counter[str]:
        return Counter(self._naive.requests)

    def kind(self, first: bool) -> str:
        return "first" if first else "full"


async def _drive(
    subject: Subject, metrics: str, options: Options, control: Connection, result: Result
) -> None:
    """The polls, with the world's churn between them. With `hammer`, 20 scrapers hit /metrics at once,
    round after round, while each steady poll runs: kept-alive connections with gzip during odd polls,
    new connections without gzip during even ones; after each steady poll one scrape times what a scraper
    sees first."""
    hammers: tuple[Hammer, ...] = (
        (Hammer(metrics, options.scrape_concurrency, keep_alive=False), Hammer(metrics, keep_alive=True))
        if options.hammer
        else ()
    )
    try:
        result.rss_before = _rss()
        for i in range(1 + options.steady_polls):
            if i:
                control.send("churn")
                control.recv()
            if i == 1 and options.refuse_lookup:
                control.send(("refuse lookup", PAGE_SIZE))
                control.recv()
            hammer = hammers[i % 2] if i and hammers else None
            if hammer is not None:
                hammer.on()
            last = i == options.steady_polls
            profiler = cProfile.Profile() if options.profile and last else None
            sampler = components.Sampler() if options.sample and last else None
            watch = profiler or sampler
            result.polls.append(await _poll(subject, control, first=not i, watch=watch))
            if sampler is not None:
                _components(result, sampler.seconds, "sampled by py-spy")
            if profiler is not None:
                stats = pstats.Stats(profiler, stream=sys.stderr)
                how = "profiled by cProfile (its own cost included; the poller's thread only)"
                _components(result, components.by_component(stats), how)
                stats.sort_stats("tottime").print_stats(options.profile)
            if hammer is not None:
                hammer.off()
                result.after_poll.append(hammers[0].once())
            poll = result.polls[-1]
            _progress(
                f"{result.scenario.name} [{result.api}, {result.exporter}]: poll {i} ({poll.kind}): "
                f"{poll.requests} requests, {poll.wall:.2f} s, exporter CPU {poll.cpu:.2f} s, "
                f"API CPU {poll.api_cpu:.2f} s; {_endpoints([poll])}"
            )
        result.rss_after = _rss()
    finally:
        if hammers:
            result.scrape_new, result.scrape_kept = (_times(*hammer.close()) for hammer in hammers)


def _components(result: Result, seconds: components.Seconds, how: str) -> None:
    poll = result.polls[-1]
    tasks = None if poll.kind == "incremental" else result.scenario.tasks
    print(components.report(seconds, tasks, poll.requests, poll.cpu, how), file=sys.stderr)


async def _poll(
    subject: Subject,
    control: Connection,
    *,
    first: bool,
    watch: contextlib.AbstractContextManager[object] | None = None,
) -> Poll:
    """One poll, timed; `watch` (a profiler) is on while the exporter polls, not while the bench talks
    to the API's process."""
    before = subject.requests()
    wall, cpu = time.perf_counter(), time.process_time()
    with watch or contextlib.nullcontext():
        await subject.poll_once()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    control.send("polled")
    api_cpu = control.recv()
    endpoints = subject.requests() - before
    return Poll(subject.kind(first), endpoints.total(), wall, cpu, api_cpu, endpoints)


def _times(times: list[float], size: int) -> ScrapeTimes | None:
    if not times:
        return None
    ordered = sorted(times)
    return ScrapeTimes(percentile(ordered, 50), percentile(ordered, 99), size, len(ordered))


def _fallbacks(poller: Poller) -> tuple[str, str]:
    """The exporter's poll modes of the tasks (mode and reason, with how many namespaces when several
    share one), and its failed API checks."""
    modes = Counter(
        f"{mode} ({reason})"
        for (_, resource), (mode, reason) in poller.snapshot.modes.items()
        if resource == "tasks"
    )
    shown = ", ".join(mode if n == 1 else f"{mode} x{n}" for mode, n in sorted(modes.items()))
    failures = ", ".join(f"{check} {n}" for check, n in sorted(poller.snapshot.check_failures.items()) if n)
    return shown, failures or "none"


def _compare(counted: Counter[tuple[str, str, str]], truth: Counter[tuple[str, str, str]]) -> str:
    total = sum(truth.values())
    if counted == truth:
        return f"OK ({total:,} transitions)"
    wrong = sorted(set(counted) ^ set(truth) | {k for k in truth if counted[k] != truth[k]})
    return f"MISMATCH: counted {sum(counted.values()):,} of {total:,}; first {wrong[0]}"


def _load() -> str:
    """The 1-minute load average: the two cores are shared, and latency follows it."""
    return f"{os.getloadavg()[0]:.2f}"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# The table


def report(results: Sequence[Result], options: Options, elapsed: float) -> str:
    settings = next((r.settings for r in results if r.settings and r.exporter == OURS), "")
    lines = [
        f"Churn {options.churn:.0%} of the tasks per poll, {options.active:.1%} of them active; "
        f"steady polls: {options.steady_polls}; cursors {'on' if options.cursor else 'off'}; {settings}. "
        f"Whole run {elapsed:.0f} s.",
        "",
        "| scenario | API | exporter | poll | polls | API requests | wall s | exporter CPU s "
        "| µs / task | API CPU s | requests by endpoint |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        for label, polls in _poll_groups(result.polls):
            full = label in ("first", "full")
            per_task = f"{mean(p.cpu for p in polls) / result.scenario.tasks * 1e6:.2f}" if full else ""
            lines.append(
                f"| {result.scenario.name} | {result.api} | {result.exporter} | {label} | {len(polls)} "
                f"| {mean(p.requests for p in polls):,.0f} "
                f"| {mean(p.wall for p in polls):.2f} | {mean(p.cpu for p in polls):.2f} | {per_task} "
                f"| {mean(p.api_cpu for p in polls):.2f} | {_endpoints(polls)} |"
            )
    lines += [
        "",
        "| scenario | API | exporter | tracked | peak RSS MB | RSS growth MB | bytes / tracked task "
        "| /metrics while polling, new connection, no gzip: p50 / p99 ms (n) "
        "| kept alive, gzip: p50 / p99 ms (n) | first scrape after a poll: p99 ms (n) "
        "| body KB plain / gzip | load | transitions check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        grown = result.rss_after - result.rss_before
        per_task = f"{grown / result.tracked:,.0f}" if result.tracked else ""
        after = sorted(result.after_poll)
        first = f"{percentile(after, 99) * 1000:,.1f} ({len(after)})" if after else ""
        sizes = " / ".join(
            f"{t.bytes / 1024:,.0f}" if t else "" for t in (result.scrape_new, result.scrape_kept)
        )
        lines.append(
            f"| {result.scenario.name} | {result.api} | {result.exporter} | {result.tracked:,} "
            f"| {result.peak_rss / 2**20:,.0f} | {grown / 2**20:,.0f} | {per_task} "
            f"| {_latency(result.scrape_new)} | {_latency(result.scrape_kept)} | {first} | {sizes} "
            f"| {result.load} | {result.error or result.check} |"
        )
    lines += ["", *_ratios(results)]
    lines += [
        "",
        "| scenario | API | poll mode at the end (reason) | API check failures |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.scenario.name} | {r.api} | {r.modes} | {r.check_failures} |"
        for r in results
        if r.exporter == OURS
    ]
    return "\n".join(lines)


def _latency(times: ScrapeTimes | None) -> str:
    return "" if times is None else f"{times.p50 * 1000:.1f} / {times.p99 * 1000:.1f} ({times.scrapes:,})"


def _ratios(results: Sequence[Result]) -> list[str]:
    """Each figure of ours beside the naive exporter's in the same run: ours / naive (below 1: better)."""
    lines = [
        "| scenario | API | figure | ours | naive | ours / naive |",
        "|---|---|---|---:|---:|---:|",
    ]
    naive = {(r.scenario.name, r.api): r for r in results if r.exporter == NAIVE}
    for ours in results:
        other = naive.get((ours.scenario.name, ours.api))
        if ours.exporter != OURS or other is None:
            continue
        for figure, unit, value in _FIGURES:
            mine, theirs = value(ours), value(other)
            if mine is None or theirs is None:
                continue
            ratio = f"{mine / theirs:.3f}" if theirs else ""
            lines.append(
                f"| {ours.scenario.name} | {ours.api} | {figure} | {mine:,.2f} {unit} | {theirs:,.2f} {unit} "
                f"| {ratio} |"
            )
    return lines


def _full_cpu_per_task(result: Result) -> float | None:
    """µs of exporter CPU per task in its steady full listings (the first poll when there are none)."""
    polls = [p for p in result.polls if p.kind == "full"] or [p for p in result.polls if p.kind == "first"]
    return mean(p.cpu for p in polls) / result.scenario.tasks * 1e6 if polls else None


def _p99(times: ScrapeTimes | None) -> float | None:
    return None if times is None else times.p99 * 1000


_FIGURES: tuple[tuple[str, str, Callable[[Result], float | None]], ...] = (
    ("/metrics p99 while polling, new connections, no gzip", "ms", lambda r: _p99(r.scrape_new)),
    ("/metrics p99 while polling, kept alive, gzip", "ms", lambda r: _p99(r.scrape_kept)),
    (
        "first scrape after a poll, p99",
        "ms",
        lambda r: percentile(sorted(r.after_poll), 99) * 1000 if r.after_poll else None,
    ),
    ("exporter CPU per task, full listing", "µs", _full_cpu_per_task),
    (
        "exporter CPU per steady poll",
        "s",
        lambda r: mean(p.cpu for p in r.polls[1:]) if r.polls[1:] else None,
    ),
    (
        "API requests per steady poll",
        "",
        lambda r: mean(p.requests for p in r.polls[1:]) if r.polls[1:] else None,
    ),
    ("peak RSS", "MB", lambda r: r.peak_rss / 2**20),
)


def _endpoints(polls: Sequence[Poll]) -> str:
    """The mean requests per poll by endpoint, e.g. `tasks/list 5, namespaces/list 1`."""
    total: Counter[str] = Counter()
    for poll in polls:
        total.update(poll.endpoints)
    return ", ".join(
        f"{endpoint.removeprefix('/v1/')} {n / len(polls):,.3g}" for endpoint, n in sorted(total.items())
    )


def _poll_groups(polls: Sequence[Poll]) -> Iterator[tuple[str, list[Poll]]]:
    """The first poll, then the steady ones by kind, then all the steady ones when they are of two kinds."""
    for kind in ("first", "incremental", "full"):
        if of_kind := [p for p in polls if p.kind == kind]:
            yield kind, of_kind
    steady = [p for p in polls if p.kind != "first"]
    if len({p.kind for p in steady}) > 1:
        yield "steady (all)", steady


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[list[Scenario], list[str], Options, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        "--sizes",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated: tasks, or namespaces x tasks (default: {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--api",
        action="append",
        metavar="TEXT",
        help="a simulated API profile, e.g. timestamps or filters=ignored (repeatable; "
        f"default: {' and '.join(DEFAULT_APIS)}); see exporter/simulator/profile.py",
    )
    parser.add_argument("--steady-polls", type=int, default=10, help="polls after the first (default 10)")
    parser.add_argument(
        "--reconcile-every", type=int, help="MIXPEEK_RECONCILE_EVERY (default: the exporter's)"
    )
    parser.add_argument(
        "--page-concurrency", type=int, help="MIXPEEK_PAGE_CONCURRENCY (default: the exporter's)"
    )
    parser.add_argument(
        "--cursor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the API gives cursors (default)",
    )
    parser.add_argument("--churn", type=float, default=0.01, help="share of tasks changing per poll (0.01)")
    parser.add_argument("--active", type=float, default=0.025, help="share of tasks not finished (0.025)")
    parser.add_argument(
        "--hammer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scrapers hit /metrics while the steady polls run (default; their CPU then counts as the "
        "exporter's: --no-hammer for CPU figures)",
    )
    parser.add_argument("--scrape-concurrency", type=int, default=20, help="scrapers at once (20)")
    parser.add_argument(
        "--exporters",
        default=f"{OURS},{NAIVE}",
        help="comma-separated: ours, and the naive exporter (bench/naive.py) on the same simulated API "
        f"(default: {OURS},{NAIVE})",
    )
    parser.add_argument(
        "--switch-interval-ms", type=float, help="sys.setswitchinterval in the exporter's process, in ms"
    )
    parser.add_argument(
        "--refuse-lookup",
        action="store_true",
        help="answer the first `task_id in` lookup 422, for the cost of looking tasks up by GET",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile the last poll: its time by component and its N costliest functions",
    )
    parser.add_argument(
        "--sample", action="store_true", help="sample the last poll with py-spy: its time by component"
    )
    args = parser.parse_args(argv)
    if args.sample and args.profile:
        parser.error("--sample or --profile, not both: cProfile's cost would show in the samples")
    try:
        scenarios = [scenario(name.strip()) for name in args.scenarios.split(",") if name.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--scenarios: {exc}")
    apis = args.api or list(DEFAULT_APIS)
    for api in apis:
        try:
            ApiProfile.parse(api)
        except ValueError as exc:
            parser.error(f"--api {api!r}: {exc}")
    options = Options(
        steady_polls=args.steady_polls,
        reconcile_every=args.reconcile_every,
        page_concurrency=args.page_concurrency,
        cursor=args.cursor,
        churn=args.churn,
        active=args.active,
        hammer=args.hammer,
        scrape_concurrency=args.scrape_concurrency,
        switch_interval_ms=args.switch_interval_ms,
        interval=30.0,
        seed=args.seed,
        profile=args.profile,
        sample=args.sample,
        refuse_lookup=args.refuse_lookup,
    )
    exporters = [name.strip() for name in args.exporters.split(",") if name.strip()]
    if not exporters or set(exporters) - {OURS, NAIVE}:
        parser.error(f"--exporters: {OURS} and/or {NAIVE}")
    return scenarios, apis, options, exporters


def main(argv: Sequence[str] | None = None) -> None:
    scenarios, apis, options, exporters = parse_args(argv)
    started = time.perf_counter()
    results = []
    context = multiprocessing.get_context("spawn")
    for scenario in scenarios:
        for api in apis:
            for exporter in exporters:
                _progress(
                    f"{scenario.name} [{api}, {exporter}]: {scenario.namespaces} namespace(s) "
                    f"x {scenario.tasks_per_namespace:,} tasks"
                )
                # A fresh process per run: its peak RSS is this exporter's, not an earlier run's.
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                    results.append(pool.submit(run_scenario, scenario, api, options, exporter).result())
    print(report(results, options, time.perf_counter() - started))


if __name__ == "__main__":
    main()
