"""What the exporter remembers of one namespace between polls, and how a new listing changes it.

Pure: `observe(previous, tasks, now)` returns a new state; no I/O, no clock reads, nothing mutated.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.api import Task
from exporter.histogram import Exemplar, Histogram

# Terminal statuses as documented: a task in one of them will not change again.
TERMINAL_STATUSES = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED")
# TaskStatusEnum of SDK 1.3.783. Values outside it are exported as they come (sanitised).
KNOWN_STATUSES = (
    "PENDING",
    "QUEUED",
    "IN_PROGRESS",
    "PROCESSING",
    *TERMINAL_STATUSES,
    "INTERRUPTED",
    "UNKNOWN",
    "SKIPPED",
    "DRAFT",
    "ACTIVE",
    "ARCHIVED",
    "SUSPENDED",
    "DEACTIVATED",
)
_TERMINAL = frozenset(TERMINAL_STATUSES)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")
MAX_LABEL_LENGTH = 64
EMPTY_LABEL = "none"
# How long a finished task that vanished is remembered, so that its return is not a second transition.
GONE_TTL_SECONDS = 24 * 3600.0

Key = tuple[str, str]
"""(status, task_type)"""


def label_value(raw: str) -> str:
    """A bounded, printable label value; interned because millions of tasks share a few dozen."""
    cleaned = _UNSAFE.sub("_", raw.strip())[:MAX_LABEL_LENGTH] or EMPTY_LABEL
    return sys.intern(cleaned)


@dataclass(frozen=True, slots=True)
class TrackedTask:
    status: str
    task_type: str
    first_seen: float
    created_at: float | None
    finished: bool
    """Reached a terminal status while watched, or was terminal at the baseline: never counted again."""

    @property
    def started(self) -> float:
        return self.created_at if self.created_at is not None else self.first_seen


@dataclass(frozen=True)
class NamespaceState:
    buckets: tuple[float, ...]
    polled_at: float | None = None
    """When the last complete listing was taken; None until the baseline poll."""
    tasks: Mapping[str, TrackedTask] = field(default_factory=dict)
    untracked: int = 0
    """Tasks of the last listing past the tracking cap: counted in gauges, their transitions not seen."""
    gone: Mapping[str, float] = field(default_factory=dict)
    task_types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = KNOWN_STATUSES
    counts: Mapping[Key, int] = field(default_factory=dict)
    oldest_active: Mapping[Key, float] = field(default_factory=dict)
    transitions: Mapping[Key, int] = field(default_factory=dict)
    completions: Mapping[Key, Histogram] = field(default_factory=dict)

    def completion(self, key: Key) -> Histogram:
        return self.completions.get(key) or Histogram.empty(self.buckets)


def observe(
    previous: NamespaceState, listing: Iterable[Task], now: float, max_tracked: int | None = None
) -> NamespaceState:
    """Fold one complete listing, newest task first, into the state.

    A task counts once: when seen non-terminal and later terminal, or when it first appears terminal
    after the baseline. The first listing is the baseline: what is terminal then is history, not news.
    Past `max_tracked` tasks the older ones still count in the gauges but are not remembered, so their
    transitions go uncounted (`untracked` says how many) and memory stays bounded.
    """
    baseline = previous.polled_at is None
    limit = max_tracked if max_tracked is not None else sys.maxsize
    tasks: dict[str, TrackedTask] = {}
    untracked: set[str] = set()
    counts: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    transitions = dict(previous.transitions)
    completions = dict(previous.completions)
    task_types = dict.fromkeys(previous.task_types)
    statuses = dict.fromkeys(previous.statuses)
    gone = dict(previous.gone)

    for task in listing:
        status, task_type = label_value(task.status), label_value(task.task_type)
        task_types.setdefault(task_type)
        statuses.setdefault(status)
        key = (status, task_type)
        terminal = status in _TERMINAL
        if len(tasks) >= limit:
            untracked.add(task.task_id)
            started: float | None = task.created_at
        else:
            before = previous.tasks.get(task.task_id)
            if before is None:
                returned = gone.pop(task.task_id, None) is not None
                was_finished = returned or (baseline and terminal)
                first_seen = now
            else:
                was_finished, first_seen = before.finished, before.first_seen
            tracked = TrackedTask(status, task_type, first_seen, task.created_at, was_finished or terminal)
            tasks[task.task_id] = tracked
            started = tracked.started
            if terminal and not was_finished:
                transitions[key] = transitions.get(key, 0) + 1
                start = _start(task, before, previous.polled_at if previous.polled_at is not None else now)
                end = task.finished_at if task.finished_at is not None else now
                duration = max(0.0, end - start)
                histogram = completions.get(key) or Histogram.empty(previous.buckets)
                completions[key] = histogram.observe(duration, Exemplar(task.task_id, duration, end))
        _tally(counts, oldest, key, None if terminal else started)

    for task_id, tracked in previous.tasks.items():
        if tracked.finished and task_id not in tasks and task_id not in untracked:
            gone[task_id] = now
    gone = {task_id: when for task_id, when in gone.items() if now - when < GONE_TTL_SECONDS}
    if len(gone) > limit:
        gone = dict(sorted(gone.items(), key=lambda item: item[1], reverse=True)[:limit])

    return NamespaceState(
        buckets=previous.buckets,
        polled_at=now,
        tasks=tasks,
        untracked=len(untracked),
        gone=gone,
        task_types=tuple(task_types),
        statuses=tuple(statuses),
        counts=counts,
        oldest_active=oldest,
        transitions=transitions,
        completions=completions,
    )


def _start(task: Task, before: TrackedTask | None, last_poll: float) -> float:
    """Creation time: the payload's, else when first seen; a task born and finished between two polls
    gets the previous poll's time, so its duration is an upper bound of at most one poll interval."""
    if task.created_at is not None:
        return task.created_at
    if before is not None:
        return before.first_seen
    return last_poll


def restore(
    *,
    buckets: tuple[float, ...],
    polled_at: float,
    tasks: Mapping[str, TrackedTask],
    gone: Mapping[str, float],
    task_types: tuple[str, ...],
    statuses: tuple[str, ...],
    transitions: Mapping[Key, int],
    completions: Mapping[Key, Histogram],
) -> NamespaceState:
    """A state read back from the state file; until the next poll, gauges are those of its tracked tasks."""
    counts: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    for tracked in tasks.values():
        active = tracked.status not in _TERMINAL
        _tally(counts, oldest, (tracked.status, tracked.task_type), tracked.started if active else None)
    return NamespaceState(
        buckets=buckets,
        polled_at=polled_at,
        tasks=tasks,
        gone=gone,
        task_types=task_types,
        statuses=statuses,
        counts=counts,
        oldest_active=oldest,
        transitions=transitions,
        completions=completions,
    )


def _tally(counts: dict[Key, int], oldest: dict[Key, float], key: Key, active_since: float | None) -> None:
    """Count one task in the gauges; `active_since` is its start when it is non-terminal and known."""
    counts[key] = counts.get(key, 0) + 1
    if active_since is not None and active_since < oldest.get(key, active_since + 1):
        oldest[key] = active_since
