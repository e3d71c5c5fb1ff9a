"""Build the Grafana dashboard deploy/grafana/mixpeek-tasks.json with Grafana's typed builder
(PyPI grafana-foundation-sdk).

    python deploy/grafana/build.py            # rewrite mixpeek-tasks.json
    python deploy/grafana/build.py --check    # exit 1 if mixpeek-tasks.json is not what this file builds

The JSON is generated, never edited by hand: tests/deploy/test_dashboard.py rebuilds it and fails on a
difference, and runs every query below against a real Prometheus scraping the exporter.

Two identical exporters (replicas, or sidecars of a scaled application) export the same series under
different `instance`/`pod` labels, so every panel first takes `max by (<the exporter's own labels>)`, which
keeps one copy, and only then sums across namespaces or task types. The one exception is the API request
panel: there each exporter's requests really reach the API, so they are summed.

Batches finish a few an hour, not a few a second: the batch panels count their counters and histogram over a
rolling hour (`increase(...[1h])`) rather than over $__rate_interval, which would draw isolated spikes between
long gaps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "mixpeek-tasks.json"
UID = "mixpeek-tasks"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TASKS = 'mixpeek_namespace=~"$namespace", task_type=~"$task_type"'
NAMESPACES = 'mixpeek_namespace=~"$namespace"'
TASK_KEY = "mixpeek_namespace, status, task_type"
BATCH_KEY = "mixpeek_namespace, bucket_id, status"
BATCH_WINDOW = "1h"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def quantiles(buckets: str) -> list[prometheus.Dataquery]:
    """p50, p90 and p99 of a histogram's `buckets` expression (already deduplicated by the caller)."""
    return [
        query(f"histogram_quantile({q}, sum by (le) ({buckets}))", f"p{round(q * 100)}", ref)
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def series_panel(title: str, description: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def deduplicated(
    metric: str, selector: str, by: str = TASK_KEY, rate: bool = False, increase: str | None = None
) -> str:
    """One copy of each series however many exporters export it (see the module docstring); `rate` over
    $__rate_interval, or `increase` over the given window."""
    inner = f"{metric}{{{selector}}}"
    if rate:
        inner = f"rate({inner}[$__rate_interval])"
    elif increase:
        inner = f"increase({inner}[{increase}])"
    return f"max by ({by}) ({inner})"


def task_panels() -> list[timeseries.Panel]:
    transitions = deduplicated("mixpeek_task_terminal_transitions_total", TASKS, rate=True)
    failed = deduplicated("mixpeek_task_terminal_transitions_total", TASKS + ', status="FAILED"', rate=True)
    buckets = deduplicated("mixpeek_task_completion_seconds_bucket", TASKS, by=f"{TASK_KEY}, le", rate=True)
    return [
        series_panel(
            "Tasks by status",
            "Tasks listed in each status by the last complete poll (mixpeek_tasks).",
            "short",
            query(f"sum by (status) ({deduplicated('mixpeek_tasks', TASKS)})", "{{status}}"),
        ).stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL)),
        series_panel(
            "Terminal transitions by status",
            "Tasks entering COMPLETED, COMPLETED_WITH_ERRORS, FAILED or CANCELED, per minute.",
            "opm",
            query(f"sum by (status) ({transitions}) * 60", "{{status}}"),
        ),
        series_panel(
            "Failure ratio",
            "Share of the tasks that finished which ended FAILED, per namespace "
            "(alerts: MixpeekTasksFailedSpike, MixpeekTasksFailureRatioHigh).",
            "percentunit",
            query(
                f"sum by (mixpeek_namespace) ({failed}) / sum by (mixpeek_namespace) ({transitions})",
                "{{mixpeek_namespace}}",
            ),
        ).min(0),
        series_panel(
            "Time to completion",
            "Quantiles of the time from task creation to its terminal status "
            "(mixpeek_task_completion_seconds); an upper bound when the API gives no timestamps.",
            "s",
            *quantiles(buckets),
        ),
        series_panel(
            "Oldest active task age",
            "Age of the oldest task in each non-terminal status (alerts: MixpeekTasksStuckQueued, "
            "MixpeekTasksStuckRunning).",
            "s",
            query(
                deduplicated("mixpeek_task_oldest_active_age_seconds", TASKS),
                "{{mixpeek_namespace}} {{status}} {{task_type}}",
            ),
        ),
        series_panel(
            "Tracked tasks",
            "Tasks the exporter holds in memory per namespace (the API keeps tasks about 24 h).",
            "short",
            query(
                deduplicated("mixpeek_exporter_tracked_tasks", NAMESPACES, by="mixpeek_namespace"),
                "{{mixpeek_namespace}}",
            ),
        ),
    ]


def batch_panels() -> list[timeseries.Panel]:
    def over_the_hour(metric: str, by: str, selector: str = NAMESPACES) -> str:
        return deduplicated(metric, selector, by=by, increase=BATCH_WINDOW)

    transitions = over_the_hour("mixpeek_batch_terminal_transitions_total", BATCH_KEY)
    failed_objects = over_the_hour(
        "mixpeek_batch_objects_total", "mixpeek_namespace, bucket_id", NAMESPACES + ', outcome="failed"'
    )
    buckets = over_the_hour("mixpeek_batch_completion_seconds_bucket", "mixpeek_namespace, status, le")
    failures = over_the_hour("mixpeek_batch_failures_total", "mixpeek_namespace, bucket_id, failure_category")
    return [
        series_panel(
            "Batches by status",
            "Batches listed in each status by the last complete poll (mixpeek_batches). The API keeps every "
            "batch, so the terminal statuses only grow: click a status in the legend to see it alone.",
            "short",
            query(
                f"sum by (status) ({deduplicated('mixpeek_batches', NAMESPACES, BATCH_KEY)})", "{{status}}"
            ),
        ),
        series_panel(
            "Batch terminal transitions by status",
            "Batches that entered COMPLETED, COMPLETED_WITH_ERRORS, FAILED or CANCELED in the last hour, a "
            "rolling count (alert: MixpeekBatchesFailed).",
            "short",
            query(f"sum by (status) ({transitions})", "{{status}}"),
        ).min(0),
        series_panel(
            "Failed objects per hour by bucket",
            "Objects that failed in the batches of each bucket that finished in the last hour, a rolling "
            "count (alert: MixpeekBatchObjectsFailureRatioHigh).",
            "short",
            query(failed_objects, "{{mixpeek_namespace}} {{bucket_id}}"),
        ).min(0),
        series_panel(
            "Batch time to completion",
            "Quantiles of the time from batch creation to its terminal status "
            "(mixpeek_batch_completion_seconds) over the batches that finished in the last hour; empty when "
            "none did.",
            "s",
            *quantiles(buckets),
        ),
        series_panel(
            "Oldest active batch age",
            "Age, from its creation, of the oldest batch in each non-terminal status per bucket (alerts: "
            "MixpeekBatchesStuckQueued, MixpeekBatchesStuckRunning; DRAFT batches never alert).",
            "s",
            query(
                deduplicated("mixpeek_batch_oldest_active_age_seconds", NAMESPACES, by=BATCH_KEY),
                "{{mixpeek_namespace}} {{bucket_id}} {{status}}",
            ),
        ),
        series_panel(
            "Batch failures by category",
            "FAILED batches by failure category (timeout, infrastructure, orphaned, pipeline, "
            "mvs_durability, validation, unknown) in the last hour, a rolling count.",
            "short",
            query(f"sum by (failure_category) ({failures})", "{{failure_category}}"),
        ).min(0),
    ]


def health_panels() -> list[timeseries.Panel | stat.Panel]:
    durations = deduplicated(
        "mixpeek_exporter_poll_duration_seconds_bucket", NAMESPACES, by="mixpeek_namespace, le", rate=True
    )
    errors = deduplicated(
        "mixpeek_exporter_poll_errors_total", NAMESPACES, by="mixpeek_namespace, reason", rate=True
    )
    up = deduplicated("mixpeek_up", NAMESPACES, by="mixpeek_namespace")
    return [
        series_panel(
            "Namespaces up",
            "1 when the last poll of the namespace succeeded on at least one exporter (mixpeek_up).",
            "short",
            query(up, "{{mixpeek_namespace}}"),
        )
        .min(0)
        .max(1),
        series_panel(
            "Time since last complete poll",
            "Seconds since the freshest exporter last completed a poll (alert: MixpeekExporterDataStale).",
            "s",
            query(
                "time() - "
                + deduplicated(
                    "mixpeek_exporter_last_success_timestamp_seconds", NAMESPACES, by="mixpeek_namespace"
                ),
                "{{mixpeek_namespace}}",
            ),
        ),
        series_panel(
            "Poll duration",
            "Wall time of complete polls (mixpeek_exporter_poll_duration_seconds).",
            "s",
            query(f"histogram_quantile(0.5, {durations})", "p50 {{mixpeek_namespace}}", "A"),
            query(f"histogram_quantile(0.99, {durations})", "p99 {{mixpeek_namespace}}", "B"),
        ),
        series_panel(
            "Poll errors by reason",
            "Failed polls per minute by reason (timeout, unauthorized, rate_limited, ...). Zero per "
            "namespace when there are none, so a quiet exporter draws a flat line rather than 'No data'.",
            "opm",
            query(
                f"sum by (mixpeek_namespace, reason) ({errors}) * 60"
                f" or sum by (mixpeek_namespace) (0 * {up})",
                "{{mixpeek_namespace}} {{reason}}",
            ),
        ),
        series_panel(
            "API requests by code",
            "Requests to the Mixpeek API per second by HTTP status, summed over exporters: each replica's "
            "requests really reach the API (code 'error': no response).",
            "reqps",
            query(
                "sum by (endpoint, code) (rate(mixpeek_exporter_api_requests_total[$__rate_interval]))",
                "{{endpoint}} {{code}}",
            ),
        ),
        stat.Panel()
        .title("Exporters scraped")
        .description(
            "Exporter processes scraped, by version: more than one means replicas or sidecars poll "
            "the same namespaces (deduplicated everywhere above)."
        )
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .with_target(query("count by (version) (mixpeek_exporter_build_info)", "{{version}}")),
    ]


def variables() -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
    everything = VariableOption(selected=True, text="All", value="$__all")
    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        dashboard.QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query("label_values(mixpeek_up, mixpeek_namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(everything),
        dashboard.QueryVariable("task_type")
        .label("Task type")
        .datasource(DATASOURCE)
        .query('label_values(mixpeek_tasks{mixpeek_namespace=~"$namespace"}, task_type)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(everything),
    ]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("Mixpeek tasks")
        .uid(UID)
        .description(
            "Mixpeek asynchronous tasks per namespace and task type, batches per namespace and bucket, and "
            "the exporter's health."
        )
        .tags(["mixpeek", "prometheus-exporter"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        .variables(variables())  # type: ignore[arg-type]
    )
    # Stable, unique panel ids (the builder leaves them unset), so links to a panel (viewPanel=<id>) last: ids
    # are handed out in the order the rows were added to the dashboard (Batches came last), while the Batches
    # row is shown between Tasks and Exporter health.
    ids = iter(range(1, 100))
    tasks = (dashboard.Row("Tasks").id(next(ids)), [panel.id(next(ids)) for panel in task_panels()])
    health = (
        dashboard.Row("Exporter health").id(next(ids)),
        [panel.id(next(ids)) for panel in health_panels()],
    )
    batches = (dashboard.Row("Batches").id(next(ids)), [panel.id(next(ids)) for panel in batch_panels()])
    for row, panels in (tasks, batches, health):
        board = board.with_row(row)
        for panel in panels:
            board = board.with_panel(panel)
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.name} is out of date: run python deploy/grafana/build.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
