"""The optional state file: what the exporter knows of each namespace, kept across restarts.

With it, the first poll after a restart is not a baseline: a task that finished while the exporter was
down is counted once, and none twice, and counters carry on from where they were.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from exporter.histogram import Histogram
from exporter.state import NamespaceState, Row, restore

FORMAT = "mixpeek-exporter-state/1"


class StateFileError(Exception):
    """The file is not one of ours, is for another API or scope, or is damaged."""


States = Mapping[str, NamespaceState]


def encode(tasks: States, batches: States, identity: str) -> bytes:
    body = {
        "format": FORMAT,
        "identity": identity,
        "namespaces": {name: _encode_state(state) for name, state in tasks.items() if state.polled_at},
        "batches": {name: _encode_state(state) for name, state in batches.items() if state.polled_at},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes, identity: str, buckets: tuple[float, ...]) -> tuple[States, States]:
    """(task states, batch states) by namespace."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise StateFileError("not a mixpeek-exporter state file")
        if body.get("identity") != identity:
            raise StateFileError(f"written for {body.get('identity')!r}, not {identity!r}")
        tasks = {name: _decode_state(raw, buckets) for name, raw in body["namespaces"].items()}
        batches = {name: _decode_state(raw, buckets) for name, raw in body["batches"].items()}
        return tasks, batches
    except StateFileError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateFileError(f"damaged: {type(exc).__name__}: {exc}") from None


def _encode_state(state: NamespaceState) -> dict[str, Any]:
    return {
        "polled_at": state.polled_at,
        "buckets": list(state.buckets),
        "groups": list(state.groups),
        "statuses": list(state.statuses),
        "tasks": [
            [item_id, status, group, first_seen, created_at, finished]
            for item_id, (status, group), first_seen, created_at, finished in state.rows()
        ],
        "gone": list(state.gone.items()),
        "transitions": [[status, group, n] for (status, group), n in state.transitions.items()],
        "completions": [
            [status, group, list(h.counts), h.total] for (status, group), h in state.completions.items()
        ],
        "tallies": [[*key, n] for key, n in state.tallies.items()],
    }


def _decode_state(raw: dict[str, Any], buckets: tuple[float, ...]) -> NamespaceState:
    completions = {}
    if tuple(raw["buckets"]) == buckets:  # histograms with other bounds cannot be carried over; counters can
        for status, group, counts, total in raw["completions"]:
            if len(counts) != len(buckets) + 1:
                raise ValueError("histogram size does not match its buckets")
            exemplars = Histogram.empty(buckets).exemplars
            completions[(str(status), str(group))] = Histogram(
                buckets, tuple(counts), float(total), exemplars
            )
    return restore(
        buckets=buckets,
        polled_at=float(raw["polled_at"]),
        tasks=_rows(raw["tasks"]),
        gone={str(item_id): float(when) for item_id, when in raw["gone"]},
        groups=tuple(map(str, raw["groups"])),
        statuses=tuple(map(str, raw["statuses"])),
        transitions={(str(s), str(g)): int(n) for s, g, n in raw["transitions"]},
        completions=completions,
        tallies={tuple(map(str, row[:-1])): int(row[-1]) for row in raw["tallies"]},
    )


def _rows(raw: list[Any]) -> Iterator[Row]:
    """The task rows, checked, one at a time: a million of them are not worth a second list."""
    keys: dict[tuple[str, str], tuple[str, str]] = {}
    for item_id, status, group, first, created, finished in raw:
        key = keys.setdefault((str(status), str(group)), (str(status), str(group)))
        yield str(item_id), key, float(first), _opt(created), bool(finished)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


class StateFile:
    """Loads at start; saves after polls atomically (write, fsync, rename), one at a time, in a thread."""

    def __init__(
        self,
        path: Path,
        identity: str,
        buckets: tuple[float, ...],
        *,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.path = path
        self._identity = identity
        self._buckets = buckets
        self._log = logger or structlog.get_logger("exporter.statefile")
        self._pending: tuple[States, States] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.writes: Counter[str] = Counter()
        """Saves by result, "ok" or "error"."""

    def load(self) -> tuple[States, States]:
        """The saved task and batch states, or nothing (said once in the log) when the file is absent,
        foreign or damaged."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._log.info("no state file yet; the first poll is a baseline", path=str(self.path))
            return {}, {}
        except OSError as exc:
            self._log.error("state file unreadable; starting afresh", path=str(self.path), error=str(exc))
            return {}, {}
        try:
            tasks, batches = decode(data, self._identity, self._buckets)
        except StateFileError as exc:
            self._log.error("state file ignored; starting afresh", path=str(self.path), error=str(exc))
            return {}, {}
        self._log.info("state restored", path=str(self.path), namespaces=sorted(tasks))
        return tasks, batches

    def save_soon(self, tasks: States, batches: States) -> None:
        """Queue a save of this state; saves coalesce, so a burst of polls costs one or two writes."""
        self._pending = (tasks, batches)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every queued save is on disk."""
        if self._writer is not None:
            await self._writer

    async def _drain(self) -> None:
        while self._pending is not None:
            (tasks, batches), self._pending = self._pending, None
            try:
                await asyncio.to_thread(self.save, tasks, batches)
            except OSError as exc:
                self.writes["error"] += 1
                self._log.error("state file not saved", path=str(self.path), error=str(exc))
            else:
                self.writes["ok"] += 1

    def save(self, tasks: States, batches: States) -> None:
        data = encode(tasks, batches, self._identity)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a crash
        finally:
            os.close(directory)
