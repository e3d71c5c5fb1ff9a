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
from exporter.state import NamespaceState
from exporter.views import View, view
from exporter.vocabulary import FAILURE_CATEGORIES, TERMINAL_STATUSES

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

BATCHES = "mixpeek_batches"
BATCH_TERMINAL_TRANSITIONS = "mixpeek_batch_terminal_transitions"  # exposed with _total
BATCH_COMPLETION_SECONDS = "mixpeek_batch_completion_seconds"
BATCH_OBJECTS = "mixpeek_batch_objects"  # exposed with _total
BATCH_FAILURES = "mixpeek_batch_failures"  # exposed with _total
BATCH_OLDEST_ACTIVE_AGE = "mixpeek_batch_oldest_active_age_seconds"

POLL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_LABELS = ("namespace", "status", "task_type")
BATCH_LABELS = ("namespace", "bucket_id", "status")
OUTCOMES = ("processed", "failed")

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
    (BATCHES, "gauge", BATCH_LABELS, "Batches listed in each status by the last complete poll."),
    (
        f"{BATCH_TERMINAL_TRANSITIONS}_total",
        "counter",
        BATCH_LABELS,
        "Batches observed entering a terminal status.",
    ),
    (
        BATCH_COMPLETION_SECONDS,
        "histogram",
        ("namespace", "status"),
        "Time from batch creation to its terminal status (the last tier's completion when known).",
    ),
    (
        f"{BATCH_OBJECTS}_total",
        "counter",
        ("namespace", "bucket_id", "outcome"),
        "Objects of finished batches, by outcome (processed, failed).",
    ),
    (
        f"{BATCH_FAILURES}_total",
        "counter",
        ("namespace", "bucket_id", "failure_category"),
        "Finished batches that carry a failure category, by category.",
    ),
    (BATCH_OLDEST_ACTIVE_AGE, "gauge", BATCH_LABELS, "Age of the oldest batch in each non-terminal status."),
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
    batches: Mapping[str, NamespaceState] = field(default_factory=dict)
    health: Mapping[str, NamespaceHealth] = field(default_factory=dict)
    api_requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    state_writes: Mapping[str, int] = field(default_factory=dict)


Fold = Callable[[NamespaceState], Callable[[str], str]]


def keep_all(state: NamespaceState) -> Callable[[str], str]:
    return lambda group: group


def drop_group(state: NamespaceState) -> Callable[[str], str]:
    """Aggregate every group into one series per namespace (an empty label, which Prometheus drops)."""
    return lambda group: ""


class SnapshotCollector(Collector):
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        version: str,
        now: Callable[[], float],
        bucket_fold: Fold = keep_all,
    ) -> None:
        self._snapshot = snapshot
        self._version = version
        self._now = now
        self._bucket_fold = bucket_fold

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield from self._task_families(snapshot.namespaces)
        yield from self._batch_families(snapshot.batches)
        yield from self._health_families(snapshot)
        info = GaugeMetricFamily(BUILD_INFO, _HELP[BUILD_INFO], labels=("version", "python_version"))
        info.add_metric((self._version, platform.python_version()), 1)
        yield info

    def _task_families(self, namespaces: Mapping[str, NamespaceState]) -> Iterator[Metric]:
        completions = HistogramMetricFamily(COMPLETION_SECONDS, _HELP[COMPLETION_SECONDS], labels=TASK_LABELS)
        views = {namespace: view(state, keep_all(state)) for namespace, state in sorted(namespaces.items())}
        for namespace, tasks in views.items():
            for task_type in tasks.groups:
                for status in TERMINAL_STATUSES:
                    histogram = tasks.completion((status, task_type))
                    completions.add_metric(
                        (namespace, status, task_type), _buckets(histogram), histogram.total
                    )
        names = (TASKS, TERMINAL_TRANSITIONS, OLDEST_ACTIVE_AGE)
        gauge, counter, oldest = self._status_families(views, names, TASK_LABELS)
        yield from (gauge, counter, completions, oldest)

    def _batch_families(self, namespaces: Mapping[str, NamespaceState]) -> Iterator[Metric]:
        views = {ns: view(state, self._bucket_fold(state)) for ns, state in sorted(namespaces.items())}
        names = (BATCHES, BATCH_TERMINAL_TRANSITIONS, BATCH_OLDEST_ACTIVE_AGE)
        gauge, counter, oldest = self._status_families(views, names, BATCH_LABELS)
        completions = HistogramMetricFamily(
            BATCH_COMPLETION_SECONDS, _HELP[BATCH_COMPLETION_SECONDS], labels=("namespace", "status")
        )
        objects = CounterMetricFamily(
            BATCH_OBJECTS, _HELP[BATCH_OBJECTS], labels=("namespace", "bucket_id", "outcome")
        )
        failures = CounterMetricFamily(
            BATCH_FAILURES, _HELP[BATCH_FAILURES], labels=("namespace", "bucket_id", "failure_category")
        )
        for namespace, batches in views.items():
            per_namespace = view(namespaces[namespace], drop_group(namespaces[namespace]))
            for status in TERMINAL_STATUSES if batches.groups else ():
                histogram = per_namespace.completion((status, ""))
                completions.add_metric((namespace, status), _buckets(histogram), histogram.total)
            for bucket in batches.groups:
                for outcome in OUTCOMES:
                    objects.add_metric(
                        (namespace, bucket, outcome), batches.tallies.get((bucket, outcome), 0)
                    )
                for category in sorted(FAILURE_CATEGORIES):
                    count = batches.tallies.get((bucket, "category", category), 0)
                    failures.add_metric((namespace, bucket, category), count)
        yield from (gauge, counter, completions, objects, failures, oldest)

    def _status_families(
        self, views: Mapping[str, View], names: tuple[str, str, str], labels: tuple[str, str, str]
    ) -> tuple[GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        """Gauge by status, terminal-transition counter and oldest-active age, with every known status
        exported at 0 for each seen group. `labels` names the group label (task_type, bucket_id) and
        the order: tasks and batches order their labels differently."""
        gauge_name, counter_name, oldest_name = names
        group_label = next(label for label in labels if label not in ("namespace", "status"))
        gauge = GaugeMetricFamily(gauge_name, _HELP[gauge_name], labels=labels)
        counter = CounterMetricFamily(counter_name, _HELP[counter_name], labels=labels)
        oldest = GaugeMetricFamily(oldest_name, _HELP[oldest_name], labels=labels)
        now = self._now()

        def order(namespace: str, status: str, group: str) -> tuple[str, ...]:
            values = {"namespace": namespace, "status": status, group_label: group}
            return tuple(values[label] for label in labels)

        for namespace, numbers in views.items():
            for group in numbers.groups:
                for status in numbers.statuses:
                    gauge.add_metric(order(namespace, status, group), numbers.counts.get((status, group), 0))
                for status in TERMINAL_STATUSES:
                    counter.add_metric(
                        order(namespace, status, group), numbers.transitions.get((status, group), 0)
                    )
            for (status, group), started in sorted(numbers.oldest_active.items()):
                oldest.add_metric(order(namespace, status, group), max(0.0, now - started))
        return gauge, counter, oldest

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
