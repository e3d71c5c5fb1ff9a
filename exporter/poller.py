"""Schedules the polls, turns each complete listing into new state, and publishes the Snapshot.

Each namespace is polled on its own schedule, a bounded number at a time, so one slow or failing
namespace never delays or breaks another. A poll that fails part-way changes no task state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from exporter.api import ApiError, MixpeekClient, Task
from exporter.histogram import Histogram
from exporter.metrics import POLL_DURATION_BUCKETS, NamespaceHealth, Snapshot
from exporter.sharding import ALL_NAMESPACES, NamespaceFilter
from exporter.state import NamespaceState, Observation, label_value
from exporter.statefile import StateFile
from exporter.vocabulary import TERMINAL_STATUSES

UNKNOWN_NAMESPACE = "unknown"
# An incremental poll re-reads tasks created this long before the newest it knows, for tasks that show
# up in listings a little after their created_at (or with a clock a little behind).
BIRTH_SLACK_SECONDS = 120.0


@dataclass(frozen=True)
class PollPlan:
    """What to poll: fixed namespaces, or discovered ones; per namespace, or once for the organisation."""

    namespaces: tuple[str, ...]
    organization: bool
    interval: float
    concurrency: int
    buckets: tuple[float, ...]
    max_tracked: int | None = None
    batches: bool = False
    reconcile_every: int = 1
    """Polls per full listing of a namespace's tasks; the polls between fetch only what changed."""
    namespace_filter: NamespaceFilter = ALL_NAMESPACES
    """The namespaces this replica owns (its shard, allow, deny); the others get no series at all."""


@dataclass(frozen=True)
class Fetched:
    """Everything one poll listed, by namespace, before any of it is applied."""

    tasks: Mapping[str, Observation]
    batches: Mapping[str, Observation]
    pages: int
    full: bool = True
    """Whether the tasks were listed completely (else: an incremental poll, see `_list_changes`)."""


class Poller:
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
        self._since_full: dict[str, int] = {}
        """Incremental polls since each namespace's last full listing."""
        self._listed = False
        """An organization listing has succeeded (in organization scope, that is readiness)."""
        self._state_file = state_file
        tasks, batches = state_file.load() if state_file else ({}, {})
        if plan.namespaces:
            tasks = {ns: state for ns, state in tasks.items() if ns in plan.namespaces}
            batches = {ns: state for ns, state in batches.items() if ns in plan.namespaces}
        # A state file written under other sharding or filter settings holds namespaces not owned here.
        owns = plan.namespace_filter.owns
        tasks = {ns: state for ns, state in tasks.items() if owns(ns)}
        batches = {ns: state for ns, state in batches.items() if owns(ns)}
        self.snapshot = Snapshot(namespaces=tasks, batches=batches)

    @property
    def targets(self) -> tuple[str, ...] | None:
        """The namespaces to poll (those this replica owns), or None while discovery has not succeeded yet."""
        if self._plan.organization or self._plan.namespaces:
            return tuple(ns for ns in self._plan.namespaces if self._plan.namespace_filter.owns(ns))
        return self._discovered

    def ready(self) -> bool:
        """True once every namespace to poll has had one complete poll."""
        targets = self.targets
        if targets is None:
            return False
        if self._plan.organization:  # owning none of the listed namespaces is fine, once listed
            return self._listed
        health = self.snapshot.health
        return all(ns in health and health[ns].last_success is not None for ns in targets)

    async def discover(self) -> tuple[str, ...] | None:
        """Refresh the namespace list when none is configured; keeps the last good list on failure."""
        if self._plan.organization or self._plan.namespaces:
            return self.targets
        try:
            found = await self._client.list_namespaces()
        except ApiError as exc:
            self._log.warning("namespace discovery failed", reason=exc.reason, error=str(exc))
        else:
            names = tuple(sorted({ns.name for ns in found if self._plan.namespace_filter.owns(ns.name)}))
            if names != self._discovered:
                self._log.info("namespaces discovered", namespaces=list(names))
            self._discovered = names
            self._forget_except(names)
        self._publish()
        return self._discovered

    async def poll_once(self) -> None:
        """Discover if needed, then poll every namespace once, concurrently within the bound."""
        targets = await self.discover()
        if self._plan.organization:
            await self.poll_organization()
        elif targets:
            await asyncio.gather(*(self.poll_namespace(ns) for ns in targets))

    async def poll_namespace(self, namespace: str) -> None:
        async def fetch() -> Fetched:
            now = self._clock()
            previous = {namespace: self._previous(self.snapshot.namespaces, namespace)}
            incremental = self._incremental(previous)
            observation = Observation(previous[namespace], now, self._plan.max_tracked, partial=incremental)
            if incremental:
                pages = await self._list_changes(
                    namespace, previous, {namespace: observation}, observation.add
                )
            else:
                pages = await self._client.walk_tasks(namespace, observation.add)
            batches = await self._batches((namespace,), now)
            return Fetched({namespace: observation}, batches, pages, full=not incremental)

        await self._poll((namespace,), fetch)

    async def poll_organization(self) -> None:
        """One listing for the whole organisation, split by each task's additional_data.namespace_id."""

        async def fetch() -> Fetched:
            now = self._clock()
            wanted = set(self._plan.namespaces)
            states = self.snapshot.namespaces
            incremental = self._incremental(states)
            observations = {
                ns: Observation(self._previous(states, ns), now, self._plan.max_tracked, partial=incremental)
                for ns in states
            }

            def route(tasks: list[Task]) -> int:
                by_namespace: dict[str, list[Task]] = {}
                for task in tasks:
                    namespace = label_value(task.namespace_id) if task.namespace_id else UNKNOWN_NAMESPACE
                    if (not wanted or namespace in wanted) and self._plan.namespace_filter.owns(namespace):
                        by_namespace.setdefault(namespace, []).append(task)
                new = 0
                for namespace, items in by_namespace.items():
                    if namespace not in observations:
                        previous = self._previous(states, namespace)
                        observations[namespace] = Observation(
                            previous, now, self._plan.max_tracked, partial=incremental
                        )
                    new += observations[namespace].add(items)
                return new

            if incremental:
                pages = await self._list_changes(None, states, observations, route)
            else:
                pages = await self._client.walk_tasks(None, route)
            batches = await self._batches(tuple(ns for ns in observations if ns != UNKNOWN_NAMESPACE), now)
            return Fetched(observations, batches, pages, full=not incremental)

        await self._poll(tuple(self.snapshot.namespaces) or self.targets or (UNKNOWN_NAMESPACE,), fetch)

    def _incremental(self, states: Mapping[str, NamespaceState]) -> bool:
        """Between full listings, and only once there is a baseline to build on: a state with untracked
        tasks (the cap) or without creation times cannot be followed by changes alone."""
        if not states:
            return False
        for namespace, state in states.items():
            since_full = self._since_full.get(namespace)  # None: no full listing yet in this process
            if since_full is None or since_full + 1 >= self._plan.reconcile_every:
                return False
            if state.polled_at is None or state.untracked:
                return False
        return any(state.newest is not None for state in states.values())

    async def _list_changes(
        self,
        scope: str | None,
        states: Mapping[str, NamespaceState],
        observations: Mapping[str, Observation],
        sink: Callable[[list[Task]], int],
    ) -> int:
        """An incremental poll: every task that is active or born since the last poll (one listing),
        then, by id, the tasks that were active and are no longer in it (finished, or gone)."""
        newest = max(state.newest for state in states.values() if state.newest is not None)
        since = datetime.fromtimestamp(newest - BIRTH_SLACK_SECONDS, UTC).isoformat()
        where = {
            "OR": [
                {"NOT": [{"field": "status", "operator": "in", "value": list(TERMINAL_STATUSES)}]},
                {"field": "created_at", "operator": "gte", "value": since},
            ]
        }
        pages = await self._client.walk_tasks(scope, sink, where)
        left = sorted(
            task_id
            for namespace, state in states.items()
            for task_id in state.active
            if not observations[namespace].listed(task_id)
        )
        pages += await self._client.find_tasks(scope, left, sink)
        for namespace, state in states.items():
            observations[namespace].vanish(state.active)
        return pages

    def _previous(self, states: Mapping[str, NamespaceState], namespace: str) -> NamespaceState:
        return states.get(namespace) or NamespaceState(buckets=self._plan.buckets)

    async def _batches(self, namespaces: tuple[str, ...], now: float) -> dict[str, Observation]:
        if not self._plan.batches:
            return {}
        observations = {}
        for ns in namespaces:
            previous = self._previous(self.snapshot.batches, ns)
            observations[ns] = Observation(previous, now, self._plan.max_tracked)
            await self._client.walk_batches(ns, observations[ns].add)
        return observations

    async def run(self) -> None:
        """Poll until cancelled: one loop per namespace, discovery refreshed every interval."""
        loops: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                targets = await self.discover()
                wanted = ("",) if self._plan.organization else (targets or ())
                for target in set(loops) - set(wanted):
                    loops.pop(target).cancel()
                for target in wanted:
                    if target not in loops:
                        loops[target] = asyncio.create_task(self._loop(target))
                await asyncio.sleep(self._plan.interval)
        finally:
            for loop in loops.values():
                loop.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _loop(self, target: str) -> None:
        while True:
            started = time.monotonic()
            if self._plan.organization:
                await self.poll_organization()
            else:
                await self.poll_namespace(target)
            await asyncio.sleep(max(0.0, self._plan.interval - (time.monotonic() - started)))

    async def _poll(self, labels: tuple[str, ...], fetch: Callable[[], Awaitable[Fetched]]) -> None:
        """Fetch every listing of a poll, then apply them all; if any fails, record it and change nothing."""
        async with self._limit:
            started = time.perf_counter()
            try:
                fetched = await fetch()
            except ApiError as exc:
                self._failed(labels, exc)
                return
        self._apply(fetched, time.perf_counter() - started)

    def _apply(self, fetched: Fetched, duration: float) -> None:
        now = self._clock()
        self._listed = True
        namespaces = dict(self.snapshot.namespaces)
        batches = dict(self.snapshot.batches)
        health = dict(self.snapshot.health)
        if self._plan.organization:  # the listing says which namespaces exist; drop placeholders
            health = {ns: h for ns, h in health.items() if ns in fetched.tasks}
        for namespace, observation in fetched.batches.items():
            batches[namespace] = observation.result()
        for namespace, observation in fetched.tasks.items():
            previous = observation.previous
            namespaces[namespace] = state = observation.result()
            self._since_full[namespace] = 0 if fetched.full else self._since_full.get(namespace, 0) + 1
            before = health.get(namespace) or _new_health()
            health[namespace] = replace(
                before,
                up=True,
                last_success=now,
                poll_durations=before.poll_durations.observe(duration),
                failing=None,
            )
            if before.failing is not None:
                self._log.info("poll recovered", namespace=namespace, after=before.failing)
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
                tasks=len(state.tasks),
                batches=len(batches[namespace].tasks) if namespace in fetched.batches else None,
                duration_seconds=round(duration, 3),
            )
        self._publish(namespaces=namespaces, batches=batches, health=health)
        if self._state_file is not None:
            self._state_file.save_soon(namespaces, batches)

    async def flush(self) -> None:
        """Wait until the state file holds the last poll (no-op without one)."""
        if self._state_file is not None:
            await self._state_file.flush()
            self._publish()  # so the write counts show now, not after the next poll

    def _failed(self, labels: tuple[str, ...], exc: ApiError) -> None:
        health = dict(self.snapshot.health)
        for namespace in labels:
            before = health.get(namespace) or _new_health()
            errors = dict(before.errors)
            errors[exc.reason] = errors.get(exc.reason, 0) + 1
            health[namespace] = replace(before, up=False, errors=errors, failing=exc.reason)
            if exc.reason != "unauthorized":
                self._log.warning("poll failed", namespace=namespace, reason=exc.reason, error=str(exc))
            elif before.failing != "unauthorized":
                # Once per change, not every poll: the key stays rejected until someone rotates it.
                self._log.error(
                    "poll failed: API key rejected", namespace=namespace, reason=exc.reason, error=str(exc)
                )
            else:
                self._log.debug("poll failed: API key still rejected", namespace=namespace)
        self._publish(health=health)

    def _forget_except(self, names: Iterable[str]) -> None:
        """Drop the series of namespaces that no longer exist."""
        keep = set(names)
        namespaces = {ns: s for ns, s in self.snapshot.namespaces.items() if ns in keep}
        batches = {ns: s for ns, s in self.snapshot.batches.items() if ns in keep}
        health = {ns: h for ns, h in self.snapshot.health.items() if ns in keep}
        self._publish(namespaces=namespaces, batches=batches, health=health)

    def _publish(
        self,
        namespaces: Mapping[str, NamespaceState] | None = None,
        batches: Mapping[str, NamespaceState] | None = None,
        health: Mapping[str, NamespaceHealth] | None = None,
    ) -> None:
        """Swap in a new snapshot in one assignment: readers see the old one or the new one."""
        current = self.snapshot
        self.snapshot = Snapshot(
            namespaces=current.namespaces if namespaces is None else namespaces,
            batches=current.batches if batches is None else batches,
            health=current.health if health is None else health,
            api_requests=dict(self._client.requests),
            invalid_values=dict(self._client.invalid_values),
            state_writes=dict(self._state_file.writes) if self._state_file else {},
        )


def _new_health() -> NamespaceHealth:
    return NamespaceHealth(up=False, last_success=None, poll_durations=Histogram.empty(POLL_DURATION_BUCKETS))
