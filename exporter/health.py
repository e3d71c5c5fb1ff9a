"""How a namespace's poll health changes with each poll, and which of those changes are worth a log line.

Pure, as `state.observe` is for tasks: (health before, outcome of one poll) -> (health after, notice). No
I/O, no clock reads, no logger: the poller writes the notice, so tests read the decision as data. Task
polls and batch listings keep a NamespaceHealth each; they differ only in what they log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from exporter.api import Reason
from exporter.histogram import Histogram
from exporter.metrics import POLL_DURATION_BUCKETS, NamespaceHealth


@dataclass(frozen=True)
class Notice:
    """A log line a change of health is worth; the poller adds the namespace and the error."""

    level: int
    event: str


@dataclass(frozen=True)
class Change:
    """The health after one poll, and what to log about it (None: nothing)."""

    health: NamespaceHealth
    notice: Notice | None
    after: str | None = None
    """The reason the polls had been failing with before this success, for a recovery notice."""


def empty() -> NamespaceHealth:
    """Before the first poll: down, never succeeded."""
    return NamespaceHealth(up=False, last_success=None, poll_durations=Histogram.empty(POLL_DURATION_BUCKETS))


def poll_succeeded(before: NamespaceHealth | None, now: float, duration: float, *, full: bool) -> Change:
    """A complete task poll; `full` when it listed every task (not only what changed)."""
    change = _succeeded(before, now, duration, "poll recovered")
    return replace(change, health=replace(change.health, last_full=now)) if full else change


def poll_failed(before: NamespaceHealth | None, reason: str) -> Change:
    """A failed task poll: said at warning each time, except a rejected key, said once per episode at
    error (it stays rejected until someone rotates it) and at debug while it lasts."""
    health = _failed(before, reason)
    if reason != Reason.UNAUTHORIZED:
        return Change(health, Notice(logging.WARNING, "poll failed"))
    if before is not None and before.failing == Reason.UNAUTHORIZED:
        return Change(health, Notice(logging.DEBUG, "poll failed: API key still rejected"))
    return Change(health, Notice(logging.ERROR, "poll failed: API key rejected"))


def batches_succeeded(before: NamespaceHealth | None, now: float, duration: float) -> Change:
    """A complete batch listing."""
    return _succeeded(before, now, duration, "batch poll recovered")


def batches_failed(before: NamespaceHealth | None, reason: str) -> Change:
    """A failed batch listing: said when the failing reason changes, not at every poll."""
    changed = before is None or before.failing != reason
    return Change(_failed(before, reason), Notice(logging.WARNING, "batch poll failed") if changed else None)


def _succeeded(before: NamespaceHealth | None, now: float, duration: float, recovered: str) -> Change:
    before = before or empty()
    health = replace(
        before,
        up=True,
        last_success=now,
        poll_durations=before.poll_durations.observe(duration),
        failing=None,
    )
    if before.failing is None:
        return Change(health, None)
    return Change(health, Notice(logging.INFO, recovered), after=before.failing)


def _failed(before: NamespaceHealth | None, reason: str) -> NamespaceHealth:
    before = before or empty()
    errors = dict(before.errors)
    errors[reason] = errors.get(reason, 0) + 1
    return replace(before, up=False, errors=errors, failing=reason)
