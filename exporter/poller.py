"""Schedules the polls, turns each complete listing into new state, and publishes the Snapshot.

Each namespace is polled on its own schedule, a bounded number at a time, so one slow or failing
namespace never delays or breaks another. A poll that fails part-way changes no task state, and a
failing batch listing never costs the task metrics.

What the documentation leaves open is verified on the way (exporter/checks.py): an incremental poll
relies on filters, a sort and id lookups, and falls back to plain full listings, or lookups one id at
a time, the moment the API is seen not to honour one; in `auto` scope, evidence that task routes ignore
X-Namespace moves polling to one listing for the organisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import structlog

from exporter.api import (
    NEWEST_FIRST,
    OLDEST_FIRST,
    ApiError,
    ApiHTTPError,
    EndOfListing,
    MixpeekClient,
    Reason,
    Task,
)
from exporter.checks import (
    INCREMENTAL_NEEDS,
    Check,
    CheckFailed,
    Evidence,
    NamespaceIsolation,
    active_only,
    asked_only,
    expected_id,
    header_value,
    newest_first,
    sorted_both_ways,
)
from exporter.config import Scope
from exporter.health import Change, batches_failed, batches_succeeded, poll_failed, poll_succeeded
from exporter.metrics import NamespaceHealth, Snapshot
from exporter.sharding import ALL_NAMESPACES, NamespaceFilter
from exporter.state import NamespaceState, Observation, label_value
from exporter.statefile import StateFile
from exporter.vocabulary import TERMINAL_STATUSES

UNKNOWN_NAMESPACE = "unknown"
# The active set, with the plainest operator there is (eq) under one NOT, so it does not depend on `in`
# or on how a server reads a NOT of several conditions; the answer is checked all the same.
ACTIVE_TASKS = {
    "NOT": [{"OR": [{"field": "status", "operator": "eq", "value": status} for status in TERMINAL_STATUSES]}]
}
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PollPlan:
    """What to poll: fixed namespaces, or discovered ones; per namespace, or once for the organisation."""

    namespaces: tuple[str, ...]
    scope: Scope
    interval: float
    concurrency: int
    buckets: tuple[float, ...]
    max_tracked: int | None = None
    batches: bool = False
    reconcile_every: int = 1
    """Polls per full listing of a namespace's tasks; the polls between fetch only what changed."""
    namespace_filter: NamespaceFilter = ALL_NAMESPACES
    """The namespaces this replica owns (its shard, allow, deny); the others get no series at all."""
    poll_timeout: float | None = None
    """How long one poll may hold its concurrency slot before it fails with reason timeout."""
    reprobe_after: float | None = None
    """Seconds after which a behaviour that failed its check is trusted (and checked) again."""


@dataclass(frozen=True)
class Fetched:
    """Everything one poll listed, by namespace, before any of it is applied."""

    tasks: Mapping[str, Observation]
    pages: int
    full: bool = True
    """Whether the tasks were listed completely (else: an incremental poll, see `_list_changes`)."""
    epoch: int = 0
    """The scope it was listed in: a poll that outlives a change of scope is void."""


class ListEverything(Exception):
    """An incremental poll cannot finish exactly, or cheaply: looking up one id at a time would take more
    requests than a full listing, or a namespace with no state to build on turned up."""


class ScopeChanged(Exception):
    """The poll found that task routes ignore X-Namespace; its results are void."""


@dataclass(frozen=True)
class _Listing:
    """The observations of one poll, the states they build on, and how a page of tasks reaches them."""

    observations: dict[str, Observation]
    states: Mapping[str, NamespaceState]
    sink: Callable[[list[Task]], int]

    def known(self, task_id: str) -> bool:
        """Whether a task id was tracked (or had gone) before this poll: the ground births stop at."""
        return any(task_id in state.tasks or task_id in state.gone for state in self.states.values())


class _OrganizationSink:
    """Takes the pages of the organisation's listing, split by namespace: the name discovery gives for a
    task's additional_data.namespace_id (its id when unknown), or a single `unknown` without one. Tasks of
    namespaces not polled here are skipped, each new to the listing once, so paging sees progress."""

    def __init__(
        self,
        observations: dict[str, Observation],
        names: Mapping[str, str],
        wanted: Iterable[str],
        owns: Callable[[str], bool],
        observe: Callable[[str], Observation] | None,
    ) -> None:
        self._observations = observations
        self._names = names
        self._wanted = set(wanted)
        self._owns = owns
        self._observe = observe
        """A new namespace's observation; None in an incremental poll, which has no baseline for one."""
        self._skipped: set[str] = set()

    def __call__(self, tasks: list[Task]) -> int:
        by_namespace: dict[str, list[Task]] = {}
        new = 0
        for task in tasks:
            namespace = self._namespace(task)
            if namespace and self._owns(namespace):
                by_namespace.setdefault(namespace, []).append(task)
            elif task.item_id not in self._skipped:
                self._skipped.add(task.item_id)
                new += 1
        for namespace, items in by_namespace.items():
            if namespace not in self._observations:
                if self._observe is None:  # no baseline to lay changes over: only a full listing is exact
                    raise ListEverything
                self._observations[namespace] = self._observe(namespace)
            new += self._observations[namespace].add(items)
        return new

    def _namespace(self, task: Task) -> str:
        """The label of the task's namespace; "" for one of a namespace not configured here."""
        namespace_id = task.namespace_id
        if namespace_id is None:
            return UNKNOWN_NAMESPACE
        name = self._names.get(namespace_id)
        if self._wanted and name not in self._wanted and namespace_id not in self._wanted:
            return ""
        return label_value(name or namespace_id)


class Poller:
    """Orchestrates the polls: when (schedules, concurrency, timeouts), what (discovery, scope, full or
    incremental listings), then hands each result on: task states to exporter/state.py, health to
    exporter/health.py, both to the state file and, in one assignment, to `snapshot`."""

    def __init__(
        self,
        client: MixpeekClient,
        plan: PollPlan,
        *,
        clock: Callable[[], float] = time.time,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        state_file: StateFile | None = None,
    ) -> None:
        self._client = client
        self._plan = plan
        self._clock = clock
        self._log = logger or structlog.get_logger("exporter.poller")
        self._limit = asyncio.Semaphore(plan.concurrency)
        self._discovered: tuple[str, ...] | None = None
        self._ids: dict[str, str] = {}
        """Namespace name -> id, from discovery: what a task's additional_data.namespace_id must say."""
        self._names: dict[str, str] = {}
        """Namespace id -> name, from discovery: how organisation-wide listings label tasks."""
        self._since_full: dict[str, int] = {}
        """Incremental polls since each namespace's last full listing."""
        self._listed = False
        """An organization listing has succeeded (in organization scope, that is readiness)."""
        self._evidence = Evidence(plan.reprobe_after, clock=clock, logger=self._log)
        self._isolation = NamespaceIsolation()
        self._organization = plan.scope is Scope.ORGANIZATION
        self._scope_reason = "configured" if plan.scope is not Scope.AUTO else "checks_pass"
        self._scope_verified = plan.scope is Scope.ORGANIZATION
        self._epoch = 0
        """Bumped at each change of scope."""
        self._discovery_failing: Reason | None = None
        self._rescoped = asyncio.Event()
        self._batch_modes: dict[str, str] = {}
        self._internal_errors: dict[str, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._dead: str | None = None
        self._state_file = state_file
        tasks, batches = state_file.load() if state_file else ({}, {})
        if plan.namespaces:
            tasks = {ns: state for ns, state in tasks.items() if ns in plan.namespaces}
            batches = {ns: state for ns, state in batches.items() if ns in plan.namespaces}
        # A state file written under other sharding or filter settings holds namespaces not owned here.
        owns = plan.namespace_filter.owns
        tasks = {ns: state for ns, state in tasks.items() if owns(ns)}
        batches = {ns: state for ns, state in batches.items() if owns(ns)}
        self._tasks: Mapping[str, NamespaceState] = tasks
        """Task states as of the last poll of each namespace (what the next poll builds on)."""
        self._batches: Mapping[str, NamespaceState] = batches
        self._health: Mapping[str, NamespaceHealth] = {}
        self._batch_health: Mapping[str, NamespaceHealth] = {}
        self._saved: tuple[Mapping[str, NamespaceState], Mapping[str, NamespaceState]] = (tasks, batches)
        """The states the state file holds: with one, what is published."""
        self.snapshot = Snapshot(namespaces=tasks, batches=batches)
        self._listeners: list[Callable[[], object]] = []

    def on_publish(self, listener: Callable[[], object]) -> None:
        """Call `listener` after each new snapshot (e.g. to render /metrics ahead of the scrapes)."""
        self._listeners.append(listener)

    @property
    def organization(self) -> bool:
        """Whether tasks are listed once for the organisation (configured, or the header check said so)."""
        return self._organization

    @property
    def targets(self) -> tuple[str, ...] | None:
        """The namespaces to poll (those this replica owns), or None while discovery has not succeeded yet."""
        if self._plan.namespaces:
            return tuple(ns for ns in self._plan.namespaces if self._plan.namespace_filter.owns(ns))
        if self._plan.scope is Scope.ORGANIZATION:
            return self._discovered or ()
        return self._discovered

    def ready(self) -> bool:
        """True once every namespace to poll has had one complete poll."""
        targets = self.targets
        if self._organization:  # owning none of the listed namespaces is fine, once listed
            return self._listed
        if targets is None:
            return False
        health = self._health
        return all(ns in health and health[ns].last_success is not None for ns in targets)

    def alive(self) -> bool:
        """False once a poll loop has died, which no poll should ever make happen: /healthz then fails,
        and Kubernetes restarts the pod rather than serve stale numbers as fresh."""
        return self._dead is None

    async def discover(self) -> tuple[str, ...] | None:
        """Refresh the namespaces (names and ids); keeps the last good list on failure.

        Configured namespaces need the list too in `auto` and organisation scope: to know the id a
        namespace's tasks must name, and the name an organisation-wide task is labelled with. (In
        `namespace` scope with configured namespaces, the user has settled the question: no request.)"""
        if self._plan.namespaces and self._plan.scope is Scope.NAMESPACE:
            return self.targets
        try:
            found = await self._client.list_namespaces()
        except ApiError as exc:
            if exc.reason != self._discovery_failing:
                self._log.warning("namespace discovery failed", reason=exc.reason, error=str(exc))
            self._discovery_failing = exc.reason
        else:
            self._discovery_failing = None
            self._ids = {ns.name: ns.namespace_id for ns in found if ns.namespace_id}
            self._names = {ns.namespace_id: ns.name for ns in found if ns.namespace_id}
            if not self._plan.namespaces:
                names = tuple(sorted({ns.name for ns in found if self._plan.namespace_filter.owns(ns.name)}))
                if names != self._discovered:
                    self._log.info("namespaces discovered", namespaces=list(names))
                self._discovered = names
                if not self._organization:
                    self._forget_except(names)
        self._publish()
        return self.targets

    async def poll_once(self) -> None:
        """Discover, check the scope when due, then poll every namespace once, concurrently in the bound."""
        targets = await self._refresh()
        if self._organization:
            await self.poll_organization()
        elif targets:
            await asyncio.gather(*(self.poll_namespace(ns) for ns in targets))
        await self.flush()  # with a state file, the results are published once it holds them

    async def verify_scope(self, targets: tuple[str, ...] | None) -> None:
        """Before namespace-scope polls (and again once per re-probe interval): list the newest tasks of
        each namespace once, and look for evidence that task routes ignore X-Namespace."""
        if self._plan.scope is not Scope.AUTO or not targets or len(targets) < 2:
            return  # one namespace's tasks are checked as they are polled; the probe compares two
        # In `auto` scope, only a failed header check moves polling to the organisation; once that
        # failure is forgotten (Evidence.forget_expired), the header is probed again.
        reprobe = self._organization and self._evidence.trusted(Check.NAMESPACE_HEADER)
        if self._scope_verified and not reprobe:
            return  # verified, and no re-probe due
        probe = NamespaceIsolation()
        try:
            for namespace in targets:
                tasks = await self._client.first_tasks(self._header(namespace), NEWEST_FIRST, probe.SAMPLE)
                probe.see(namespace, self._namespace_id(namespace), tasks, first_page=True)
        except CheckFailed as failure:
            self._evidence.fail(failure)
            if self._plan.scope is Scope.AUTO:
                self._rescope(organization=True)
        except ApiError:
            self._scope_verified = False  # the polls will say what is wrong; probe again next cycle
            return
        else:
            if self._organization:
                self._log.info("X-Namespace is honoured again on task routes: polling each namespace")
                self._rescope(organization=False)
        self._scope_verified = True

    async def poll_namespace(self, namespace: str) -> None:
        if self._organization:
            return  # the scope changed: this namespace's loop is about to be cancelled
        await self._poll((namespace,), partial(self._fetch_namespace, namespace), self._epoch)
        await self._poll_batches((namespace,))

    async def poll_organization(self) -> None:
        """One listing for the whole organisation, split by each task's additional_data.namespace_id."""
        if not self._organization:
            return  # the scope changed: this loop is about to be cancelled
        labels = tuple(self._tasks) or self.targets or (UNKNOWN_NAMESPACE,)
        await self._poll(labels, self._fetch_organization, self._epoch)
        # Batch routes take X-Namespace (declared there): every namespace, whatever its tasks say.
        owned = [self._names.get(ns, ns) for ns in self.targets or ()]
        await self._poll_batches(owned or [ns for ns in self._tasks if ns != UNKNOWN_NAMESPACE])

    async def _fetch_namespace(self, namespace: str, epoch: int) -> Fetched:
        """One namespace's tasks, built on its state as of now (after the wait for a slot)."""
        states = {namespace: self._previous(self._tasks, namespace)}
        return await self._fetch_tasks(namespace, states, self._clock(), epoch)

    async def _fetch_organization(self, epoch: int) -> Fetched:
        """Every namespace's tasks in one listing, built on their states as of now."""
        states = {namespace: self._previous(self._tasks, namespace) for namespace in self._tasks}
        return await self._fetch_tasks(None, states, self._clock(), epoch)

    async def _fetch_tasks(
        self, scope: str | None, states: dict[str, NamespaceState], now: float, epoch: int
    ) -> Fetched:
        """An incremental poll when there is a baseline and the API has honoured what it relies on, else a
        full listing; a check that fails during an incremental poll turns it into a full one at once."""
        header = None if scope is None else self._header(scope)
        if self._incremental(states):
            listing = self._listing(scope, states, now, partial=True)
            try:
                pages = await self._list_changes(header, states, listing)
            except CheckFailed as failure:
                self._evidence.fail(failure, namespace=scope or "organization")
            except ListEverything:
                pass
            else:
                return Fetched(listing.observations, pages, full=False, epoch=epoch)
        listing = self._listing(scope, states, now, partial=False)
        pages = await self._list_all(header, listing)
        return Fetched(listing.observations, pages, full=True, epoch=epoch)

    def _listing(
        self, scope: str | None, states: dict[str, NamespaceState], now: float, *, partial: bool
    ) -> _Listing:
        observations = {
            ns: Observation(state, now, self._plan.max_tracked, partial=partial)
            for ns, state in states.items()
        }
        sink: Callable[[list[Task]], int]
        if scope is not None:
            sink = self._namespace_sink(scope, observations[scope])
        else:
            observe = None if partial else self._observer(states, now)
            plan = self._plan
            sink = _OrganizationSink(
                observations, self._names, plan.namespaces, plan.namespace_filter.owns, observe
            )
        return _Listing(observations, states, sink)

    def _observer(self, states: Mapping[str, NamespaceState], now: float) -> Callable[[str], Observation]:
        """How a complete organisation listing starts observing a namespace it finds."""
        return lambda namespace: Observation(self._previous(states, namespace), now, self._plan.max_tracked)

    def _namespace_sink(self, namespace: str, observation: Observation) -> Callable[[list[Task]], int]:
        """Pages of one namespace's listing, checked for tasks of other namespaces before they count."""
        namespace_id = self._namespace_id(namespace)
        first = [True]

        def sink(tasks: list[Task]) -> int:
            try:
                self._isolation.see(namespace, namespace_id, tasks, first_page=first[0])
            except CheckFailed as failure:
                self._evidence.fail(failure, namespace=namespace)
                if self._plan.scope is Scope.AUTO:
                    self._rescope(organization=True)
                    raise ScopeChanged from None
            first[0] = first[0] and not tasks  # the sample is of the first page that has tasks
            return observation.add(tasks)

        return sink

    def _incremental(self, states: Mapping[str, NamespaceState]) -> bool:
        """Between full listings, once there is a baseline to build on, and while the API honours the
        filters and the sort an incremental poll relies on. A state with untracked tasks (the cap) cannot
        be followed by changes alone."""
        if not states or self._evidence.distrusted(INCREMENTAL_NEEDS) is not None:
            return False
        for namespace, state in states.items():
            since_full = self._since_full.get(namespace)  # None: no full listing yet in this process
            if since_full is None or since_full + 1 >= self._plan.reconcile_every:
                return False
            if state.polled_at is None or state.untracked:
                return False
        return True

    async def _list_all(self, header: str | None, listing: _Listing) -> int:
        """Every task, newest first. When incremental polls are to follow, also check (one request) that
        the API sorts as asked: births are read from the newest until known ground."""
        newest: list[Task] = []
        listed = 0

        def sink(tasks: list[Task]) -> int:
            nonlocal listed
            if not newest and tasks:
                newest.append(tasks[0])
            listed += len(tasks)
            self._checked(newest_first, tasks)
            return listing.sink(tasks)

        pages = await self._client.walk_tasks(header, sink)
        incremental_follows = self._evidence.distrusted(INCREMENTAL_NEEDS) is None
        if self._plan.reconcile_every > 1 and listed >= 2 and incremental_follows:
            oldest = await self._client.first_tasks(header, OLDEST_FIRST)
            pages += 1
            self._checked(sorted_both_ways, newest[0], oldest[0] if oldest else None, listed)
        return pages

    def _checked(self, check: Callable[..., None], *args: object) -> None:
        """Run a check whose failure changes how the next polls are made, not this one's result."""
        try:
            check(*args)
        except CheckFailed as failure:
            self._evidence.fail(failure)

    async def _list_changes(
        self, header: str | None, states: Mapping[str, NamespaceState], listing: _Listing
    ) -> int:
        """An incremental poll, with documented features only: the active set (a status filter), the
        births (newest first, until a page reaches tasks already known), then the tasks that left the
        active set, by id. Every answer is checked; a failed check raises CheckFailed."""

        def active(tasks: list[Task]) -> int:
            active_only(tasks)
            return listing.sink(tasks)

        born: set[str] = set()

        def births(tasks: list[Task]) -> int:
            """Returns the births this walk had not read yet: those the active set listed already are
            progress too, and a burst of them must not look like a cursor loop (MAX_BARREN_PAGES)."""
            newest_first(tasks)
            listing.sink(tasks)
            if any(listing.known(task.item_id) for task in tasks):
                raise EndOfListing
            unread = {task.item_id for task in tasks} - born
            born.update(unread)
            return len(unread)

        try:
            pages = await self._client.walk_tasks(header, active, ACTIVE_TASKS)
        except ApiHTTPError as exc:
            if not exc.refused:
                raise
            raise CheckFailed(Check.FILTER_REFUSED, f"the active-set filter was refused: {exc}") from None
        pages += await self._client.walk_tasks(header, births)
        observations = listing.observations
        left = sorted(
            task_id
            for namespace, state in states.items()
            for task_id in state.active
            if not observations[namespace].listed(task_id)
        )
        pages += await self._look_up(
            header, left, listing.sink, _listing_pages(states, self._client.page_size)
        )
        for namespace, state in states.items():
            observations[namespace].vanish(state.active)
        return pages

    async def _look_up(
        self, header: str | None, task_ids: Sequence[str], sink: Callable[[list[Task]], int], full_cost: int
    ) -> int:
        """The tasks among `task_ids` that still exist, into `sink`: by `task_id in` lookups of a page of
        ids each, checked, else one GET per id (documented), unless those GETs would take more requests than
        a full listing (`full_cost`): then ListEverything. Returns the requests made."""
        requests = 0
        size = self._client.page_size
        for start in range(0, len(task_ids), size):
            chunk = task_ids[start : start + size]
            if self._evidence.trusted(Check.ID_LOOKUP):
                try:
                    requests += 1
                    found = await self._look_up_in(header, chunk)
                except CheckFailed as failure:
                    self._evidence.fail(failure, namespace=header or "organization")
                else:
                    missing = [task_id for task_id in chunk if task_id not in found]
                    sink(list(found.values()))
                    requests += await self._get_each(header, missing, sink, verify=True)
                    continue
            if len(task_ids) - start > full_cost:
                raise ListEverything
            requests += await self._get_each(header, chunk, sink, verify=False)
        return requests

    async def _look_up_in(self, header: str | None, chunk: Sequence[str]) -> dict[str, Task]:
        try:
            tasks = await self._client.lookup_tasks(header, chunk)
        except ApiHTTPError as exc:
            if not exc.refused:
                raise
            raise CheckFailed(Check.ID_LOOKUP, f"the task_id lookup was refused: {exc}") from None
        return {task.item_id: task for task in asked_only(tasks, frozenset(chunk))}

    async def _get_each(
        self, header: str | None, task_ids: Sequence[str], sink: Callable[[list[Task]], int], *, verify: bool
    ) -> int:
        """GET each task; with `verify`, these are tasks a lookup did not return: finding one means the
        lookup was incomplete."""
        for task_id in task_ids:
            task = await self._client.get_task(header, task_id)
            if task is None:
                continue
            if verify and self._evidence.trusted(Check.ID_LOOKUP):
                self._evidence.fail(
                    CheckFailed(
                        Check.ID_LOOKUP, f"task {task_id} exists but a lookup of its id did not return it"
                    )
                )
            sink([task])
        return len(task_ids)

    def _previous(self, states: Mapping[str, NamespaceState], namespace: str) -> NamespaceState:
        """What a listing of the namespace builds on. `newest`: if an apply failed after taking a state's
        task table over, its result is the truth (its counters hold what it counted), not the state before."""
        state = states.get(namespace)
        return NamespaceState(buckets=self._plan.buckets) if state is None else state.newest

    def _header(self, namespace: str) -> str:
        return header_value(namespace, self._ids)

    def _namespace_id(self, namespace: str) -> str | None:
        return expected_id(namespace, self._ids)

    async def run(self) -> None:
        """Poll until cancelled: one loop per namespace (or one for the organisation), discovery and the
        scope check refreshed every interval or as soon as the scope changes."""
        loops = self._loops
        try:
            while True:
                targets = await self._refresh()
                wanted = ("",) if self._organization else (targets or ())
                for target in set(loops) - set(wanted):
                    loops.pop(target).cancel()
                for target, loop in list(loops.items()):
                    if loop.done() and not loop.cancelled():
                        self._died(f"the poll loop of {target or 'the organization'} ended")
                for target in wanted:
                    if target not in loops:
                        loops[target] = asyncio.create_task(self._loop(target))
                self._rescoped.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rescoped.wait(), self._plan.interval)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._died(f"the poller stopped: {type(exc).__name__}")
            raise
        finally:
            for loop in loops.values():
                loop.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _loop(self, target: str) -> None:
        while True:
            started = time.monotonic()
            if not target:
                await self._guarded("poll", self.poll_organization)
            else:
                await self._guarded("poll", lambda: self.poll_namespace(target))
            await asyncio.sleep(max(0.0, self._plan.interval - (time.monotonic() - started)))

    def _died(self, why: str) -> None:
        if self._dead is None:
            self._log.error("poll loop died: /healthz now fails so that the pod is restarted", why=why)
        self._dead = why

    async def _refresh(self) -> tuple[str, ...] | None:
        """Once per cycle: forget expired check failures, discover, verify the scope."""
        self._evidence.forget_expired()
        targets = await self._guarded("discovery", self.discover)
        await self._guarded("scope", partial(self.verify_scope, targets))
        return targets

    async def _guarded(self, stage: str, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run one stage; an exception nobody expected is logged (with its traceback, once per kind) and
        counted, and the loop goes on."""
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._internal(stage, exc)
            self._publish()
            return None

    def internal_error(self, stage: str, exc: BaseException) -> None:
        """An unexpected exception outside the poll loops (e.g. rendering /metrics): logged once per kind
        with its traceback, and counted with the others. Call it on the poller's event loop."""
        self._internal(stage, exc)
        self._publish()

    def _internal(self, stage: str, exc: BaseException) -> None:
        """Count an unexpected exception; log it with its traceback once per kind, then at debug."""
        self._internal_errors[stage] = self._internal_errors.get(stage, 0) + 1
        kind = (stage, type(exc).__name__)
        if kind not in self._reported:
            self._reported.add(kind)
            self._log.error("unexpected error; the poll loop goes on", stage=stage, exc_info=exc)
        else:
            self._log.debug("unexpected error again", stage=stage, error=type(exc).__name__)

    async def _run_listing(
        self, stage: str, listing: Callable[[], Awaitable[R]], failed: Callable[[Reason, str], None]
    ) -> R | None:
        """Run one listing within the poll timeout. A failure is handed to `failed` as (reason, error),
        the bounded label and the log line, and gives None: an ApiError its own reason, the timeout
        `timeout`, an exception nobody expected `internal` (counted by stage). A scope change gives None
        alone: the listing is void, not failed."""
        try:
            async with asyncio.timeout(self._plan.poll_timeout):
                return await listing()
        except ApiError as exc:
            failed(exc.reason, str(exc))
        except TimeoutError:
            failed(
                Reason.TIMEOUT,
                f"the {stage} stage took longer than the poll timeout, {self._plan.poll_timeout} s",
            )
        except ScopeChanged:
            pass
        except Exception as exc:
            self._internal(stage, exc)
            failed(Reason.INTERNAL, f"{type(exc).__name__} in {stage}")
        return None

    async def _poll(
        self, labels: tuple[str, ...], fetch: Callable[[int], Awaitable[Fetched]], epoch: int
    ) -> None:
        """Fetch every listing of a poll, then apply them all; if any fails, record it and change nothing.
        A poll that waited for its slot while the scope changed is void."""
        failed = partial(self._failed, labels)
        async with self._limit:
            if epoch != self._epoch:
                return
            started = time.perf_counter()
            fetched = await self._run_listing("poll", partial(fetch, epoch), failed)
        if fetched is None:
            return
        try:
            self._apply(fetched, time.perf_counter() - started)
        except Exception as exc:
            self._internal("state", exc)
            failed(Reason.INTERNAL, f"{type(exc).__name__} in state")

    def _apply(self, fetched: Fetched, duration: float) -> None:
        if fetched.epoch != self._epoch:
            return
        now = self._clock()
        self._listed = True
        namespaces = dict(self._tasks)
        health = dict(self._health)
        if self._organization:  # the listing says which namespaces exist; drop placeholders
            health = {ns: h for ns, h in health.items() if ns in fetched.tasks}
        for namespace, observation in fetched.tasks.items():
            previous = observation.previous
            namespaces[namespace] = state = observation.result()
            self._since_full[namespace] = 0 if fetched.full else self._since_full.get(namespace, 0) + 1
            change = poll_succeeded(health.get(namespace), now, duration, full=fetched.full)
            health[namespace] = change.health
            self._say(change, namespace)
            if state.untracked and not previous.untracked:
                self._log.warning(
                    "tracking cap reached: transitions of the oldest tasks are not counted",
                    namespace=namespace,
                    max_tracked_tasks=self._plan.max_tracked,
                    untracked=state.untracked,
                )
            elif previous.untracked and not state.untracked:
                self._log.info("tracking cap no longer reached", namespace=namespace)
            self._log.info(
                "poll complete",
                namespace=namespace,
                pages=fetched.pages,
                full=fetched.full,
                tasks=state.tracked,
                duration_seconds=round(duration, 3),
            )
        self._publish(namespaces=namespaces, health=health)
        self._save()

    async def _poll_batches(self, namespaces: Iterable[str]) -> None:
        """Batches after tasks, apart: a failing batch listing fails only the batch metrics."""
        if not self._plan.batches:
            return
        for namespace in namespaces:
            async with self._limit:
                now, started = self._clock(), time.perf_counter()
                listing = partial(self._batch_state, namespace, now)
                state = await self._run_listing("batches", listing, partial(self._batch_failed, namespace))
            if state is None:
                continue
            change = batches_succeeded(self._batch_health.get(namespace), now, time.perf_counter() - started)
            self._say(change, namespace)
            self._publish(
                batches={**self._batches, namespace: state},
                batch_health={**self._batch_health, namespace: change.health},
            )
            self._save()

    async def _batch_state(self, namespace: str, now: float) -> NamespaceState:
        """A namespace's batch state after one complete batch listing."""
        observation = Observation(self._previous(self._batches, namespace), now, self._plan.max_tracked)
        await self._list_batches(namespace, observation)
        return observation.result()

    async def _list_batches(self, namespace: str, observation: Observation) -> None:
        """POST /v1/batches/list while it exists; else the 0.81 spec's buckets, then each one's batches.
        (A 404 comes on the first page, before anything is added.)"""
        if self._evidence.trusted(Check.BATCHES_ROUTE):
            try:
                await self._client.walk_batches(self._header(namespace), observation.add)
            except ApiHTTPError as exc:
                if exc.status_code != 404:
                    raise
                await self._client.walk_bucket_batches(self._header(namespace), observation.add)
                self._evidence.fail(
                    CheckFailed(
                        Check.BATCHES_ROUTE, "POST /v1/batches/list answered 404; per-bucket listings work"
                    )
                )
            else:
                self._batch_modes[namespace] = "batches_list"
                return
        self._batch_modes[namespace] = "per_bucket"
        await self._client.walk_bucket_batches(self._header(namespace), observation.add)

    def _batch_failed(self, namespace: str, reason: Reason, error: str) -> None:
        change = batches_failed(self._batch_health.get(namespace), reason)
        self._say(change, namespace, reason=reason, error=error)
        self._publish(batch_health={**self._batch_health, namespace: change.health})

    def _save(self) -> None:
        """Queue a save of the states; with a state file they are published once it holds them."""
        if self._state_file is not None:
            self._state_file.save_soon(self._tasks, self._batches, self._on_saved)

    def _on_saved(self, tasks: Mapping[str, NamespaceState], batches: Mapping[str, NamespaceState]) -> None:
        """Publish what the state file now holds: a restart restores counters no lower than those served.
        (Namespaces dropped since the save began stay dropped.)"""
        self._saved = (
            {ns: state for ns, state in tasks.items() if ns in self._tasks},
            {ns: state for ns, state in batches.items() if ns in self._batches},
        )
        self._publish()

    async def flush(self) -> None:
        """Wait until the state file holds the last poll (no-op without one)."""
        if self._state_file is not None:
            await self._state_file.flush()
            self._publish()  # so the write counts show now, not after the next poll

    def _failed(self, labels: Iterable[str], reason: Reason, error: str) -> None:
        health = dict(self._health)
        for namespace in labels:
            change = poll_failed(health.get(namespace), reason)
            health[namespace] = change.health
            self._say(change, namespace, reason=reason, error=error)
        self._publish(health=health)

    def _say(self, change: Change, namespace: str, **fields: object) -> None:
        """Write the log line a change of health is worth, if any (exporter/health.py decides)."""
        if change.notice is not None:
            if change.after is not None:
                fields["after"] = change.after
            self._log.log(change.notice.level, change.notice.event, namespace=namespace, **fields)

    def _rescope(self, *, organization: bool) -> None:
        """Switch between namespace and organisation scope. What was listed in the other scope is dropped:
        after a header turned out to be ignored, it counted the organisation under each namespace."""
        if organization == self._organization:
            return
        self._organization = organization
        self._epoch += 1
        self._scope_reason = Check.NAMESPACE_HEADER.value if organization else "checks_pass"
        self._log.warning(
            "task routes ignore X-Namespace: listing the organisation once, labelled by namespace_id"
            if organization
            else "polling each namespace with X-Namespace",
        )
        self._since_full.clear()
        self._isolation.forget()
        if self._state_file is not None:
            self._state_file.listing_in("organization" if organization else "namespace")
        self._listed = False
        self._saved = ({}, self._saved[1])
        self._publish(namespaces={}, health={})
        self._save()
        self._rescoped.set()

    def _forget_except(self, names: Iterable[str]) -> None:
        """Drop the series of namespaces that no longer exist."""
        keep = set(names)

        def kept(states: Mapping[str, T]) -> dict[str, T]:
            return {ns: state for ns, state in states.items() if ns in keep}

        self._saved = (kept(self._saved[0]), kept(self._saved[1]))
        self._publish(
            namespaces=kept(self._tasks),
            batches=kept(self._batches),
            health=kept(self._health),
            batch_health=kept(self._batch_health),
        )

    def _modes(
        self, health: Iterable[str], states: Mapping[str, NamespaceState], batches: Iterable[str]
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """How each namespace is polled, and why: (namespace, resource) -> (mode, reason)."""
        task_mode = self._task_mode()
        modes: dict[tuple[str, str], tuple[str, str]] = {}
        for namespace in health:
            state = states.get(namespace)
            if task_mode[0] != "full" and state is not None and state.untracked:
                modes[(namespace, "tasks")] = ("full", "tracking_cap")
            else:
                modes[(namespace, "tasks")] = task_mode
        for namespace in batches:
            mode = self._batch_modes.get(namespace, "batches_list")
            reason = Check.BATCHES_ROUTE.value if mode == "per_bucket" else "checks_pass"
            modes[(namespace, "batches")] = (mode, reason)
        return modes

    def _task_mode(self) -> tuple[str, str]:
        if self._plan.reconcile_every <= 1:
            return ("full", "configured")
        if (check := self._evidence.distrusted(INCREMENTAL_NEEDS)) is not None:
            return ("full", check.value)
        if not self._evidence.trusted(Check.ID_LOOKUP):
            return ("by_id", Check.ID_LOOKUP.value)
        return ("incremental", "checks_pass")

    def _publish(
        self,
        namespaces: Mapping[str, NamespaceState] | None = None,
        batches: Mapping[str, NamespaceState] | None = None,
        health: Mapping[str, NamespaceHealth] | None = None,
        batch_health: Mapping[str, NamespaceHealth] | None = None,
    ) -> None:
        """Take the changes given, then swap in a new snapshot in one assignment: readers see the old one or
        the new one. With a state file, the task and batch states shown are those it holds."""
        if namespaces is not None:
            self._tasks = namespaces
        if batches is not None:
            self._batches = batches
        if health is not None:
            self._health = health
        if batch_health is not None:
            self._batch_health = batch_health
        shown = self._saved if self._state_file is not None else (self._tasks, self._batches)
        self.snapshot = Snapshot(
            namespaces=shown[0],
            batches=shown[1],
            health=self._health,
            batch_health=self._batch_health,
            api_requests=dict(self._client.requests),
            invalid_values=dict(self._client.invalid_values),
            state_writes=dict(self._state_file.writes) if self._state_file else {},
            check_failures={check.value: n for check, n in self._evidence.failures.items()},
            internal_errors=dict(self._internal_errors),
            scope=("organization" if self._organization else "namespace", self._scope_reason),
            modes=self._modes(self._health, self._tasks, self._batches if self._plan.batches else ()),
        )
        for listener in self._listeners:
            listener()


def _listing_pages(states: Mapping[str, NamespaceState], page_size: int) -> int:
    """About what a full listing of these states costs in requests."""
    return sum(state.tracked for state in states.values()) // page_size + 1
