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
from typing import TYPE_CHECKING, Protocol

import msgspec

from exporter.histogram import Exemplar, Histogram
from exporter.vocabulary import TERMINAL_STATUSES, ZERO_FILLED_STATUSES

if TYPE_CHECKING:
    from typing_extensions import TypeIs

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
"""A count an item adds when its transition is counted; exporter/tallies.py names the kinds."""


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


class Tracked(msgspec.Struct, frozen=True, eq=False, gc=False):
    """One remembered task not in a terminal status: compact (no GC header, a shared interned key).

    A task in a terminal status needs none of this and is remembered as a code (see NamespaceState.tasks).
    `item_id` is the very string object that keys it in the state, so the active set shares it.
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


TrackedRow = tuple[str, Key, float, float | None, bool]
"""(item_id, key, first_seen, created_at, finished): one tracked item in full, as the state file keeps it."""


# A task in a terminal status is remembered as a code, a plain int: the index of its key in the state's
# `keys`, and a parity bit saying which complete listing last wrote it (see NamespaceState.parity). Only
# the functions below know how the two are packed. Loops over every task use `keys_by_code` instead:
# the same answer as `keys[key_index(code)]`, without a call per task.


def encode(index: int, parity: int) -> int:
    """The code of a finished task whose key is `keys[index]`, written by a listing of this parity."""
    return index * 2 + parity


def key_index(code: int) -> int:
    """Where the key of the task this code stands for is in `keys`."""
    return code // 2


def parity_of(code: int) -> int:
    """The parity of the listing that wrote this code."""
    return code % 2


def is_code(value: Tracked | int) -> TypeIs[int]:
    """Whether a remembered task is a code (it is in a terminal status) rather than a `Tracked`."""
    return type(value) is int


def keys_by_code(keys: Sequence[Key]) -> tuple[Key, ...]:
    """The key of every code there can be, indexed by the code itself (either parity)."""
    return tuple(key for key in keys for _parity in (0, 1))


@dataclass(frozen=True)
class NamespaceState:
    buckets: tuple[float, ...]
    polled_at: float | None = None
    """When the last complete listing was taken; None until the baseline poll."""
    tasks: Mapping[str, Tracked | int] = field(default_factory=dict)
    """Tracked items by id. One in a terminal status is a code (see `encode`): most of a million tasks are
    finished, and every task of one key holds the same int object (a listing makes one per key), so such
    a task costs its id and its dict slot only. Read them through `rows()`."""
    keys: tuple[Key, ...] = ()
    """What the codes in `tasks` index; append-only, so a code stays valid from one state to the next."""
    parity: int = 0
    """The low bit of every code in `tasks`. Each complete listing flips it, so while it runs a code
    it has not rewritten is a task it has not listed (see Observation)."""
    untracked: int = 0
    """Tasks of the last listing past the tracking cap: counted in gauges, their transitions not seen."""
    gone: Mapping[str, float] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    """Task types (or buckets) seen so far, in order of first sight."""
    statuses: tuple[str, ...] = ZERO_FILLED_STATUSES
    """Statuses with series: those zero-filled, then the others in order of first sight."""
    counts: Mapping[Key, int] = field(default_factory=dict)
    oldest_active: Mapping[Key, float] = field(default_factory=dict)
    transitions: Mapping[Key, int] = field(default_factory=dict)
    completions: Mapping[Key, Histogram] = field(default_factory=dict)
    tallies: Mapping[tuple[str, ...], int] = field(default_factory=dict)
    """(group, *tally key) -> running total of the tallies of counted transitions."""
    active: frozenset[str] = frozenset()
    """Ids of tracked items not in a terminal status: what an incremental poll must follow up."""

    def rows(self) -> Iterator[TrackedRow]:
        """Every tracked item in full. A finished one's first sight is not kept, nor needed (it is never
        counted again): the last poll stands in for it."""
        key_of, polled_at = keys_by_code(self.keys), self.polled_at or 0.0
        for item_id, value in self.tasks.items():
            if is_code(value):
                yield item_id, key_of[value], polled_at, None, True
            else:
                yield item_id, value.key, value.first_seen, value.created_at, value.finished


class Observation:
    """One listing being folded into a state, page by page, so a million tasks never sit in memory twice.

    A task counts once: when seen non-terminal and later terminal, or when it first appears terminal
    after the baseline. The first listing is the baseline: what is terminal then is history, not news.
    Past `max_tracked` tasks the older ones still count in the gauges but are not remembered, so their
    transitions go uncounted (`untracked` says how many) and memory stays bounded.

    A complete listing replaces the tracked set. It works on a copy of the previous tasks (a C-speed
    copy that shares their id strings) and rewrites each task it lists: a finished task's code takes the
    new parity, an active one joins the listed active set; what is left with the old parity, or active
    and not listed, has gone. A `partial` listing (an incremental poll: the active set, the newborn and
    the resolved) collects the items it lists apart and lays them over the previous tasks at the end,
    dropping those reported `vanished`. Nothing of `previous` is changed, so an abandoned listing costs
    nothing.
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
        self._room = self._limit
        """How many more of the listed items can be tracked."""
        self._partial = partial
        self._parity = previous.parity if partial else 1 - previous.parity
        self._last_poll = previous.polled_at if previous.polled_at is not None else now
        self._baseline = previous.polled_at is None
        self._tasks: dict[str, Tracked | int] = {} if partial else dict(previous.tasks)
        """The listed items (partial), or every tracked item, rewritten as the listing goes (complete)."""
        self._untracked: set[str] = set()
        self._vanished: set[str] = set()
        self._untracked_counts: dict[Key, int] = {}
        self._born = 0
        """Tracked items this listing that the previous state did not track."""
        self._oldest: dict[Key, float] = {}
        self._active: set[str] = set()
        self._transitions = dict(previous.transitions)
        self._completions = dict(previous.completions)
        self._groups = dict.fromkeys(previous.groups)
        self._statuses = dict.fromkeys(previous.statuses)
        self._tallies = dict(previous.tallies)
        self._keys = list(previous.keys)
        self._indexes = {key: index for index, key in enumerate(self._keys)}
        self._codes: dict[tuple[str, str], tuple[int, int]] = {}
        """(status, group) as listed -> (the code of a finished item of that key in this listing, the code
        it had before). Every task of the key gets this one int object: one per key, not per task."""
        self._announced: set[int] = set()
        """Codes whose status and group are in `statuses` and `groups` (those of unchanged items are)."""

    @property
    def previous(self) -> NamespaceState:
        return self._previous

    @property
    def partial(self) -> bool:
        return self._partial

    def listed(self, item_id: str) -> bool:
        if item_id in self._active or item_id in self._untracked:
            return True
        value = self._tasks.get(item_id)
        if self._partial:
            return value is not None
        return value is not None and is_code(value) and parity_of(value) == self._parity

    def add(self, items: Sequence[Item]) -> int:
        """Fold in one page, newest first; returns how many of its items were new to this listing.

        The hot loop of a poll: a finished task listed again unchanged costs two dict lookups and a
        store into a slot that exists (the id just decoded goes with its page), and allocates nothing.
        """
        tasks, untracked, active, oldest = self._tasks, self._untracked, self._active, self._oldest
        codes, keys, partial = self._codes, self._keys, self._partial
        announced = self._announced
        before_of = self._previous.tasks.get if partial else tasks.get
        room = start = self._room
        untracked_before = len(untracked)
        for item in items:
            item_id = item.item_id
            pair = codes.get((item.status, item.group))
            if pair is None:
                pair = self._code(item.status, item.group)
            code, unchanged = pair
            before = before_of(item_id)
            if before == unchanged and room:  # finished, unchanged, not yet listed (never true if partial)
                tasks[item_id] = code
                room -= 1
                continue
            if (
                item_id in active
                or item_id in untracked
                or (item_id in tasks if partial else self._rewritten(before))
            ):
                continue  # listed already: pages overlap when tasks are born during the listing
            key = keys[key_index(code)]
            if code not in announced:
                self._announce(code, key)
            if not room:
                untracked.add(item_id)
                self._untracked_counts[key] = self._untracked_counts.get(key, 0) + 1
                if key[0] not in _TERMINAL and (created := item.created_at) is not None:
                    _earliest(oldest, key, created)
                continue
            room -= 1
            if isinstance(before, Tracked) and before.key == key:  # active, unchanged
                if partial:
                    tasks[item_id] = before
                active.add(before.item_id)
                _earliest(oldest, key, before.started)
            else:
                tasks[item_id] = self._change(item, item_id, key, code, before)
        self._room = room
        return start - room + len(untracked) - untracked_before

    def vanish(self, item_ids: Iterable[str]) -> None:
        """Items a partial listing looked for and the API no longer has."""
        self._vanished.update(i for i in item_ids if not self.listed(i))

    def _code(self, status: str, group: str) -> tuple[int, int]:
        """The code of a finished item listed with this (status, group), and the code such an item had
        before this listing rewrote it (the other parity); a new key joins the keys."""
        key = (label_value(status), label_value(group))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = len(self._keys)
            self._keys.append(key)
        pair = self._codes[(status, group)] = (encode(index, self._parity), encode(index, 1 - self._parity))
        return pair

    def _rewritten(self, before: Tracked | int | None) -> bool:
        """Whether a complete listing has listed this finished item already (its code has the new parity)."""
        return before is not None and is_code(before) and parity_of(before) == self._parity

    def _announce(self, code: int, key: Key) -> None:
        """A key that an item of this listing has (not one merely repeated) gets its series."""
        self._announced.add(code)
        self._statuses.setdefault(key[0])
        self._groups.setdefault(key[1])

    def _key_of(self, value: Tracked | int) -> Key:
        return self._keys[key_index(value)] if is_code(value) else value.key

    def _change(
        self, item: Item, item_id: str, key: Key, code: int, before: Tracked | int | None
    ) -> Tracked | int:
        """A task new to us or in a new status: remember it (as active, unless finished), and count it if
        it just finished.

        Only an active task keeps its creation time (for the oldest-active age): most tasks are
        finished, and for them neither the parse nor the float is worth paying. A finished task that
        turns active again starts its first sight afresh: a finished task does not keep it."""
        terminal = key[0] in _TERMINAL
        if before is None:
            self._born += 1
            was_finished = item_id in self._previous.gone or (self._baseline and terminal)
            first_seen = self._now
        elif is_code(before):
            was_finished, first_seen = True, self._now
        else:
            was_finished, first_seen, item_id = before.finished, before.first_seen, before.item_id
        counted = terminal and not was_finished
        created = item.created_at if counted or not terminal else None
        if counted:
            self._count(
                item, item_id, key, created if created is not None else _first_seen(before, self._last_poll)
            )
        if terminal:
            return code
        self._active.add(item_id)
        tracked = Tracked(item_id, key, first_seen, created, was_finished)
        _earliest(self._oldest, key, tracked.started)
        return tracked

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
            # Every tracked task listed again (the usual case) means none left: skip the sweep.
            kept = self._limit - self._room - self._born
            left = () if kept == len(previous.tasks) else self._sweep()
            counts = self._counts()
        gone = {item_id: when for item_id, when in previous.gone.items() if item_id not in tasks}
        gone.update((item_id, now) for item_id in left if _finished(previous.tasks[item_id]))
        gone = {item_id: when for item_id, when in gone.items() if now - when < GONE_TTL_SECONDS}
        if len(gone) > self._limit:
            gone = dict(sorted(gone.items(), key=lambda item: item[1], reverse=True)[: self._limit])
        return NamespaceState(
            buckets=previous.buckets,
            polled_at=now,
            tasks=tasks,
            keys=tuple(self._keys),
            parity=self._parity,
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
        )

    def _counts(self) -> Counter[Key]:
        """The gauges after a complete listing: its untracked items, its codes (counted at C speed, they
        are few distinct ints), its active items (the only Tracked left)."""
        counts = Counter(self._untracked_counts)
        keys, tasks = self._keys, self._tasks
        for value, n in Counter(tasks.values()).items():
            if is_code(value):
                counts[keys[key_index(value)]] += n
        counts.update(map(_KEY_OF, map(tasks.__getitem__, self._active)))
        return counts

    def _sweep(self) -> list[str]:
        """Drop the tracked items this complete listing did not list; returns their ids, less those
        merely past the tracking cap (they are still there, so not gone)."""
        tasks, active = self._tasks, self._active
        # The codes of the previous listing, looked up (and `is_code` inlined) rather than a call per task.
        stale = frozenset(encode(index, 1 - self._parity) for index in range(len(self._keys)))
        unlisted = [
            item_id
            for item_id, value in tasks.items()
            if (value in stale if type(value) is int else item_id not in active)
        ]
        for item_id in unlisted:
            del tasks[item_id]
        return [item_id for item_id in unlisted if item_id not in self._untracked]

    def _merged(self) -> tuple[dict[str, Tracked | int], Counter[Key], int, Iterable[str]]:
        """A partial listing laid over the previous state: a C-speed copy, then only the changes."""
        previous = self._previous
        tasks = dict(previous.tasks)
        counts = Counter(previous.counts)
        vanished = {i for i in self._vanished if i in tasks}
        for item_id in (*vanished, *(i for i in self._tasks if i in previous.tasks)):
            key = self._key_of(previous.tasks[item_id])
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
        for item_id in vanished:
            del tasks[item_id]
        tasks.update(self._tasks)
        counts.update(map(self._key_of, self._tasks.values()))
        for item_id in previous.active - self._tasks.keys() - vanished:  # not followed up: as they were
            tracked = tasks[item_id]
            assert isinstance(tracked, Tracked), "an active item is never a code"
            self._active.add(item_id)
            _earliest(self._oldest, tracked.key, tracked.started)
        return tasks, counts, previous.untracked, vanished


def observe(
    previous: NamespaceState, listing: Iterable[Item], now: float, max_tracked: int | None = None
) -> NamespaceState:
    """Fold one complete listing, newest task first, into the state (see Observation)."""
    observation = Observation(previous, now, max_tracked)
    observation.add(list(listing))
    return observation.result()


def _first_seen(before: Tracked | int | None, last_poll: float) -> float:
    """Start of a task without a creation time: when first seen; a task born and finished between two
    polls gets the previous poll's time, so its duration is an upper bound of at most one poll interval."""
    return before.first_seen if isinstance(before, Tracked) else last_poll


def _finished(value: Tracked | int) -> bool:
    return is_code(value) or value.finished


def restore(
    *,
    buckets: tuple[float, ...],
    polled_at: float,
    tasks: Iterable[TrackedRow],
    gone: Mapping[str, float],
    groups: tuple[str, ...],
    statuses: tuple[str, ...],
    transitions: Mapping[Key, int],
    completions: Mapping[Key, Histogram],
    tallies: Mapping[tuple[str, ...], int],
) -> NamespaceState:
    """A state read back from the state file; until the next poll, gauges are those of its tracked tasks.

    A task in a terminal status becomes a code whatever the row says: that is how a state keeps it."""
    parity = 0  # of every restored code, as the state says; the next complete listing writes the other
    indexes: dict[Key, int] = {}
    codes: dict[Key, int] = {}  # each terminal key's code, made once: its tasks share one int object
    remembered: dict[str, Tracked | int] = {}
    counts: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    active = []
    canonical: dict[Key, Key] = {}
    for item_id, read_key, first_seen, created_at, finished in tasks:
        key = canonical.setdefault(read_key, read_key)  # one tuple for all the tasks that have it
        index = indexes.setdefault(key, len(indexes))
        if key[0] in _TERMINAL:
            code = codes.get(key)
            if code is None:
                code = codes[key] = encode(index, parity)
            remembered[item_id] = code
            _tally(counts, oldest, key, None)
        else:
            tracked = remembered[item_id] = Tracked(item_id, key, first_seen, created_at, finished)
            _tally(counts, oldest, key, tracked.started)
            active.append(item_id)
    return NamespaceState(
        buckets=buckets,
        polled_at=polled_at,
        tasks=remembered,
        keys=tuple(indexes),
        parity=parity,
        gone=gone,
        groups=groups,
        statuses=statuses,
        counts=counts,
        oldest_active=oldest,
        transitions=transitions,
        completions=completions,
        tallies=tallies,
        active=frozenset(active),
    )


def _tally(counts: dict[Key, int], oldest: dict[Key, float], key: Key, active_since: float | None) -> None:
    """Count one task in the gauges; `active_since` is its start when it is non-terminal and known."""
    counts[key] = counts.get(key, 0) + 1
    if active_since is not None:
        _earliest(oldest, key, active_since)


def _earliest(oldest: dict[Key, float], key: Key, since: float) -> None:
    if since < oldest.get(key, since + 1):
        oldest[key] = since
