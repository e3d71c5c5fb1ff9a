"""What the exporter remembers of a namespace's tasks (or batches) between polls; how a listing changes it.

Pure: `observe(previous, items, now)` returns a new state; no I/O, no clock reads, nothing mutated. Tasks and
batches share it: each item has a status and a group (the task type, or the batch's bucket).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

import msgspec

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
_KEY_OF = attrgetter("key")
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


class Tracked(msgspec.Struct, frozen=True, gc=False):
    """One remembered task: compact (no GC header, a shared interned key) because there may be millions.

    `item_id` is the very string object that keys it in the state, so a listing that meets it again
    re-uses that key instead of holding a second copy of every id.
    """

    item_id: str
    key: Key
    first_seen: float
    created_at: float | None
    finished: bool
    """Reached a terminal status while watched, or was terminal at the baseline: never counted again."""

    @property
    def status(self) -> str:
        return self.key[0]

    @property
    def group(self) -> str:
        return self.key[1]

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
    active: frozenset[str] = frozenset()
    """Ids of tracked items not in a terminal status: what an incremental poll must follow up."""
    newest: float | None = None
    """The latest created_at listed so far: below it, an incremental poll has seen every birth."""

    def completion(self, key: Key) -> Histogram:
        return self.completions.get(key) or Histogram.empty(self.buckets)


class Observation:
    """One listing being folded into a state, page by page, so a million tasks never sit in memory twice.

    A task counts once: when seen non-terminal and later terminal, or when it first appears terminal
    after the baseline. The first listing is the baseline: what is terminal then is history, not news.
    Past `max_tracked` tasks the older ones still count in the gauges but are not remembered, so their
    transitions go uncounted (`untracked` says how many) and memory stays bounded.

    A complete listing replaces the tracked set; a `partial` one (an incremental poll: the active set,
    the newborn and the resolved) updates the items it lists and keeps the others as they were, except
    those reported `vanished`. Nothing of `previous` is changed, so an abandoned listing costs nothing.
    """

    def __init__(
        self,
        previous: NamespaceState,
        now: float,
        max_tracked: int | None = None,
        *,
        partial: bool = False,
    ) -> None:
        self._previous = previous
        self._now = now
        self._limit = max_tracked if max_tracked is not None else sys.maxsize
        self._partial = partial
        self._last_poll = previous.polled_at if previous.polled_at is not None else now
        self._baseline = previous.polled_at is None
        self._tasks: dict[str, Tracked] = {}
        self._untracked: set[str] = set()
        self._vanished: set[str] = set()
        self._untracked_counts: dict[Key, int] = {}
        self._born = 0
        """Tracked items this listing that the previous state did not track."""
        self._oldest: dict[Key, float] = {}
        self._active: set[str] = set()
        self._newest = previous.newest
        self._transitions = dict(previous.transitions)
        self._completions = dict(previous.completions)
        self._groups = dict.fromkeys(previous.groups)
        self._statuses = dict.fromkeys(previous.statuses)
        self._tallies = dict(previous.tallies)
        self._keys: dict[tuple[str, str], Key] = {}

    @property
    def previous(self) -> NamespaceState:
        return self._previous

    @property
    def partial(self) -> bool:
        return self._partial

    def listed(self, item_id: str) -> bool:
        return item_id in self._tasks or item_id in self._untracked

    def add(self, items: Sequence[Item]) -> int:
        """Fold in one page, newest first; returns how many of its items were new to this listing.

        The hot loop of a poll: a task seen unchanged costs a few dict lookups and no allocation.
        """
        if items:
            self._see_created(items[0].created_at)  # the page's newest: enough for the birth watermark
        new = 0
        previous, tasks, untracked = self._previous.tasks, self._tasks, self._untracked
        keys, active, oldest = self._keys, self._active, self._oldest
        room = self._limit - len(tasks)
        for item in items:
            item_id = item.item_id
            if item_id in tasks or item_id in untracked:
                continue
            new += 1
            status, group = item.status, item.group
            key = keys.get((status, group)) or self._key(status, group)
            terminal = key[0] in _TERMINAL
            if room <= 0:
                untracked.add(item_id)
                self._untracked_counts[key] = self._untracked_counts.get(key, 0) + 1
                if not terminal and (created := item.created_at) is not None:
                    _earliest(oldest, key, created)
                continue
            room -= 1
            before = previous.get(item_id)
            if before is None or before.key != key:
                before = self._change(item, item_id, key, terminal, before)
            tasks[before.item_id] = before
            if not terminal:
                active.add(before.item_id)
                _earliest(oldest, key, before.started)
        return new

    def vanish(self, item_ids: Iterable[str]) -> None:
        """Items a partial listing looked for and the API no longer has."""
        self._vanished.update(i for i in item_ids if not self.listed(i))

    def _key(self, status: str, group: str) -> Key:
        key = self._keys[(status, group)] = (label_value(status), label_value(group))
        self._statuses.setdefault(key[0])
        self._groups.setdefault(key[1])
        return key

    def _see_created(self, created: float | None) -> None:
        if created is not None and (self._newest is None or created > self._newest):
            self._newest = created

    def _change(self, item: Item, item_id: str, key: Key, terminal: bool, before: Tracked | None) -> Tracked:
        """A task new to us or in a new status: remember it, and count it if it just finished.

        Only an active task keeps its creation time (for the oldest-active age): most tasks are
        finished, and for them neither the parse nor the float is worth paying."""
        if before is None:
            self._born += 1
            was_finished = item_id in self._previous.gone or (self._baseline and terminal)
            first_seen, item_id_kept = self._now, item_id
        else:
            was_finished, first_seen, item_id_kept = before.finished, before.first_seen, before.item_id
        counted = terminal and not was_finished
        created = item.created_at if counted or not terminal else None
        self._see_created(created)
        if counted:
            self._count(
                item, item_id, key, created if created is not None else _first_seen(before, self._last_poll)
            )
        return Tracked(item_id_kept, key, first_seen, None if terminal else created, was_finished or terminal)

    def _count(self, item: Item, item_id: str, key: Key, start: float) -> None:
        """A transition into a terminal status: the counter, the time-to-completion, the tallies."""
        self._transitions[key] = self._transitions.get(key, 0) + 1
        finished_at = item.finished_at
        end = finished_at if finished_at is not None else self._now
        duration = max(0.0, end - start)
        histogram = self._completions.get(key) or Histogram.empty(self._previous.buckets)
        self._completions[key] = histogram.observe(duration, Exemplar(item_id, duration, end))
        for tally, amount in item.tallies:
            tally_key = (key[1], *(label_value(part) for part in tally))
            self._tallies[tally_key] = self._tallies.get(tally_key, 0) + amount

    def result(self) -> NamespaceState:
        """The new state, once every page (and, for a partial listing, every follow-up) is in."""
        previous, now = self._previous, self._now
        left: Iterable[str]
        if self._partial:
            tasks, counts, untracked, left = self._merged()
        else:
            tasks, untracked = self._tasks, len(self._untracked)
            counts = Counter(self._untracked_counts)
            counts.update(map(_KEY_OF, tasks.values()))
            # Every tracked task listed again (the usual case) means none left: skip the sweep.
            kept = len(tasks) - self._born
            left = () if kept == len(previous.tasks) else self._unlisted()
        gone = {item_id: when for item_id, when in previous.gone.items() if item_id not in tasks}
        gone.update((item_id, now) for item_id in left if previous.tasks[item_id].finished)
        gone = {item_id: when for item_id, when in gone.items() if now - when < GONE_TTL_SECONDS}
        if len(gone) > self._limit:
            gone = dict(sorted(gone.items(), key=lambda item: item[1], reverse=True)[: self._limit])
        return NamespaceState(
            buckets=previous.buckets,
            polled_at=now,
            tasks=tasks,
            untracked=untracked,
            gone=gone,
            groups=tuple(self._groups),
            statuses=tuple(self._statuses),
            counts=counts,
            oldest_active=self._oldest,
            transitions=self._transitions,
            completions=self._completions,
            tallies=self._tallies,
            active=frozenset(self._active),
            newest=self._newest,
        )

    def _unlisted(self) -> Iterator[str]:
        listed, untracked = self._tasks, self._untracked
        return (i for i in self._previous.tasks if i not in listed and i not in untracked)

    def _merged(self) -> tuple[dict[str, Tracked], Counter[Key], int, Iterable[str]]:
        """A partial listing laid over the previous state: a C-speed copy, then only the changes."""
        previous = self._previous
        tasks = dict(previous.tasks)
        counts = Counter(previous.counts)
        vanished = {i for i in self._vanished if i in tasks}
        for item_id in (*vanished, *(i for i in self._tasks if i in previous.tasks)):
            key = previous.tasks[item_id].key
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
        for item_id in vanished:
            del tasks[item_id]
        tasks.update(self._tasks)
        counts.update(map(_KEY_OF, self._tasks.values()))
        for item_id in previous.active - self._tasks.keys() - vanished:  # not followed up: as they were
            self._active.add(item_id)
            _earliest(self._oldest, tasks[item_id].key, tasks[item_id].started)
        return tasks, counts, previous.untracked, vanished


def observe(
    previous: NamespaceState, listing: Iterable[Item], now: float, max_tracked: int | None = None
) -> NamespaceState:
    """Fold one complete listing, newest task first, into the state (see Observation)."""
    observation = Observation(previous, now, max_tracked)
    observation.add(list(listing))
    return observation.result()


def _first_seen(before: Tracked | None, last_poll: float) -> float:
    """Start of a task without a creation time: when first seen; a task born and finished between two
    polls gets the previous poll's time, so its duration is an upper bound of at most one poll interval."""
    return before.first_seen if before is not None else last_poll


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
    active = []
    for item_id, tracked in tasks.items():
        is_active = tracked.status not in _TERMINAL
        _tally(counts, oldest, tracked.key, tracked.started if is_active else None)
        if is_active:
            active.append(item_id)
    created = [t.created_at for t in tasks.values() if t.created_at is not None]
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
        active=frozenset(active),
        newest=max(created, default=None),
    )


def _tally(counts: dict[Key, int], oldest: dict[Key, float], key: Key, active_since: float | None) -> None:
    """Count one task in the gauges; `active_since` is its start when it is non-terminal and known."""
    counts[key] = counts.get(key, 0) + 1
    if active_since is not None:
        _earliest(oldest, key, active_since)


def _earliest(oldest: dict[Key, float], key: Key, since: float) -> None:
    if since < oldest.get(key, since + 1):
        oldest[key] = since
