"""Schedules the polls, turns each complete listing into new state, and publishes the Snapshot.

Each namespace is polled on its own schedule, a bounded number at a time, so one slow or failing
namespace never delays or breaks another. A poll that fails part-way changes no task state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import structlog

from exporter.api import ApiError, Batch, MixpeekClient, Task
from exporter.histogram import Histogram
from exporter.metrics import POLL_DURATION_BUCKETS, NamespaceHealth, Snapshot
from exporter.state import NamespaceState, label_value, observe
from exporter.statefile import StateFile

UNKNOWN_NAMESPACE = "unknown"


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


@dataclass(frozen=True)
class Fetched:
    """Everything one poll listed, by namespace, before any of it is applied."""

    tasks: Mapping[str, list[Task]]
    batches: Mapping[str, list[Batch]]
    pages: int


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
        self._state_file = state_file
        tasks, batches = state_file.load() if state_file else ({}, {})
        if plan.namespaces:
            tasks = {ns: state for ns, state in tasks.items() if ns in plan.namespaces}
            batches = {ns: state for ns, state in batches.items() if ns in plan.namespaces}
        self.snapshot = Snapshot(namespaces=tasks, batches=batches)

    @property
    def targets(self) -> tuple[str, ...] | None:
        """The namespaces to poll, or None while discovery has not succeeded yet."""
        if self._plan.organization or self._plan.namespaces:
            return self._plan.namespaces
        return self._discovered

    def ready(self) -> bool:
        """True once every namespace to poll has had one complete poll."""
        targets = self.targets
        if targets is None:
            return False
        if self._plan.organization:
            return any(h.last_success is not None for h in self.snapshot.health.values())
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
            names = tuple(sorted({ns.name for ns in found}))
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
            tasks = await self._client.list_tasks(namespace)
            return Fetched(
                {namespace: list(tasks.items.values())}, await self._batches((namespace,)), tasks.pages
            )

        await self._poll((namespace,), fetch)

    async def poll_organization(self) -> None:
        """One listing for the whole organisation, split by each task's additional_data.namespace_id."""

        async def fetch() -> Fetched:
            listing = await self._client.list_tasks(None)
            wanted = set(self._plan.namespaces)
            by_namespace: dict[str, list[Task]] = {ns: [] for ns in self.snapshot.namespaces}
            for task in listing.items.values():
                namespace = label_value(task.namespace_id) if task.namespace_id else UNKNOWN_NAMESPACE
                if not wanted or namespace in wanted:
                    by_namespace.setdefault(namespace, []).append(task)
            batches = await self._batches(tuple(ns for ns in by_namespace if ns != UNKNOWN_NAMESPACE))
            return Fetched(by_namespace, batches, listing.pages)

        await self._poll(
            tuple(self.snapshot.namespaces) or self._plan.namespaces or (UNKNOWN_NAMESPACE,), fetch
        )

    async def _batches(self, namespaces: tuple[str, ...]) -> dict[str, list[Batch]]:
        if not self._plan.batches:
            return {}
        return {ns: list((await self._client.list_batches(ns)).items.values()) for ns in namespaces}

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
        namespaces = dict(self.snapshot.namespaces)
        batches = dict(self.snapshot.batches)
        health = dict(self.snapshot.health)
        if self._plan.organization:  # the listing says which namespaces exist; drop placeholders
            health = {ns: h for ns, h in health.items() if ns in fetched.tasks}
        for namespace, items in fetched.batches.items():
            previous = batches.get(namespace) or NamespaceState(buckets=self._plan.buckets)
            batches[namespace] = observe(previous, items, now, self._plan.max_tracked)
        for namespace, tasks in fetched.tasks.items():
            previous = namespaces.get(namespace) or NamespaceState(buckets=self._plan.buckets)
            namespaces[namespace] = state = observe(previous, tasks, now, self._plan.max_tracked)
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
            state_writes=dict(self._state_file.writes) if self._state_file else {},
        )


def _new_health() -> NamespaceHealth:
    return NamespaceHealth(up=False, last_success=None, poll_durations=Histogram.empty(POLL_DURATION_BUCKETS))
