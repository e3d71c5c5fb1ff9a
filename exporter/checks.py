"""The API behaviours the exporter uses that no spec version promises, and the evidence about each.

The exporter relies on what the 0.81 spec and the official SDK declare. Everything else it would like to
use (a filter honoured, a sort honoured, X-Namespace honoured on task routes, POST /v1/batches/list) is a
question: each has a named check, run on the answers the exporter gets anyway, and a failed check turns
the behaviour off, with a safe way of polling instead, until the re-probe interval has passed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from enum import StrEnum
from operator import attrgetter

import structlog

from exporter.api import Task
from exporter.vocabulary import TERMINAL_STATUSES

_TERMINAL = frozenset(TERMINAL_STATUSES)
_ADDITIONAL_DATA = attrgetter("additional_data")


class Check(StrEnum):
    FILTER_MATCH = "filter_match"
    """A filtered listing returns only tasks that match the filter (the active set: no terminal status)."""
    FILTER_REFUSED = "filter_refused"
    """The API takes the filters an incremental poll sends (it may answer 400 or 422 instead)."""
    ID_LOOKUP = "id_lookup"
    """A `task_id in [...]` lookup returns exactly the asked tasks that exist."""
    SORT_ORDER = "sort_order"
    """A listing sorted by created_at descending is in that order."""
    NAMESPACE_HEADER = "namespace_header"
    """Task routes honour X-Namespace: no task under two namespaces, none naming another namespace."""
    BATCHES_ROUTE = "batches_route"
    """POST /v1/batches/list exists (it is in the SDK, not in the 0.81 spec)."""


CHECKS = tuple(Check)
INCREMENTAL_NEEDS = (Check.FILTER_MATCH, Check.FILTER_REFUSED, Check.SORT_ORDER)
"""What an incremental poll relies on: without any of them, only full listings are exact."""


class CheckFailed(Exception):
    def __init__(self, check: Check, evidence: str) -> None:
        super().__init__(f"{check.value}: {evidence}")
        self.check = check
        self.evidence = evidence


class Evidence:
    """What the API has been seen not to honour, and since when.

    Every behaviour is trusted until a check fails; then it stays off until `forget_expired()` finds the
    failure older than `reprobe_after` seconds (None: never, until a restart): from then on it is trusted,
    and so checked, again. The queries change nothing; the poller forgets once per cycle, so every
    decision of a cycle sees the same evidence.
    """

    def __init__(
        self,
        reprobe_after: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._reprobe_after = reprobe_after
        self._clock = clock
        self._log = logger or structlog.get_logger("exporter.checks")
        self._failed: dict[Check, float] = {}
        self.failures: Counter[Check] = Counter()
        """Failed checks by name, for mixpeek_exporter_api_check_failures_total."""

    def trusted(self, check: Check) -> bool:
        """Whether to rely on the behaviour: its check has not failed, or the failure was forgotten."""
        return check not in self._failed

    def distrusted(self, checks: Iterable[Check]) -> Check | None:
        """The first of `checks` not to rely on, if any (see `trusted`)."""
        return next((check for check in checks if not self.trusted(check)), None)

    def forget_expired(self) -> None:
        """Forget the failures older than the re-probe interval: those behaviours are trusted, and so
        checked, again; should one fail again, that is a new episode."""
        if self._reprobe_after is None:
            return
        now = self._clock()
        for check, since in list(self._failed.items()):
            if now - since >= self._reprobe_after:
                del self._failed[check]
                self._log.info("re-probing an API behaviour that failed its check", check=check.value)

    def fail(self, failure: CheckFailed, **context: object) -> None:
        """Count a failed check; the first failure of an episode is logged with its evidence."""
        self.failures[failure.check] += 1
        if failure.check in self._failed:
            self._log.debug("API check failed again", check=failure.check.value, evidence=failure.evidence)
            return
        self._failed[failure.check] = self._clock()
        self._log.warning(
            "API check failed: falling back",
            check=failure.check.value,
            evidence=failure.evidence,
            **context,
        )


def active_only(tasks: Iterable[Task]) -> None:
    """A listing filtered to the active set must hold no task in a terminal status."""
    for task in tasks:
        if task.status in _TERMINAL:
            raise CheckFailed(
                Check.FILTER_MATCH, f"task {task.item_id} is {task.status} in a listing of active tasks"
            )


def asked_only(tasks: Iterable[Task], asked: Collection[str]) -> list[Task]:
    """A lookup by id must return only asked ids (the rest are dropped, and the check fails)."""
    kept = [task for task in tasks if task.item_id in asked]
    if extra := [task.item_id for task in tasks if task.item_id not in asked][:3]:
        raise CheckFailed(Check.ID_LOOKUP, f"a lookup of {len(asked)} ids returned others, e.g. {extra}")
    return kept


def newest_first(tasks: list[Task]) -> None:
    """A page of a listing asked newest first is in that order, where the payload carries created_at (the
    documented model does not; `sorted_both_ways` covers that case). Within a page only: across offset
    pages, a task born while the listing pages shifts an older page's first item."""
    first, last = (tasks[0].created_at, tasks[-1].created_at) if tasks else (None, None)
    if first is not None and last is not None and last > first:
        raise CheckFailed(
            Check.SORT_ORDER,
            f"task {tasks[-1].item_id} (created {last:.0f}) follows one created {first:.0f} "
            "on a page sorted by created_at descending",
        )


def sorted_both_ways(newest: Task | None, oldest: Task | None, listed: int) -> None:
    """With two or more tasks, the first of the listing sorted newest first differs from the first of
    the listing sorted oldest first, unless the sort is ignored."""
    if listed >= 2 and newest is not None and oldest is not None and newest.item_id == oldest.item_id:
        raise CheckFailed(
            Check.SORT_ORDER,
            f"task {newest.item_id} comes first whether sorted by created_at ascending or descending",
        )


def header_value(namespace: str, ids: Mapping[str, str]) -> str:
    """What X-Namespace says for a namespace: its name, or its id when the name cannot go in a header
    (HTTP header values are ASCII; discovery may find any name)."""
    if namespace.isascii() and namespace.isprintable():
        return namespace
    return ids.get(namespace, namespace)


def expected_id(namespace: str, ids: Mapping[str, str]) -> str | None:
    """The id a namespace's tasks name in additional_data: from discovery, or the name is an id."""
    return ids.get(namespace) or (namespace if namespace.startswith("ns_") else None)


class NamespaceIsolation:
    """Evidence that X-Namespace is ignored on task routes: a task naming another namespace's id in
    additional_data, or one task id listed under two namespaces (checked on a sample of each
    namespace's newest tasks, so it costs a few dict lookups per page)."""

    SAMPLE = 16

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._samples: dict[str, tuple[str, ...]] = {}

    def see(self, namespace: str, namespace_id: str | None, tasks: list[Task], *, first_page: bool) -> None:
        if namespace_id is not None and _named_namespaces(tasks) - {namespace_id}:
            task = next(t for t in tasks if t.namespace_id not in (None, namespace_id))
            raise CheckFailed(
                Check.NAMESPACE_HEADER,
                f"task {task.item_id}, listed for namespace {namespace} ({namespace_id}), "
                f"belongs to {task.namespace_id}",
            )
        if not first_page:
            return
        sample = tuple(task.item_id for task in tasks[: self.SAMPLE])
        for task_id in sample:
            owner = self._owner.get(task_id)
            if owner is not None and owner != namespace:
                raise CheckFailed(
                    Check.NAMESPACE_HEADER,
                    f"task {task_id} is listed under namespaces {owner} and {namespace}",
                )
        for task_id in self._samples.get(namespace, ()):
            if self._owner.get(task_id) == namespace:
                del self._owner[task_id]
        self._samples[namespace] = sample
        self._owner.update(dict.fromkeys(sample, namespace))

    def forget(self) -> None:
        self._owner.clear()
        self._samples.clear()


def _named_namespaces(tasks: list[Task]) -> set[str]:
    """The namespace ids a page's tasks name in additional_data, as Task.namespace_id reads them, in one
    comprehension: this runs on every page of every listing, and a property call per task cost more than
    the rest of the check."""
    return {
        named
        for extra in map(_ADDITIONAL_DATA, tasks)
        if extra is not None and type(named := extra.namespace_id) is str
    }
