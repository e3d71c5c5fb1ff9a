"""What the exporter remembers of a namespace's tasks (or batches) between polls; how a listing changes it.

`observe(previous, items, now)` returns a new state; no I/O, no clock reads. The one thing not copied from
state to state is the table of tracked tasks, which a listing changes in place (see TaskTable); every number a
state holds is its own. Tasks and batches share it: each item has a status and a group (the task type, or the
batch's bucket).
"""

from __future__ import annotations

import re
import sys
import threading
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
# `keys`, and the generation of the listing that last wrote it (see TaskTable). Only the functions below
# know how the two are packed.

GENERATIONS = 1 << 30
"""How many listings can be told apart by the codes they wrote: a billion abandoned in a row before a
stamp could be mistaken for this listing's (at one a second, 34 years)."""


def encode(index: int, generation: int) -> int:
    """The code of a finished task whose key is `keys[index]`, written by a listing of this generation."""
    return index * GENERATIONS + generation


def key_index(code: int) -> int:
    """Where the key of the task this code stands for is in `keys`."""
    return code // GENERATIONS


def generation_of(code: int) -> int:
    """The generation of the listing that wrote this code."""
    return code % GENERATIONS


def is_code(value: Tracked | int) -> TypeIs[int]:
    """Whether a remembered task is a code (it is in a terminal status) rather than a `Tracked`."""
    return type(value) is int


class StaleState(Exception):
    """A state whose task table a newer state has taken over: only the newest state of a namespace lists
    its tasks, or is built on (`NamespaceState.newest` finds it)."""


class TaskTable:
    """The tracked items of one namespace, by id: a single dict handed from each state to the next.

    A million tasks make a 30 MB dict. Copying it for every listing, so that the previous state stayed
    whole, took the process past its memory budget (issue 15), so a listing changes the table in place,
    under rules that keep what any reader sees consistent:

    - While its pages come in, a complete listing only re-stamps the finished items it lists again, unchanged,
      with its own generation: the value changes, what it stands for (the key) does not. Everything else it
      collects apart.
    - Its result applies what it collected and removes what it did not list, holding `lock`, and makes the
      new state the table's owner (`version` goes up by one; `owner` is that state). A state that is no
      longer the owner raises StaleState when asked for its tasks; the numbers it holds (counts,
      transitions...) are its own and stay valid.
    - The state file's writer holds `lock` while it reads a state's rows, so a result waits for it.

    An abandoned listing leaves nothing but stamps of a generation that no later listing uses.
    """

    def __init__(self, items: dict[str, Tracked | int] | None = None, generation: int = 0) -> None:
        self.items: dict[str, Tracked | int] = {} if items is None else items
        self.lock = threading.Lock()
        self.version = 0
        """The version of the newest state, the one `items` belongs to; each applied listing adds one."""
        self.owner: NamespaceState | None = None
        """The state that applied the last listing (copies of it made with `replace` are as new)."""
        self._issued = generation

    def next_generation(self) -> int:
        """A generation no code in the table has: one more than any listing so far was given."""
        self._issued = (self._issued + 1) % GENERATIONS
        return self._issued

    def __repr__(self) -> str:
        return f"TaskTable({len(self.items)} items)"


@dataclass(frozen=True)
class NamespaceState:
    buckets: tuple[float, ...]
    polled_at: float | None = None
    """When the last complete listing was taken; None until the baseline poll."""
    table: TaskTable = field(default_factory=TaskTable, compare=False, repr=False)
    """The tracked items, shared with the states before and after this one; see `tasks`."""
    version: int = 0
    """Which version of `table` this state holds: it is the newest state while the table has no later one."""
    tracked: int = 0
    """How many items `tasks` held when this state was made."""
    keys: tuple[Key, ...] = ()
    """What the codes in `tasks` index; append-only, so a code stays valid from one state to the next."""
    generation: int = 0
    """The generation of every code in `tasks` when this state was made (see TaskTable)."""
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

    def __post_init__(self) -> None:
        if self.table.owner is None:  # a new table; a listing's result takes an existing one over
            self.table.owner = self

    @property
    def current(self) -> bool:
        """Whether this is the newest state of its namespace, the owner of its task table."""
        return self.version == self.table.version

    @property
    def newest(self) -> NamespaceState:
        """The newest state of this one's namespace: itself, unless a listing was applied to it since."""
        return self if self.current or self.table.owner is None else self.table.owner

    @property
    def tasks(self) -> Mapping[str, Tracked | int]:
        """Tracked items by id. One in a terminal status is a code (see `encode`): most of a million tasks
        are finished, and every task of one key holds the same int object (a listing makes one per key),
        so such a task costs its id and its dict slot only. Read them through `rows()`."""
        if not self.current:
            raise StaleState("this state has been superseded by a newer one of its namespace")
        return self.table.items

    def rows(self) -> Iterator[TrackedRow]:
        """Every tracked item in full. A finished one's first sight is not kept, nor needed (it is never
        counted again): the last poll stands in for it. Read it holding `table.lock`."""
        keys, polled_at = self.keys, self.polled_at or 0.0
        for item_id, value in self.tasks.items():
            if is_code(value):
                yield item_id, keys[key_index(value)], polled_at, None, True
            else:
                yield item_id, value.key, value.first_seen, value.created_at, value.finished


class Observation:
    """One listing being folded into a state, page by page, so a million tasks never sit in memory twice.

    A task counts once: when seen non-terminal and later terminal, or when it first appears terminal
    after the baseline. The first listing is the baseline: what is terminal then is history, not news.
    Past `max_tracked` tasks the older ones still count in the gauges but are not remembered, so their
    transitions go uncounted (`untracked` says how many) and memory stays bounded.

    Both kinds of listing collect apart what they change (`_changes`: tasks new to the table, or in a new
    status) and apply it to the shared task table in `result()` (see TaskTable). A complete listing also
    stamps each finished task it lists again, unchanged, with its generation, in place; what is left with
    another generation, or active and not listed, has gone. A `partial` listing (an incremental poll: the
    active set, the newborn and the resolved) stamps nothing, and drops those reported `vanished`. Until
    `result()`, the previous state is whole, so an abandoned listing costs nothing.
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
        if not previous.current:
            raise StaleState("a listing builds on the newest state of its namespace only")
        self._table = previous.table
        self._items = previous.table.items
        self._now = now
        self._limit = max_tracked if max_tracked is not None else sys.maxsize
        self._room = self._limit
        """How many more of the listed items can be tracked."""
        self._partial = partial
        self._generation = previous.generation if partial else self._table.next_generation()
        self._last_poll = previous.polled_at if previous.polled_at is not None else now
        self._baseline = previous.polled_at is None
        self._changes: dict[str, Tracked | int] = {}
        """Items new to the table or changed (and, if partial, every item listed): applied by result()."""
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
        it had after the previous one; -1 if partial). Every task of the key gets this one int object: one
        per key, not per task."""
        self._announced: set[int] = set()
        """Codes whose status and group are in `statuses` and `groups` (those of unchanged items are)."""

    @property
    def previous(self) -> NamespaceState:
        return self._previous

    @property
    def partial(self) -> bool:
        return self._partial

    def listed(self, item_id: str) -> bool:
        return (
            item_id in self._active
            or item_id in self._untracked
            or item_id in self._changes
            or self._stamped(self._items.get(item_id))
        )

    def add(self, items: Sequence[Item]) -> int:
        """Fold in one page, newest first; returns how many of its items were new to this listing.

        The hot loop of a poll: a finished task listed again unchanged costs two dict lookups and a
        store into a slot that exists (the id just decoded goes with its page), and allocates nothing.
        """
        table, changes, untracked, active = self._items, self._changes, self._untracked, self._active
        codes, keys, oldest, announced = self._codes, self._keys, self._oldest, self._announced
        complete, generation = not self._partial, self._generation
        before_of = table.get
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
                table[item_id] = code  # a stamp: see TaskTable
                room -= 1
                continue
            if item_id in active or item_id in untracked or item_id in changes:
                continue  # listed already: pages overlap when tasks are born during the listing
            # A finished task of the table, in a complete listing (`is_code` inlined: most of a first
            # listing's million tasks come this way).
            finished = before if complete and type(before) is int else None
            if finished is not None and generation_of(finished) == generation:
                continue  # listed already, and stamped
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
            if finished is not None and key_index(finished) == key_index(code):
                table[item_id] = code  # stamped by an abandoned listing: only the generation changes
            elif isinstance(before, Tracked) and before.key == key:  # active, unchanged
                if not complete:
                    changes[item_id] = before
                active.add(before.item_id)
                _earliest(oldest, key, before.started)
            else:
                changes[item_id] = self._change(item, item_id, key, code, before)
                if finished is not None:  # stamped too, so that a second sight takes no fast path
                    table[item_id] = encode(key_index(finished), generation)
        self._room = room
        return start - room + len(untracked) - untracked_before

    def vanish(self, item_ids: Iterable[str]) -> None:
        """Items a partial listing looked for and the API no longer has."""
        self._vanished.update(i for i in item_ids if not self.listed(i))

    def _code(self, status: str, group: str) -> tuple[int, int]:
        """The code of a finished item listed with this (status, group), and the code such an item had
        after the previous listing (none if partial: it stamps nothing); a new key joins the keys."""
        key = (label_value(status), label_value(group))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = len(self._keys)
            self._keys.append(key)
        before = -1 if self._partial else encode(index, self._previous.generation)
        pair = self._codes[(status, group)] = (encode(index, self._generation), before)
        return pair

    def _stamped(self, before: Tracked | int | None) -> bool:
        """Whether a complete listing has listed this finished item already (its code has its generation)."""
        return (
            not self._partial
            and before is not None
            and is_code(before)
            and generation_of(before) == self._generation
        )

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
        """The new state, once every page (and, for a partial listing, every follow-up) is in.

        It takes the task table over from the previous state, which from then on is stale."""
        previous, table = self._previous, self._table
        with table.lock:
            if not previous.current:
                raise StaleState("another listing of this state has been applied")
            if self._partial:
                counts, untracked, left = self._merged()
            else:
                # Every tracked task listed again (the usual case) means none left: skip the sweep.
                missing = len(self._items) != self._limit - self._room - self._born
                if self._items:
                    self._items.update(self._changes)
                else:  # a first listing: what it collected is the table, and is not copied into it
                    table.items = self._items = self._changes
                left = self._sweep() if missing else []
                counts, untracked = self._counts(), len(self._untracked)
            table.version += 1
            state = table.owner = self._state(counts, untracked, left)
        return state

    def _state(self, counts: Mapping[Key, int], untracked: int, left: Iterable[str]) -> NamespaceState:
        previous, now, tasks = self._previous, self._now, self._items
        gone = {item_id: when for item_id, when in previous.gone.items() if item_id not in tasks}
        gone.update((item_id, now) for item_id in left)
        gone = {item_id: when for item_id, when in gone.items() if now - when < GONE_TTL_SECONDS}
        if len(gone) > self._limit:
            gone = dict(sorted(gone.items(), key=lambda item: item[1], reverse=True)[: self._limit])
        return NamespaceState(
            buckets=previous.buckets,
            polled_at=now,
            table=self._table,
            version=self._table.version,
            tracked=len(tasks),
            keys=tuple(self._keys),
            generation=self._generation,
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
        keys, tasks = self._keys, self._items
        for value, n in Counter(tasks.values()).items():
            if is_code(value):
                counts[keys[key_index(value)]] += n
        counts.update(map(_KEY_OF, map(tasks.__getitem__, self._active)))
        return counts

    def _sweep(self) -> list[str]:
        """Drop the tracked items this complete listing did not list; returns the ids of the finished ones
        among them, less those merely past the tracking cap (they are still there, so not gone)."""
        tasks, active = self._items, self._active
        # This listing's codes, looked up (and `is_code` inlined) rather than a call per task.
        listed = frozenset(encode(index, self._generation) for index in range(len(self._keys)))
        unlisted = [
            item_id
            for item_id, value in tasks.items()
            if (value not in listed if type(value) is int else item_id not in active)
        ]
        left = [i for i in unlisted if i not in self._untracked and _finished(tasks[i])]
        for item_id in unlisted:
            del tasks[item_id]
        return left

    def _merged(self) -> tuple[Counter[Key], int, list[str]]:
        """A partial listing laid over the table: only the changes, and the vanished (returned if finished)
        dropped."""
        previous, tasks, changes = self._previous, self._items, self._changes
        counts = Counter(previous.counts)
        vanished = [i for i in self._vanished if i in tasks]
        left = [i for i in vanished if _finished(tasks[i])]
        for item_id in (*vanished, *(i for i in changes if i in tasks)):
            key = self._key_of(tasks[item_id])
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
        for item_id in vanished:
            del tasks[item_id]
        tasks.update(changes)
        counts.update(map(self._key_of, changes.values()))
        for item_id in previous.active - changes.keys() - set(vanished):  # not followed up: as they were
            tracked = tasks[item_id]
            assert isinstance(tracked, Tracked), "an active item is never a code"
            self._active.add(item_id)
            _earliest(self._oldest, tracked.key, tracked.started)
        return counts, previous.untracked, left


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
    generation = 0  # of every restored code, as the state says; the next complete listing takes another
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
                code = codes[key] = encode(index, generation)
            remembered[item_id] = code
            _tally(counts, oldest, key, None)
        else:
            tracked = remembered[item_id] = Tracked(item_id, key, first_seen, created_at, finished)
            _tally(counts, oldest, key, tracked.started)
            active.append(item_id)
    return NamespaceState(
        buckets=buckets,
        polled_at=polled_at,
        table=TaskTable(remembered, generation),
        tracked=len(remembered),
        keys=tuple(indexes),
        generation=generation,
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
