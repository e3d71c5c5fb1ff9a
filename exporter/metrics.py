"""Metric names (a contract: dashboards and alerts use them), the published Snapshot, and its collector.

The poller swaps in a new immutable Snapshot after each poll; the collector reads the reference once and
describes its families as parts, one per immutable object of the snapshot (a namespace's state, its
health), so a scrape never sees half a poll and an exposition can keep the text of parts that did not
change (exporter/exposition.py). Every value is a function of the snapshot alone, none of the scrape's
time: the ages are as of the namespace's last complete poll, like every other number.

Cardinality controls (task type folding, the histogram's task_type label, the per-metric series cap) are
applied here, on the way out: the state keeps everything.
"""

from __future__ import annotations

import platform
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar

from exporter.api import ENDPOINTS, Reason
from exporter.checks import CHECKS
from exporter.histogram import Exemplar, Histogram
from exporter.state import NamespaceState
from exporter.tallies import FailureKey, ObjectsKey
from exporter.views import Fold, View, view
from exporter.vocabulary import FAILURE_CATEGORIES, TERMINAL_STATUSES

TASKS = "mixpeek_tasks"
TERMINAL_TRANSITIONS = "mixpeek_task_terminal_transitions"  # exposed with _total
COMPLETION_SECONDS = "mixpeek_task_completion_seconds"
OLDEST_ACTIVE_AGE = "mixpeek_task_oldest_active_age_seconds"
UP = "mixpeek_up"
LAST_SUCCESS = "mixpeek_exporter_last_success_timestamp_seconds"
LAST_FULL = "mixpeek_exporter_last_full_listing_timestamp_seconds"
POLL_DURATION = "mixpeek_exporter_poll_duration_seconds"
POLL_ERRORS = "mixpeek_exporter_poll_errors"  # exposed with _total
API_REQUESTS = "mixpeek_exporter_api_requests"  # exposed with _total
INVALID_VALUES = "mixpeek_exporter_invalid_values"  # exposed with _total
TRACKED_TASKS = "mixpeek_exporter_tracked_tasks"
UNTRACKED_TASKS = "mixpeek_exporter_untracked_tasks"
STATE_WRITES = "mixpeek_exporter_state_file_writes"  # exposed with _total
SERIES_DROPPED = "mixpeek_exporter_series_dropped"  # exposed with _total
API_CHECK_FAILURES = "mixpeek_exporter_api_check_failures"  # exposed with _total
INTERNAL_ERRORS = "mixpeek_exporter_internal_errors"  # exposed with _total
POLL_MODE = "mixpeek_exporter_poll_mode"
SCOPE = "mixpeek_exporter_scope"
BATCHES_UP = "mixpeek_batches_up"
BATCH_POLL_ERRORS = "mixpeek_exporter_batch_poll_errors"  # exposed with _total
WEB_CONFIG_RELOADS = "mixpeek_exporter_web_config_reloads"  # exposed with _total
BUILD_INFO = "mixpeek_exporter_build_info"
BUILD_LABELS = ("version", "python_version", "demo")

BATCHES = "mixpeek_batches"
BATCH_TERMINAL_TRANSITIONS = "mixpeek_batch_terminal_transitions"  # exposed with _total
BATCH_COMPLETION_SECONDS = "mixpeek_batch_completion_seconds"
BATCH_OBJECTS = "mixpeek_batch_objects"  # exposed with _total
BATCH_FAILURES = "mixpeek_batch_failures"  # exposed with _total
BATCH_OLDEST_ACTIVE_AGE = "mixpeek_batch_oldest_active_age_seconds"

# The namespace label: not "namespace", which Kubernetes service discovery attaches to every target.
NAMESPACE_LABEL = "mixpeek_namespace"
BY_NAMESPACE = (NAMESPACE_LABEL,)

# Where an unexpected exception can happen (the poll loops, rendering /metrics): each counted from 0.
STAGES = ("discovery", "scope", "poll", "state", "batches", "render")
# Every reason a poll can fail with (api.Reason, in its order), counted from 0 so that rate() and increase()
# see the first failure: a series born at 1 is read as no increase. Plain strings: the label values as served.
POLL_ERROR_REASONS = tuple(reason.value for reason in Reason)
# The API requests counted from 0, per endpoint the exporter calls: success, rate limited, and no answer.
ZERO_FILLED_CODES = ("200", "429", "error")
POLL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_LABELS = (NAMESPACE_LABEL, "status", "task_type")
BATCH_LABELS = (NAMESPACE_LABEL, "bucket_id", "status")
OUTCOMES = ("processed", "failed")

# name as exposed, type, labels, help: the metrics table of docs/metrics.md is checked against this.
METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (TASKS, "gauge", TASK_LABELS, "Tasks listed in each status by the last complete poll."),
    (
        f"{TERMINAL_TRANSITIONS}_total",
        "counter",
        TASK_LABELS,
        "Tasks observed entering a terminal status (COMPLETED, COMPLETED_WITH_ERRORS, FAILED, CANCELED).",
    ),
    (COMPLETION_SECONDS, "histogram", TASK_LABELS, "Time from task creation to its terminal status."),
    (
        OLDEST_ACTIVE_AGE,
        "gauge",
        TASK_LABELS,
        "Age of the oldest task in each non-terminal status, as of the namespace's last complete poll.",
    ),
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
        (NAMESPACE_LABEL, "status"),
        "Time from batch creation to its terminal status (the last tier's completion when known).",
    ),
    (
        f"{BATCH_OBJECTS}_total",
        "counter",
        (NAMESPACE_LABEL, "bucket_id", "outcome"),
        "Objects of finished batches, by outcome (processed, failed).",
    ),
    (
        f"{BATCH_FAILURES}_total",
        "counter",
        (NAMESPACE_LABEL, "bucket_id", "failure_category"),
        "Finished batches that carry a failure category, by category.",
    ),
    (
        BATCH_OLDEST_ACTIVE_AGE,
        "gauge",
        BATCH_LABELS,
        "Age of the oldest batch in each non-terminal status, as of the namespace's last complete poll.",
    ),
    (UP, "gauge", BY_NAMESPACE, "1 if the last poll of the namespace succeeded, else 0."),
    (LAST_SUCCESS, "gauge", BY_NAMESPACE, "Unix time of the last complete poll of the namespace."),
    (
        LAST_FULL,
        "gauge",
        BY_NAMESPACE,
        "Unix time of the last full listing of the namespace's tasks; the polls between list what changed.",
    ),
    (POLL_DURATION, "histogram", BY_NAMESPACE, "Wall time of complete polls."),
    (f"{POLL_ERRORS}_total", "counter", (NAMESPACE_LABEL, "reason"), "Failed polls by reason."),
    (f"{API_REQUESTS}_total", "counter", ("endpoint", "code"), "Requests sent to the Mixpeek API."),
    (
        f"{API_CHECK_FAILURES}_total",
        "counter",
        ("check",),
        "Answers that showed the API not honouring a behaviour the documentation leaves open, by check.",
    ),
    (
        POLL_MODE,
        "gauge",
        (NAMESPACE_LABEL, "resource", "mode", "reason"),
        "1 for how each namespace's tasks or batches are polled now, and why (docs/api-behaviour.md).",
    ),
    (
        SCOPE,
        "gauge",
        ("scope", "reason"),
        "1 for the scope tasks are listed in (namespace or organization), and why.",
    ),
    (
        f"{INTERNAL_ERRORS}_total",
        "counter",
        ("stage",),
        "Unexpected exceptions in the poll loops, by stage; the loop goes on (a bug: please report it).",
    ),
    (BATCHES_UP, "gauge", BY_NAMESPACE, "1 if the last batch listing of the namespace succeeded, else 0."),
    (
        f"{BATCH_POLL_ERRORS}_total",
        "counter",
        (NAMESPACE_LABEL, "reason"),
        "Failed batch listings by reason.",
    ),
    (
        f"{INVALID_VALUES}_total",
        "counter",
        ("endpoint", "field"),
        "Values from the API that cannot be true (e.g. a negative count), ignored, by endpoint and field.",
    ),
    (TRACKED_TASKS, "gauge", BY_NAMESPACE, "Tasks held in memory for the namespace."),
    (
        UNTRACKED_TASKS,
        "gauge",
        BY_NAMESPACE,
        "Listed tasks past MIXPEEK_MAX_TRACKED_TASKS: in the gauges, but their transitions are not counted.",
    ),
    (
        f"{STATE_WRITES}_total",
        "counter",
        ("result",),
        "Saves of MIXPEEK_STATE_FILE by result (ok, error); absent without a state file.",
    ),
    (
        f"{SERIES_DROPPED}_total",
        "counter",
        ("metric",),
        "Samples left out by MIXPEEK_MAX_SERIES_PER_METRIC, by metric, added up over each new poll result "
        "rendered; each bucket, _sum and _count of a histogram is one (its label sets are dropped whole).",
    ),
    (
        f"{WEB_CONFIG_RELOADS}_total",
        "counter",
        ("result",),
        "Reloads of MIXPEEK_WEB_CONFIG_FILE after it or a file it names changed, by result (ok, error: "
        "the last good config stays); absent without a web config file.",
    ),
    (
        BUILD_INFO,
        "gauge",
        BUILD_LABELS,
        "Always 1; labels carry the exporter's build; demo is true when the data comes from the built-in "
        "simulated API (--demo), never the real one.",
    ),
)
_HELP = {name.removesuffix("_total"): text for name, _, _, text in METRICS}
_EXPOSED = {name.removesuffix("_total"): name for name, _, _, _ in METRICS}


@dataclass(frozen=True)
class NamespaceHealth:
    up: bool
    last_success: float | None
    poll_durations: Histogram
    errors: Mapping[str, int] = field(default_factory=dict)
    failing: str | None = None
    """The reason the last poll failed, None after a success: logs speak when this changes."""
    last_full: float | None = None
    """When the tasks were last listed completely (incremental polls list only what changed)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything /metrics shows, as of the end of the last poll of each namespace."""

    namespaces: Mapping[str, NamespaceState] = field(default_factory=dict)
    batches: Mapping[str, NamespaceState] = field(default_factory=dict)
    health: Mapping[str, NamespaceHealth] = field(default_factory=dict)
    batch_health: Mapping[str, NamespaceHealth] = field(default_factory=dict)
    api_requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    invalid_values: Mapping[tuple[str, str], int] = field(default_factory=dict)
    state_writes: Mapping[str, int] = field(default_factory=dict)
    check_failures: Mapping[str, int] = field(default_factory=dict)
    internal_errors: Mapping[str, int] = field(default_factory=dict)
    scope: tuple[str, str] | None = None
    """(scope, reason) tasks are listed in; None before the first poll."""
    modes: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(namespace, resource) -> (mode, reason)."""


def keep_all(state: NamespaceState) -> Callable[[str], str]:
    return lambda group: group


def drop_group(state: NamespaceState) -> Callable[[str], str]:
    """Aggregate every group into one series per namespace (an empty label, which Prometheus drops)."""
    return lambda group: ""


Buckets = list[tuple[str, float] | tuple[str, float, PromExemplar]]
Row = tuple[tuple[str, ...], float, Buckets | None]
"""One series: its label values, its value (a histogram's sum), a histogram's cumulative buckets."""


@dataclass(frozen=True)
class Part:
    """The series of one family that come from one immutable object of the snapshot.

    The same `source` (a namespace's NamespaceState or NamespaceHealth) always gives the same rows, so
    an exposition may keep their rendered text for as long as the snapshot holds that object.
    """

    namespace: str
    source: object
    rows: Callable[[], Sequence[Row]]
    width: int = 1
    """Samples a row makes: 1, or a histogram's buckets (+Inf included), _sum and _count."""


@dataclass(frozen=True)
class Family:
    name: str
    """As in METRICS, without a counter's _total."""
    kind: str
    labels: tuple[str, ...]
    parts: tuple[Part, ...]

    def build(self, rows: Iterable[Row]) -> Metric:
        """The prometheus_client family holding `rows`."""
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, _HELP[self.name], labels=self.labels)
            for labels, total, buckets in rows:
                histogram.add_metric(labels, buckets or [], total)
            return histogram
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = kind(self.name, _HELP[self.name], labels=self.labels)
        for labels, value, _ in rows:
            family.add_metric(labels, value)
        return family


Layout = list[tuple[Family, list[tuple[Part, int | None]]]]
"""Families in exposition order, each with the parts it shows and how many of a part's rows to keep
(None: all of them)."""


class SnapshotCollector(Collector):
    """Yields the families of the current snapshot, with the cardinality controls applied.

    `bucket_fold` and `task_type_fold` rename groups (e.g. to `_other`) before series are made, so
    folded values add up and no counter is lost; `histogram_task_type=False` merges the task
    completion histograms of every task type per namespace and status; `max_series` (0: no cap) keeps
    the first samples of each family in exposition order, a histogram's label set whole or not at all,
    and counts the samples left out in mixpeek_exporter_series_dropped_total, once per snapshot.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        version: str,
        bucket_fold: Fold = keep_all,
        *,
        task_type_fold: Fold = keep_all,
        histogram_task_type: bool = True,
        max_series: int = 0,
        demo: bool = False,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._build = (version, platform.python_version(), "true" if demo else "false")
        self._bucket_fold = bucket_fold
        self._task_type_fold = task_type_fold
        self._histogram_task_type = histogram_task_type
        self._max_series = max_series
        self._log = logger or structlog.get_logger("exporter.metrics")
        self._lock = threading.Lock()
        self._counted: weakref.ref[Snapshot] | None = None
        """The snapshot last counted, weakly: it holds every namespace's task table."""
        self._dropped: dict[str, int] = {}
        self._dropping: set[str] = set()

    def snapshot(self) -> Snapshot:
        return self._snapshot()

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        rows: dict[int, Sequence[Row]] = {}

        def rows_of(part: Part) -> Sequence[Row]:
            if id(part) not in rows:
                rows[id(part)] = part.rows()
            return rows[id(part)]

        for family, parts in self.layout(snapshot, lambda family, part: len(rows_of(part))):
            yield family.build(row for part, keep in parts for row in rows_of(part)[:keep])

    def layout(self, snapshot: Snapshot, size: Callable[[Family, Part], int]) -> Layout:
        """The snapshot's families with the series cap applied; `size` counts a part's rows (asked only
        when there is a cap). A snapshot's dropped series are added to the counter once, however many
        times it is laid out."""
        families = self.families(snapshot)
        layout: Layout = []
        dropped: dict[str, int] = {}
        for family in families:
            room = self._max_series or sys.maxsize
            shown: list[tuple[Part, int | None]] = []
            lost = 0
            for part in family.parts:
                if not self._max_series:
                    shown.append((part, None))
                    continue
                # Whole rows (a histogram's label set is kept or dropped whole), counted in samples.
                count = size(family, part)
                keep = min(count, room // part.width)
                room = room - keep * part.width if keep == count else 0
                lost += (count - keep) * part.width
                if keep:
                    shown.append((part, None if keep == count else keep))
            layout.append((family, shown))
            dropped[family.name] = lost
        totals = self._count_dropped(snapshot, dropped)
        counter = Family(
            SERIES_DROPPED, "counter", ("metric",), (Part("", totals, lambda: _dropped_rows(totals)),)
        )
        # The series-dropped counter is known only once every family is capped; it goes just before the
        # build info, which families() puts last so that the exposition always ends the same way.
        *capped, build_info = layout
        assert build_info[0].name == BUILD_INFO, "families() must end with the build info"
        return [*capped, (counter, [(counter.parts[0], None)]), build_info]

    def _count_dropped(self, snapshot: Snapshot, dropped: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        with self._lock:
            if self._counted is None or self._counted() is not snapshot:
                self._counted = weakref.ref(snapshot)
                for name, lost in dropped.items():
                    self._dropped[name] = self._dropped.get(name, 0) + lost
                dropping = {name for name, lost in dropped.items() if lost}
                for name in sorted(dropping - self._dropping):
                    self._log.warning(
                        "series cap reached: dropping series",
                        metric=_EXPOSED[name],
                        max_series_per_metric=self._max_series,
                        dropped=dropped[name],
                    )
                for name in sorted(self._dropping - dropping):
                    self._log.info("series cap no longer reached", metric=_EXPOSED[name])
                self._dropping = dropping
            return tuple((name, self._dropped.get(name, 0)) for name in dropped)

    def families(self, snapshot: Snapshot) -> list[Family]:
        """Every family, in exposition order, the build info last (layout() relies on it)."""
        tasks, batches = self._task_families(snapshot.namespaces), self._batch_families(snapshot.batches)
        build = self._build
        info = Family(BUILD_INFO, "gauge", BUILD_LABELS, (Part("", build, lambda: [(build, 1, None)]),))
        return [*tasks, *batches, *_health_families(snapshot), info]

    def _task_families(self, namespaces: Mapping[str, NamespaceState]) -> list[Family]:
        items = sorted(namespaces.items())
        views = {namespace: _lazy_view(state, self._task_type_fold) for namespace, state in items}
        if self._histogram_task_type:
            completions = _completion_family(COMPLETION_SECONDS, items, views, TASK_LABELS)
        else:
            merged = {namespace: _lazy_view(state, drop_group) for namespace, state in items}
            completions = _completion_family(COMPLETION_SECONDS, items, merged, TASK_LABELS)
        return [
            *_status_families((TASKS, TERMINAL_TRANSITIONS), items, views, TASK_LABELS),
            completions,
            _oldest_family(OLDEST_ACTIVE_AGE, items, views, TASK_LABELS),
        ]

    def _batch_families(self, namespaces: Mapping[str, NamespaceState]) -> list[Family]:
        items = sorted(namespaces.items())
        views = {namespace: _lazy_view(state, self._bucket_fold) for namespace, state in items}
        merged = {namespace: _lazy_view(state, drop_group) for namespace, state in items}
        return [
            *_status_families((BATCHES, BATCH_TERMINAL_TRANSITIONS), items, views, BATCH_LABELS),
            _completion_family(BATCH_COMPLETION_SECONDS, items, merged, (NAMESPACE_LABEL, "status")),
            Family(
                BATCH_OBJECTS,
                "counter",
                (NAMESPACE_LABEL, "bucket_id", "outcome"),
                _parts(items, views, _object_rows),
            ),
            Family(
                BATCH_FAILURES,
                "counter",
                (NAMESPACE_LABEL, "bucket_id", "failure_category"),
                _parts(items, views, _failure_rows),
            ),
            _oldest_family(BATCH_OLDEST_ACTIVE_AGE, items, views, BATCH_LABELS),
        ]


LazyView = Callable[[], View]
Rows = Callable[[str, View, tuple[str, ...]], list[Row]]
"""(namespace, view, labels) -> the rows of one namespace."""


def _lazy_view(state: NamespaceState, fold: Fold) -> LazyView:
    """The view of a state, made on first use: a cached exposition never asks for most of them."""
    made: list[View] = []

    def get() -> View:
        if not made:
            made.append(view(state, fold(state)))
        return made[0]

    return get


def _parts(
    items: Sequence[tuple[str, NamespaceState]],
    views: Mapping[str, LazyView],
    rows: Rows,
    labels: tuple[str, ...] = (),
    *,
    histogram: bool = False,
) -> tuple[Part, ...]:
    def of(namespace: str) -> list[Row]:
        return rows(namespace, views[namespace](), labels)

    return tuple(
        Part(namespace, state, partial(of, namespace), _histogram_width(state.buckets) if histogram else 1)
        for namespace, state in items
    )


def _ordered(labels: tuple[str, ...], namespace: str, status: str, group: str) -> tuple[str, ...]:
    """Label values in the family's order; tasks and batches order theirs differently."""
    values = {NAMESPACE_LABEL: namespace, "status": status}
    return tuple(values.get(label, group) for label in labels)


def _status_families(
    names: tuple[str, str],
    items: Sequence[tuple[str, NamespaceState]],
    views: Mapping[str, LazyView],
    labels: tuple[str, ...],
) -> list[Family]:
    """Gauge by status and terminal-transition counter, every known status at 0 for each seen group."""
    gauge, counter = names
    return [
        Family(gauge, "gauge", labels, _parts(items, views, _count_rows, labels)),
        Family(counter, "counter", labels, _parts(items, views, _transition_rows, labels)),
    ]


def _count_rows(namespace: str, numbers: View, labels: tuple[str, ...]) -> list[Row]:
    return [
        (_ordered(labels, namespace, status, group), numbers.counts.get((status, group), 0), None)
        for group in numbers.groups
        for status in numbers.statuses
    ]


def _transition_rows(namespace: str, numbers: View, labels: tuple[str, ...]) -> list[Row]:
    return [
        (_ordered(labels, namespace, status, group), numbers.transitions.get((status, group), 0), None)
        for group in numbers.groups
        for status in TERMINAL_STATUSES
    ]


def _oldest_family(
    name: str,
    items: Sequence[tuple[str, NamespaceState]],
    views: Mapping[str, LazyView],
    labels: tuple[str, ...],
) -> Family:
    """Exported for each non-terminal (status, group) that has items, valued at the namespace's last
    complete poll, not at the scrape: every number of a scrape then describes the same instant and
    nothing is extrapolated past what the exporter saw (a task may have finished since), and a
    namespace's text can be kept until its next poll. The age now, should a rule want it, is this plus
    time() - mixpeek_exporter_last_success_timestamp_seconds."""

    def rows(namespace: str, state: NamespaceState) -> list[Row]:
        if state.polled_at is None:
            return []
        return [
            (_ordered(labels, namespace, status, group), max(0.0, state.polled_at - started), None)
            for (status, group), started in sorted(views[namespace]().oldest_active.items())
        ]

    return Family(
        name, "gauge", labels, tuple(Part(ns, state, partial(rows, ns, state)) for ns, state in items)
    )


def _completion_family(
    name: str,
    items: Sequence[tuple[str, NamespaceState]],
    views: Mapping[str, LazyView],
    labels: tuple[str, ...],
) -> Family:
    """One histogram per terminal status and group, once a namespace has seen a group; with every
    group folded into "" (drop_group) one per terminal status."""

    def rows(namespace: str, numbers: View, labels: tuple[str, ...]) -> list[Row]:
        return [
            _histogram_row(_ordered(labels, namespace, status, group), numbers.completion((status, group)))
            for group in numbers.groups
            for status in TERMINAL_STATUSES
        ]

    return Family(name, "histogram", labels, _parts(items, views, rows, labels, histogram=True))


def _object_rows(namespace: str, numbers: View, labels: tuple[str, ...]) -> list[Row]:
    return [
        ((namespace, bucket, outcome), numbers.tallies.get((bucket, *ObjectsKey(outcome)), 0), None)
        for bucket in numbers.groups
        for outcome in OUTCOMES
    ]


def _failure_rows(namespace: str, numbers: View, labels: tuple[str, ...]) -> list[Row]:
    return [
        ((namespace, bucket, category), numbers.tallies.get((bucket, *FailureKey.of(category)), 0), None)
        for bucket in numbers.groups
        for category in sorted(FAILURE_CATEGORIES)
    ]


def _health_families(snapshot: Snapshot) -> list[Family]:
    health = sorted(snapshot.health.items())
    states = sorted(snapshot.namespaces.items())

    def of_health(
        name: str, kind: str, labels: tuple[str, ...], rows: Callable[[str, NamespaceHealth], list[Row]]
    ) -> Family:
        def width(h: NamespaceHealth) -> int:
            return _histogram_width(h.poll_durations.bounds) if kind == "histogram" else 1

        parts = tuple(Part(ns, h, partial(rows, ns, h), width(h)) for ns, h in health)
        return Family(name, kind, labels, parts)

    def of_state(name: str, rows: Callable[[str, NamespaceState], list[Row]]) -> Family:
        parts = tuple(Part(ns, state, partial(rows, ns, state)) for ns, state in states)
        return Family(name, "gauge", BY_NAMESPACE, parts)

    requests = {(endpoint, code): 0 for endpoint in ENDPOINTS for code in ZERO_FILLED_CODES}
    requests.update(snapshot.api_requests)
    writes, invalid = snapshot.state_writes, snapshot.invalid_values
    checks = {check: snapshot.check_failures.get(check, 0) for check in CHECKS}
    internal = {stage: snapshot.internal_errors.get(stage, 0) for stage in STAGES}
    modes, scope = snapshot.modes, snapshot.scope
    batch_health = sorted(snapshot.batch_health.items())

    def of_batch_health(
        name: str, kind: str, labels: tuple[str, ...], rows: Callable[[str, NamespaceHealth], list[Row]]
    ) -> Family:
        return Family(name, kind, labels, tuple(Part(ns, h, partial(rows, ns, h)) for ns, h in batch_health))

    def single(
        name: str, kind: str, labels: tuple[str, ...], source: object, rows: Callable[[], list[Row]]
    ) -> Family:
        return Family(name, kind, labels, (Part("", source, rows),))

    return [
        of_health(UP, "gauge", BY_NAMESPACE, lambda ns, h: [((ns,), 1 if h.up else 0, None)]),
        of_health(
            LAST_SUCCESS,
            "gauge",
            BY_NAMESPACE,
            lambda ns, h: [] if h.last_success is None else [((ns,), h.last_success, None)],
        ),
        of_health(
            LAST_FULL,
            "gauge",
            BY_NAMESPACE,
            lambda ns, h: [] if h.last_full is None else [((ns,), h.last_full, None)],
        ),
        of_health(
            POLL_DURATION,
            "histogram",
            BY_NAMESPACE,
            lambda ns, h: [_histogram_row((ns,), h.poll_durations)],
        ),
        of_health(
            POLL_ERRORS,
            "counter",
            (NAMESPACE_LABEL, "reason"),
            _error_rows,
        ),
        of_state(TRACKED_TASKS, lambda ns, state: [((ns,), state.tracked, None)]),
        of_state(UNTRACKED_TASKS, lambda ns, state: [((ns,), state.untracked, None)]),
        Family(
            API_REQUESTS,
            "counter",
            ("endpoint", "code"),
            (Part("", requests, lambda: [(key, count, None) for key, count in sorted(requests.items())]),),
        ),
        Family(
            INVALID_VALUES,
            "counter",
            ("endpoint", "field"),
            (Part("", invalid, lambda: [(key, count, None) for key, count in sorted(invalid.items())]),),
        ),
        Family(
            STATE_WRITES,
            "counter",
            ("result",),
            (Part("", writes, lambda: [((result,), n, None) for result, n in sorted(writes.items())]),),
        ),
        single(
            API_CHECK_FAILURES,
            "counter",
            ("check",),
            checks,
            lambda: [((c,), n, None) for c, n in checks.items()],
        ),
        single(
            POLL_MODE,
            "gauge",
            (NAMESPACE_LABEL, "resource", "mode", "reason"),
            modes,
            lambda: [((ns, resource, *how), 1, None) for (ns, resource), how in sorted(modes.items())],
        ),
        single(
            SCOPE, "gauge", ("scope", "reason"), scope, lambda: [] if scope is None else [(scope, 1, None)]
        ),
        single(
            INTERNAL_ERRORS,
            "counter",
            ("stage",),
            internal,
            lambda: [((s,), n, None) for s, n in internal.items()],
        ),
        of_batch_health(BATCHES_UP, "gauge", BY_NAMESPACE, lambda ns, h: [((ns,), 1 if h.up else 0, None)]),
        of_batch_health(
            BATCH_POLL_ERRORS,
            "counter",
            (NAMESPACE_LABEL, "reason"),
            _error_rows,
        ),
    ]


def _dropped_rows(totals: tuple[tuple[str, int], ...]) -> list[Row]:
    return [((_EXPOSED[name],), count, None) for name, count in totals]


def _error_rows(namespace: str, health: NamespaceHealth) -> list[Row]:
    errors = dict.fromkeys(POLL_ERROR_REASONS, 0) | dict(health.errors)
    return [((namespace, reason), count, None) for reason, count in sorted(errors.items())]


def _histogram_width(bounds: Sequence[float]) -> int:
    """A histogram's samples: its bounds and +Inf, _sum, _count."""
    return len(bounds) + 3


def _histogram_row(labels: tuple[str, ...], histogram: Histogram) -> Row:
    return (labels, histogram.total, _buckets(histogram))


def _buckets(histogram: Histogram) -> Buckets:
    return [_bucket(le, count, exemplar) for le, count, exemplar in histogram.cumulative()]


def _bucket(
    le: str, count: int, exemplar: Exemplar | None
) -> tuple[str, float] | tuple[str, float, PromExemplar]:
    # OpenMetrics caps an exemplar's label set at 128 characters; task ids are far shorter.
    if exemplar is None or len(exemplar.task_id) > 100:
        return (le, count)
    return (le, count, PromExemplar({"task_id": exemplar.task_id}, exemplar.value, exemplar.timestamp))
