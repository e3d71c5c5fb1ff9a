"""Metric names (a contract: dashboards and alerts use them), the published Snapshot, and its collector.

The poller swaps in a new immutable Snapshot after each poll; `collect()` reads the reference once and
yields fresh families from it, so a scrape never sees half a poll and never blocks one.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar

from exporter.histogram import Exemplar, Histogram
from exporter.state import TERMINAL_STATUSES, NamespaceState

TASKS = "mixpeek_tasks"
TERMINAL_TRANSITIONS = "mixpeek_task_terminal_transitions"  # exposed with _total
COMPLETION_SECONDS = "mixpeek_task_completion_seconds"
OLDEST_ACTIVE_AGE = "mixpeek_task_oldest_active_age_seconds"
UP = "mixpeek_up"
LAST_SUCCESS = "mixpeek_exporter_last_success_timestamp_seconds"
POLL_DURATION = "mixpeek_exporter_poll_duration_seconds"
POLL_ERRORS = "mixpeek_exporter_poll_errors"  # exposed with _total
API_REQUESTS = "mixpeek_exporter_api_requests"  # exposed with _total
TRACKED_TASKS = "mixpeek_exporter_tracked_tasks"
UNTRACKED_TASKS = "mixpeek_exporter_untracked_tasks"
STATE_WRITES = "mixpeek_exporter_state_file_writes"  # exposed with _total
BUILD_INFO = "mixpeek_exporter_build_info"

POLL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_LABELS = ("namespace", "status", "task_type")

# name as exposed, type, labels, help: the README's metrics table is checked against this.
METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (TASKS, "gauge", TASK_LABELS, "Tasks listed in each status by the last complete poll."),
    (
        f"{TERMINAL_TRANSITIONS}_total",
        "counter",
        TASK_LABELS,
        "Tasks observed entering a terminal status (COMPLETED, COMPLETED_WITH_ERRORS, FAILED, CANCELED).",
    ),
    (COMPLETION_SECONDS, "histogram", TASK_LABELS, "Time from task creation to its terminal status."),
    (OLDEST_ACTIVE_AGE, "gauge", TASK_LABELS, "Age of the oldest task in each non-terminal status."),
    (UP, "gauge", ("namespace",), "1 if the last poll of the namespace succeeded, else 0."),
    (LAST_SUCCESS, "gauge", ("namespace",), "Unix time of the last complete poll of the namespace."),
    (POLL_DURATION, "histogram", ("namespace",), "Wall time of complete polls."),
    (f"{POLL_ERRORS}_total", "counter", ("namespace", "reason"), "Failed polls by reason."),
    (f"{API_REQUESTS}_total", "counter", ("endpoint", "code"), "Requests sent to the Mixpeek API."),
    (TRACKED_TASKS, "gauge", ("namespace",), "Tasks held in memory for the namespace."),
    (
        UNTRACKED_TASKS,
        "gauge",
        ("namespace",),
        "Listed tasks past MIXPEEK_MAX_TRACKED_TASKS: in the gauges, but their transitions are not counted.",
    ),
    (
        f"{STATE_WRITES}_total",
        "counter",
        ("result",),
        "Saves of MIXPEEK_STATE_FILE by result (ok, error); absent without a state file.",
    ),
    (BUILD_INFO, "gauge", ("version", "python_version"), "Always 1; labels carry the exporter's build."),
)
_HELP = {name.removesuffix("_total"): text for name, _, _, text in METRICS}


@dataclass(frozen=True)
class NamespaceHealth:
    up: bool
    last_success: float | None
    poll_durations: Histogram
    errors: Mapping[str, int] = field(default_factory=dict)
    failing: str | None = None
    """The reason the last poll failed, None after a success: logs speak when this changes."""


@dataclass(frozen=True)
class Snapshot:
    """Everything /metrics shows, as of the end of the last poll of each namespace."""

    namespaces: Mapping[str, NamespaceState] = field(default_factory=dict)
    health: Mapping[str, NamespaceHealth] = field(default_factory=dict)
    api_requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    state_writes: Mapping[str, int] = field(default_factory=dict)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], version: str, now: Callable[[], float]) -> None:
        self._snapshot = snapshot
        self._version = version
        self._now = now

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield from self._task_families(snapshot.namespaces)
        yield from self._health_families(snapshot)
        info = GaugeMetricFamily(BUILD_INFO, _HELP[BUILD_INFO], labels=("version", "python_version"))
        info.add_metric((self._version, platform.python_version()), 1)
        yield info

    def _task_families(self, namespaces: Mapping[str, NamespaceState]) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(TASKS, _HELP[TASKS], labels=TASK_LABELS)
        transitions = CounterMetricFamily(
            TERMINAL_TRANSITIONS, _HELP[TERMINAL_TRANSITIONS], labels=TASK_LABELS
        )
        completions = HistogramMetricFamily(COMPLETION_SECONDS, _HELP[COMPLETION_SECONDS], labels=TASK_LABELS)
        oldest = GaugeMetricFamily(OLDEST_ACTIVE_AGE, _HELP[OLDEST_ACTIVE_AGE], labels=TASK_LABELS)
        now = self._now()
        for namespace, state in sorted(namespaces.items()):
            for task_type in state.groups:
                for status in state.statuses:
                    tasks.add_metric((namespace, status, task_type), state.counts.get((status, task_type), 0))
                for status in TERMINAL_STATUSES:
                    key = (status, task_type)
                    labels = (namespace, status, task_type)
                    transitions.add_metric(labels, state.transitions.get(key, 0))
                    histogram = state.completion(key)
                    completions.add_metric(labels, _buckets(histogram), histogram.total)
            for (status, task_type), started in sorted(state.oldest_active.items()):
                oldest.add_metric((namespace, status, task_type), max(0.0, now - started))
        yield from (tasks, transitions, completions, oldest)

    def _health_families(self, snapshot: Snapshot) -> Iterator[Metric]:
        up = GaugeMetricFamily(UP, _HELP[UP], labels=("namespace",))
        last = GaugeMetricFamily(LAST_SUCCESS, _HELP[LAST_SUCCESS], labels=("namespace",))
        durations = HistogramMetricFamily(POLL_DURATION, _HELP[POLL_DURATION], labels=("namespace",))
        errors = CounterMetricFamily(POLL_ERRORS, _HELP[POLL_ERRORS], labels=("namespace", "reason"))
        tracked = GaugeMetricFamily(TRACKED_TASKS, _HELP[TRACKED_TASKS], labels=("namespace",))
        untracked = GaugeMetricFamily(UNTRACKED_TASKS, _HELP[UNTRACKED_TASKS], labels=("namespace",))
        for namespace, health in sorted(snapshot.health.items()):
            up.add_metric((namespace,), 1 if health.up else 0)
            if health.last_success is not None:
                last.add_metric((namespace,), health.last_success)
            durations.add_metric((namespace,), _buckets(health.poll_durations), health.poll_durations.total)
            for reason, count in sorted(health.errors.items()):
                errors.add_metric((namespace, reason), count)
        for namespace, state in sorted(snapshot.namespaces.items()):
            tracked.add_metric((namespace,), len(state.tasks))
            untracked.add_metric((namespace,), state.untracked)
        requests = CounterMetricFamily(API_REQUESTS, _HELP[API_REQUESTS], labels=("endpoint", "code"))
        for (endpoint, code), count in sorted(snapshot.api_requests.items()):
            requests.add_metric((endpoint, code), count)
        writes = CounterMetricFamily(STATE_WRITES, _HELP[STATE_WRITES], labels=("result",))
        for result, count in sorted(snapshot.state_writes.items()):
            writes.add_metric((result,), count)
        yield from (up, last, durations, errors, tracked, untracked, requests, writes)


def _buckets(histogram: Histogram) -> list[tuple[str, float] | tuple[str, float, PromExemplar]]:
    return [_bucket(le, count, exemplar) for le, count, exemplar in histogram.cumulative()]


def _bucket(
    le: str, count: int, exemplar: Exemplar | None
) -> tuple[str, float] | tuple[str, float, PromExemplar]:
    # OpenMetrics caps an exemplar's label set at 128 characters; task ids are far shorter.
    if exemplar is None or len(exemplar.task_id) > 100:
        return (le, count)
    return (le, count, PromExemplar({"task_id": exemplar.task_id}, exemplar.value, exemplar.timestamp))
