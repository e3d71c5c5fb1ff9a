"""The optional state file: what the exporter knows of each namespace, kept across restarts.

With it, the first poll after a restart is not a baseline: a task that finished while the exporter was
down is counted once, and none twice, and counters carry on from where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import structlog
from pydantic import SecretStr

from exporter.histogram import Histogram
from exporter.sharding import NamespaceFilter
from exporter.state import Key, NamespaceState, restore

FORMAT = "mixpeek-exporter-state/2"
"""One JSON document a line, written and read a line at a time: a million tasks never sit in memory as
one document (version 1 did, and cost several times the state to save or load). It goes:

    {"format": FORMAT, "identity": {part: value, ...}}            see identity()
    {"type": "state", "kind": "tasks" or "batches", "namespace": ..., ..., "gone": G, "tasks": N}
    [[item_id, when], ...]                                        G gone items, up to CHUNK a line
    [[item_id, [status, group], first_seen, created_at, finished], ...]   N rows, up to CHUNK a line
    ... (a state line and its chunks for each polled namespace)
    {"type": "end", "states": S}

The counts make a file cut anywhere show as damaged."""
FORMAT_1 = "mixpeek-exporter-state/1"
"""A single JSON document, written before files were bound to an API key: recognised, never restored."""
MAX_HEAD = 64 * 1024
"""Bytes read of the first line: a format 1 file is all one line, possibly of hundreds of MB."""
CHUNK = 1000
"""Items a line: a chunk is encoded or decoded whole, so this bounds the memory a save or a load adds."""

T = TypeVar("T")
Kind = Literal["tasks", "batches"]
Identity = Mapping[str, str]
_KEY_SALT = b"mixpeek-exporter state file identity\x00"
"""Hashed before the key, so that the file holds no bare hash of it to look up or compare elsewhere."""


def identity(
    key: SecretStr, url: str, scope: str, namespaces: Sequence[str], owner: NamespaceFilter
) -> Identity:
    """What a state file is for: the API key (a salted, truncated hash; never the key), the API, the scope
    and the namespaces polled. Counters restored into another setup would be someone else's, and every
    task already finished there would count as a new transition at the first poll (a spike of FAILED)."""
    fingerprint = hashlib.sha256(_KEY_SALT + key.get_secret_value().encode()).hexdigest()[:16]
    return {
        "api_key": fingerprint,
        "url": url,
        "scope": scope,
        "namespaces": ",".join(sorted(set(namespaces))) or "discover",
        "namespace_filter": f"shard {owner.shard} of {owner.total_shards}, "
        f"allow {owner.allow!r}, deny {owner.deny!r}",
    }


class StateFileError(Exception):
    """The file is not one of ours, is for another setup, or is damaged."""


class ForeignStateFile(StateFileError):
    """The file was written for another setup: `parts` names what differs (the key's hash is not shown)."""

    def __init__(self, parts: Sequence[str], detail: str) -> None:
        super().__init__(detail)
        self.parts = tuple(parts)


States = Mapping[str, NamespaceState]


class _State(msgspec.Struct, tag="state"):
    """A namespace's state but for its gone items and its tasks, which follow it, `gone` and `tasks` many."""

    kind: Kind
    namespace: str
    polled_at: float
    buckets: tuple[float, ...]
    groups: tuple[str, ...]
    statuses: tuple[str, ...]
    transitions: list[tuple[str, str, int]]
    completions: list[tuple[str, str, tuple[int, ...], float]]
    """(status, group, bucket counts, sum)"""
    tallies: list[tuple[tuple[str, ...], int]]
    gone: int
    tasks: int


class _End(msgspec.Struct, tag="end"):
    states: int


_ENCODER = msgspec.json.Encoder()
_STATE_OR_END = msgspec.json.Decoder(_State | _End)
_GONE = msgspec.json.Decoder(list[tuple[str, float]])
_ROWS = msgspec.json.Decoder(list[tuple[str, tuple[str, str], float, float | None, bool]])


def encode(tasks: States, batches: States, identity: Identity) -> Iterator[bytes]:
    """The file, a line at a time."""
    kinds: dict[Kind, States] = {"tasks": tasks, "batches": batches}
    polled = [
        (k, name, state) for k, states in kinds.items() for name, state in states.items() if state.polled_at
    ]
    yield _line({"format": FORMAT, "identity": dict(identity)})
    for kind, name, state in polled:
        yield from _encode_state(kind, name, state)
    yield _line(_End(len(polled)))


def _encode_state(kind: Kind, name: str, queued: NamespaceState) -> Iterator[bytes]:
    """One state's lines, read holding its task table's lock, so that no listing is applied meanwhile.
    If one was applied since the save was queued, its state is written instead: the file is then ahead
    of what is served, never behind."""
    with queued.table.lock:
        state = queued.newest
        yield _line(
            _State(
                kind=kind,
                namespace=name,
                polled_at=state.polled_at or 0.0,
                buckets=state.buckets,
                groups=state.groups,
                statuses=state.statuses,
                transitions=[(status, group, n) for (status, group), n in state.transitions.items()],
                completions=[(s, g, h.counts, h.total) for (s, g), h in state.completions.items()],
                tallies=list(state.tallies.items()),
                gone=len(state.gone),
                tasks=state.tracked,
            )
        )
        for items in (iter(state.gone.items()), state.rows()):
            while chunk := list(islice(items, CHUNK)):
                yield _line(chunk)


def _line(value: Any) -> bytes:
    return _ENCODER.encode(value) + b"\n"


def decode(lines: Iterable[bytes], identity: Identity, buckets: tuple[float, ...]) -> tuple[States, States]:
    """(task states, batch states) by namespace, from the file's lines (an open binary file will do)."""
    lines = iter(lines)
    try:
        head = json.loads(next(lines, b""))
        if not isinstance(head, dict) or head.get("format") not in (FORMAT, FORMAT_1):
            raise StateFileError("not a mixpeek-exporter state file")
        _check_identity(head, identity)
        return _decode_2(lines, buckets)
    except StateFileError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # msgspec's errors are ValueErrors
        raise StateFileError(f"damaged: {type(exc).__name__}: {exc}") from None


def _check_identity(head: dict[str, Any], expected: Identity) -> None:
    saved = head.get("identity")
    if head["format"] == FORMAT_1 or not isinstance(saved, dict):  # bound to "url|scope" only
        raise ForeignStateFile(
            list(expected),
            "written by an earlier version, which recorded neither API key nor namespaces",
        )
    differs = [part for part, value in expected.items() if saved.get(part) != value]
    if differs:
        shown = (
            "another API key" if part == "api_key" else f"{part} {saved.get(part)!r}, now {expected[part]!r}"
            for part in differs
        )
        raise ForeignStateFile(differs, "written for " + "; ".join(shown))


def _decode_2(lines: Iterator[bytes], buckets: tuple[float, ...]) -> tuple[States, States]:
    states: dict[Kind, dict[str, NamespaceState]] = {"tasks": {}, "batches": {}}
    for line in lines:
        entry = _STATE_OR_END.decode(line)
        if isinstance(entry, _End):
            read = len(states["tasks"]) + len(states["batches"])
            if entry.states != read:
                raise ValueError(f"{entry.states} states written, {read} read")
            return states["tasks"], states["batches"]
        gone = dict(_chunks(lines, entry.gone, _GONE))
        states[entry.kind][entry.namespace] = restore(
            buckets=buckets,
            polled_at=entry.polled_at,
            tasks=_chunks(lines, entry.tasks, _ROWS),
            gone=gone,
            groups=entry.groups,
            statuses=entry.statuses,
            transitions={(status, group): n for status, group, n in entry.transitions},
            completions=_histograms(entry.completions, entry.buckets, buckets),
            tallies=dict(entry.tallies),
        )
    raise ValueError("cut short: no end line")


def _chunks(lines: Iterator[bytes], count: int, decoder: msgspec.json.Decoder[list[T]]) -> Iterator[T]:
    """The next `count` items, a line of them at a time."""
    while count > 0:
        line = next(lines, None)
        chunk = [] if line is None else decoder.decode(line)
        if not 0 < len(chunk) <= count:
            raise ValueError(f"{count} items expected, a line of {len(chunk)} found")
        count -= len(chunk)
        yield from chunk


def _histograms(
    saved: Iterable[tuple[str, str, Iterable[int], float]],
    saved_buckets: Iterable[float],
    buckets: tuple[float, ...],
) -> dict[Key, Histogram]:
    """Histograms with other bounds cannot be carried over (counters can)."""
    completions = {}
    if tuple(saved_buckets) == buckets:
        exemplars = Histogram.empty(buckets).exemplars
        for status, group, raw, total in saved:
            counts = tuple(map(int, raw))
            if len(counts) != len(buckets) + 1:
                raise ValueError("histogram size does not match its buckets")
            completions[(str(status), str(group))] = Histogram(buckets, counts, float(total), exemplars)
    return completions


Saved = Callable[[States, States], None]


class StateFile:
    """Loads at start; saves after polls atomically (write, fsync, rename), one at a time, in a thread."""

    def __init__(
        self,
        path: Path,
        identity: Identity,
        buckets: tuple[float, ...],
        *,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.path = path
        self._identity = identity
        self._scope = identity.get("scope", "")
        self._buckets = buckets
        self._log = logger or structlog.get_logger("exporter.statefile")
        self._pending: tuple[States, States, Saved | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.writes: Counter[str] = Counter()
        """Saves by result, "ok" or "error"."""

    def listing_in(self, scope: str) -> None:
        """The scope the tasks are listed in now, when `auto` decides it at run time: a file saved in one
        is not restored into the other (its states would be the other scope's, e.g. `unknown` tasks)."""
        self._identity = {
            **self._identity,
            "scope": self._scope if scope == "namespace" else f"{self._scope}:{scope}",
        }

    def load(self) -> tuple[States, States]:
        """The saved task and batch states, or nothing (said once in the log) when the file is absent,
        foreign or damaged."""
        try:
            with open(self.path, "rb") as lines:
                head = lines.readline(MAX_HEAD)
                if len(head) == MAX_HEAD and not head.endswith(b"\n"):
                    detail = f"a first line over {MAX_HEAD} bytes, as in an earlier version's file (format 1)"
                    raise ForeignStateFile(list(self._identity), detail)
                tasks, batches = decode(chain([head], lines), self._identity, self._buckets)
        except FileNotFoundError:
            self._log.info("no state file yet; the first poll is a baseline", path=str(self.path))
            return {}, {}
        except OSError as exc:
            self._log.error("state file unreadable; starting afresh", path=str(self.path), error=str(exc))
            return {}, {}
        except ForeignStateFile as exc:
            self._log.warning(
                "state file is for another setup; starting afresh",
                path=str(self.path),
                differs=",".join(exc.parts),
                detail=str(exc),
            )
            return {}, {}
        except StateFileError as exc:
            self._log.error("state file ignored; starting afresh", path=str(self.path), error=str(exc))
            return {}, {}
        self._log.info("state restored", path=str(self.path), namespaces=sorted(tasks))
        return tasks, batches

    def save_soon(self, tasks: States, batches: States, saved: Saved | None = None) -> None:
        """Queue a save of this state; saves coalesce, so a burst of polls costs one or two writes.

        `saved` is called with what was written once it is on disk. If the write fails, the file is
        removed first: a restart then starts from a baseline rather than restore counters below those
        served (a drop, then a jump, to Prometheus)."""
        self._pending = (tasks, batches, saved)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every queued save is on disk."""
        if self._writer is not None:
            await self._writer

    async def _drain(self) -> None:
        while self._pending is not None:
            (tasks, batches, saved), self._pending = self._pending, None
            try:
                await asyncio.to_thread(self.save, tasks, batches)
            except Exception as exc:  # a full disk, or a bug: either way the file must not lag behind
                self.writes["error"] += 1
                self._log.error(
                    "state file not saved; removing it so that a restart starts afresh",
                    path=str(self.path),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=not isinstance(exc, OSError),
                )
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)
            else:
                self.writes["ok"] += 1
            if saved is not None:
                saved(tasks, batches)

    def save(self, tasks: States, batches: States) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.writelines(encode(tasks, batches, self._identity))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a crash
        finally:
            os.close(directory)
