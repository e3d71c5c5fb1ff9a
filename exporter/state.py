"""What the exporter remembers of a namespace's tasks (or batches) between polls; how a listing changes it.

Pure: `observe(previous, items, now)` returns a new state; no I/O, no clock reads, nothing mutated. Tasks and
batches share it: each item has a status and a group (the task type, or the batch's bucket).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from exporter.histogram import Exemplar, Histogram
from exporter.vocabulary import TASK_STATUSES, TERMINAL_STATUSES

# Values outside TASK_STATUSES are exported as they come (sanitised).
KNOWN_STATUSES = TASK_STATUSES
_TERMINAL = frozenset(TERMINAL_STATUSES)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")
MAX_LABEL_LENGTH = 64
EMPTY_LABEL = "none"
# How long a finished task that vanished is remembered, so that its return is not a second transition.
GONE_TTL_SECONDS = 24 * 3600.0

Key = tuple[str, str]
"""(status, group)"""
Tally = tuple[tuple[str, ...], int]
"""A count an item adds when its transition is counted, e.g. (("failed",), 12) objects of a batch."""


class Item(Protocol):
    """What a listing gives of one task or batch."""

    @property
    def item_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def created_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def tallies(self) -> tuple[Tally, ...]: ...


def label_value(raw: str) -> str:
    """A bounded, printable label value; interned because millions of tasks share a few dozen."""
    cleaned = _UNSAFE.sub("_", raw.strip())[:MAX_LABEL_LENGTH] or EMPTY_LABEL
    return sys.intern(cleaned)


@dataclass(frozen=True, slots=True)
class Tracked:
    status: str
    group: str
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
    tasks: Mapping[str, Tracked] = field(default_factory=dict)
    """Tracked items by id, newest first."""
    untracked: int = 0
    """Tasks of the last listing past the tracking cap: counted in gauges, their transitions not seen."""
    gone: Mapping[str, float] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    """Task types (or buckets) seen so far, in order of first sight."""
    statuses: tuple[str, ...] = KNOWN_STATUSES
    counts: Mapping[Key, int] = field(default_factory=dict)
    oldest_active: Mapping[Key, float] = field(default_factory=dict)
    transitions: Mapping[Key, int] = field(default_factory=dict)
    completions: Mapping[Key, Histogram] = field(default_factory=dict)
    tallies: Mapping[tuple[str, ...], int] = field(default_factory=dict)
    """(group, *tally key) -> running total of the tallies of counted transitions."""

    def completion(self, key: Key) -> Histogram:
        return self.completions.get(key) or Histogram.empty(self.buckets)


def observe(
    previous: NamespaceState, listing: Iterable[Item], now: float, max_tracked: int | None = None
) -> NamespaceState:
    """Fold one complete listing, newest task first, into the state.

    A task counts once: when seen non-terminal and later terminal, or when it first appears terminal
    after the baseline. The first listing is the baseline: what is terminal then is history, not news.
    Past `max_tracked` tasks the older ones still count in the gauges but are not remembered, so their
    transitions go uncounted (`untracked` says how many) and memory stays bounded.
    """
    baseline = previous.polled_at is None
    limit = max_tracked if max_tracked is not None else sys.maxsize
    tasks: dict[str, Tracked] = {}
    untracked: set[str] = set()
    counts: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    transitions = dict(previous.transitions)
    completions = dict(previous.completions)
    groups = dict.fromkeys(previous.groups)
    tallies = dict(previous.tallies)
    statuses = dict.fromkeys(previous.statuses)
    gone = dict(previous.gone)

    for task in listing:
        status, group = label_value(task.status), label_value(task.group)
        groups.setdefault(group)
        statuses.setdefault(status)
        key = (status, group)
        terminal = status in _TERMINAL
        if len(tasks) >= limit:
            untracked.add(task.item_id)
            started: float | None = task.created_at
        else:
            before = previous.tasks.get(task.item_id)
            if before is None:
                returned = gone.pop(task.item_id, None) is not None
                was_finished = returned or (baseline and terminal)
                first_seen = now
            else:
                was_finished, first_seen = before.finished, before.first_seen
            tracked = Tracked(status, group, first_seen, task.created_at, was_finished or terminal)
            tasks[task.item_id] = tracked
            started = tracked.started
            if terminal and not was_finished:
                transitions[key] = transitions.get(key, 0) + 1
                start = _start(task, before, previous.polled_at if previous.polled_at is not None else now)
                end = task.finished_at if task.finished_at is not None else now
                duration = max(0.0, end - start)
                histogram = completions.get(key) or Histogram.empty(previous.buckets)
                completions[key] = histogram.observe(duration, Exemplar(task.item_id, duration, end))
                for tally, amount in task.tallies:
                    tally_key = (group, *(label_value(part) for part in tally))
                    tallies[tally_key] = tallies.get(tally_key, 0) + amount
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
        groups=tuple(groups),
        statuses=tuple(statuses),
        counts=counts,
        oldest_active=oldest,
        transitions=transitions,
        completions=completions,
        tallies=tallies,
    )


def _start(task: Item, before: Tracked | None, last_poll: float) -> float:
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
    tasks: Mapping[str, Tracked],
    gone: Mapping[str, float],
    groups: tuple[str, ...],
    statuses: tuple[str, ...],
    transitions: Mapping[Key, int],
    completions: Mapping[Key, Histogram],
    tallies: Mapping[tuple[str, ...], int],
) -> NamespaceState:
    """A state read back from the state file; until the next poll, gauges are those of its tracked tasks."""
    counts: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    for tracked in tasks.values():
        active = tracked.status not in _TERMINAL
        _tally(counts, oldest, (tracked.status, tracked.group), tracked.started if active else None)
    return NamespaceState(
        buckets=buckets,
        polled_at=polled_at,
        tasks=tasks,
        gone=gone,
        groups=groups,
        statuses=statuses,
        counts=counts,
        oldest_active=oldest,
        transitions=transitions,
        completions=completions,
        tallies=tallies,
    )


def _tally(counts: dict[Key, int], oldest: dict[Key, float], key: Key, active_since: float | None) -> None:
    """Count one task in the gauges; `active_since` is its start when it is non-terminal and known."""
    counts[key] = counts.get(key, 0) + 1
    if active_since is not None and active_since < oldest.get(key, active_since + 1):
        oldest[key] = active_since
