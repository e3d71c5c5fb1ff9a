"""Build the Grafana dashboard deploy/grafana/mixpeek-tasks.json with Grafana's typed builder
(PyPI grafana-foundation-sdk).

    python deploy/grafana/build.py            # rewrite mixpeek-tasks.json
    python deploy/grafana/build.py --check    # exit 1 if mixpeek-tasks.json is not what this file builds

The JSON is generated, never edited by hand: tests/deploy/test_dashboard.py rebuilds it and fails on a
difference, and runs every query below against a real Prometheus scraping the exporter and evaluating the
recording rules.

The Overview row on top is what on-call reads first: tasks FAILED now, the failure ratio, the oldest stuck
task, the exporter's health, and the task types failing most, each linking to its section of the runbook
(alerts.runbookUrl in the Helm chart's values.yaml, where the alert thresholds drawn here come from too).

Two identical exporters (replicas, or sidecars of a scaled application) export the same series under
different `instance`/`pod` labels, so every panel first takes `max by (<the exporter's own labels>)`, the
labels the alert expressions (deploy/helm/mixpeek-exporter/templates/_rules.tpl) aggregate by, which keeps
one copy, and only then sums across namespaces or task types. The exceptions are per scrape target: the API
request panel (each exporter's requests really reach the API, so they are summed) and the targets' `up`.

The heavy panels read the recording rules of that file (group mixpeek-exporter-recording), deduplicated
there the same way. Those aggregate the `job` label away, so $job reaches them through the namespaces the
chosen jobs watch (`and on (mixpeek_namespace) mixpeek_up{job=~"$job"}`); $cluster matches every series
when "All" (`.*`, which also matches a series without the label).

Batches finish a few an hour, not a few a second: the batch panels count their counters and histogram over a
rolling hour (`increase(...[1h])`, recorded `rate(...[1h])`) rather than over $__rate_interval, which would
draw isolated spikes between long gaps.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLink,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "mixpeek-tasks.json"
VALUES = HERE.parent / "helm" / "mixpeek-exporter" / "values.yaml"
UID = "mixpeek-tasks"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SCOPE = 'job=~"$job", cluster=~"$cluster"'
NAMESPACES = f'{SCOPE}, mixpeek_namespace=~"$namespace"'
TASKS = f'{NAMESPACES}, task_type=~"$task_type"'
TASK_KEY = "mixpeek_namespace, status, task_type"
BATCH_KEY = "mixpeek_namespace, bucket_id, status"
BATCH_WINDOW = "1h"
# The active statuses MixpeekTasksStuckQueued and MixpeekTasksStuckRunning watch.
ACTIVE = "PENDING|QUEUED|IN_PROGRESS|PROCESSING"
TOP = 10

# Recorded series (deploy/prometheus/rules.yaml, group mixpeek-exporter-recording).
RECORDED_NAMESPACES = 'cluster=~"$cluster", mixpeek_namespace=~"$namespace"'
RECORDED_TASKS = f'{RECORDED_NAMESPACES}, task_type=~"$task_type"'
TRANSITIONS_5M = "mixpeek_namespace_status_task_type:mixpeek_task_terminal_transitions:rate5m"
FAILURE_RATIO = "mixpeek_namespace_task_type:mixpeek_task_failures:ratio_rate{window}"
TASK_QUANTILE = "mixpeek_namespace_status_task_type:mixpeek_task_completion_seconds:p{q}_5m"
BATCH_QUANTILE = "mixpeek_namespace_status:mixpeek_batch_completion_seconds:p{q}_1h"
QUANTILES = (("50", "A"), ("90", "B"), ("99", "C"))


def alert_settings() -> dict[str, Any]:
    """alerts.* of the chart's values.yaml: the runbook URL and the thresholds the panels draw."""
    return dict(yaml.safe_load(VALUES.read_text())["alerts"])


ALERTS = alert_settings()


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def recorded(name: str, selector: str = RECORDED_TASKS) -> str:
    """A recorded series, kept to the namespaces that the chosen jobs watch (see the module docstring)."""
    return f"({name}{{{selector}}} and on (mixpeek_namespace) mixpeek_up{{{SCOPE}}})"


def runbook(alerts: tuple[str, ...]) -> list[Builder[DashboardLink]]:
    """A link per alert to its section of docs/runbook.md, as the alert's runbook_url annotation has it."""
    return [
        dashboard.DashboardLink(f"Runbook: {alert}")
        .type(DashboardLinkType.LINK)
        .url(f"{ALERTS['runbookUrl']}#{alert.lower()}")
        .target_blank(True)
        for alert in alerts
    ]


def explained(description: str, alerts: tuple[str, ...]) -> str:
    if not alerts:
        return description
    names = ", ".join(alerts)
    return f"{description} Alert{'s' if len(alerts) > 1 else ''}: {names} (runbook in the panel links)."


def thresholds(*steps: tuple[float, str]) -> dashboard.ThresholdsConfig:
    """Green below the first step, then each step's colour from its value on."""
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green"), *(Threshold(value=v, color=c) for v, c in steps)])
    )


Panel = TypeVar("Panel", timeseries.Panel, stat.Panel, table.Panel)


def framed(
    panel: Panel,
    title: str,
    description: str,
    unit: str,
    *,
    queries: tuple[prometheus.Dataquery, ...],
    alerts: tuple[str, ...],
) -> Panel:
    """What every panel has: its title, its description naming its alerts and linking to their runbook, the
    chosen data source, its unit and its queries."""
    panel = (
        panel.title(title)
        .description(explained(description, alerts))
        .links(runbook(alerts))
        .datasource(DATASOURCE)
        .unit(unit)
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def series_panel(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    alerts: tuple[str, ...] = (),
) -> timeseries.Panel:
    return (
        framed(timeseries.Panel(), title, description, unit, queries=queries, alerts=alerts)
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


def stat_panel(
    title: str,
    description: str,
    unit: str,
    width: int,
    *queries: prometheus.Dataquery,
    alerts: tuple[str, ...] = (),
) -> stat.Panel:
    """A big number of the Overview row: its last value, over a sparkline of the time range."""
    many = len(queries) > 1
    return (
        framed(stat.Panel(), title, description, unit, queries=queries, alerts=alerts)
        .height(5)
        .span(width)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME if many else common.BigValueTextMode.VALUE)
    )


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


def overview_panels() -> list[stat.Panel | table.Panel]:
    failed = recorded(TRANSITIONS_5M, f'{RECORDED_TASKS}, status="FAILED"')
    finished = recorded(TRANSITIONS_5M)
    oldest = deduplicated("mixpeek_task_oldest_active_age_seconds", f'{TASKS}, status=~"{ACTIVE}"')
    up = deduplicated("mixpeek_up", NAMESPACES, by="mixpeek_namespace")
    return [
        stat_panel(
            "Tasks FAILED (5m)",
            "Tasks of the selected namespaces and task types that entered FAILED in the last 5 minutes; "
            f"red from {ALERTS['failedSpike']['minFailures']}, the alert's minimum.",
            "short",
            4,
            query(f"sum({failed}) * 300", "FAILED"),
            alerts=("MixpeekTasksFailedSpike",),
        ).thresholds(thresholds((1, "orange"), (ALERTS["failedSpike"]["minFailures"], "red"))),
        stat_panel(
            "Failure ratio (5m)",
            "Share of the tasks that finished in the last 5 minutes which ended FAILED; red above the "
            "alert's threshold, which it compares with the ratio over the last hour per task type.",
            "percentunit",
            4,
            query(f"sum({failed}) / (sum({finished}) > 0)", "FAILED"),
            alerts=("MixpeekTasksFailureRatioHigh",),
        )
        .thresholds(thresholds((ALERTS["failureRatio"]["maxRatio"], "red")))
        .no_value("none finished"),
        stat_panel(
            "Oldest stuck task",
            f"Age of the oldest task in an active status ({ACTIVE.replace('|', ', ')}) as of the last poll; "
            "orange past the queued tasks' threshold, red past the running tasks' one.",
            "s",
            4,
            query(f"max({oldest})", "oldest"),
            alerts=("MixpeekTasksStuckQueued", "MixpeekTasksStuckRunning"),
        )
        .thresholds(
            thresholds(
                (ALERTS["stuckQueued"]["maxAgeSeconds"], "orange"),
                (ALERTS["stuckRunning"]["maxAgeSeconds"], "red"),
            )
        )
        .no_value("none active"),
        up_of_total(
            "Namespaces up",
            "Namespaces whose last poll succeeded on at least one exporter, of all the namespaces polled.",
            up,
            ("MixpeekExporterPollFailing", "MixpeekExporterDataStale"),
        ),
        up_of_total(
            "Scrape targets up",
            "Exporter targets of the selected jobs that Prometheus scraped successfully (up), of all.",
            f"up{{{SCOPE}}}",
            ("MixpeekExporterTargetDown", "MixpeekExporterTargetsMissing", "MixpeekExporterAbsent"),
        ),
        failing_table(failed),
    ]


def up_of_total(title: str, description: str, series: str, alerts: tuple[str, ...]) -> stat.Panel:
    """How many of `series` (1 or 0 each) are 1, beside how many there are."""
    return stat_panel(
        title,
        description,
        "short",
        6,
        query(f"sum({series})", "up", "A"),
        query(f"count({series})", "total", "B"),
        alerts=alerts,
    ).color_mode(common.BigValueColorMode.NONE)


def failing_table(failed: str) -> table.Panel:
    """The task types with the most FAILED in the last 5 minutes, one row each with their failure ratio; a
    click on a row opens this dashboard on that task type, or the runbook."""
    top = f"topk({TOP}, sum by (mixpeek_namespace, task_type) ({failed}) * 300 > 0)"
    # max by: the same columns as `top` also when the rules keep alerts.groupBy labels (the worst cluster's).
    ratio = (
        f"max by (mixpeek_namespace, task_type) ({recorded(FAILURE_RATIO.format(window='5m'))})"
        f" and on (mixpeek_namespace, task_type) {top}"
    )
    count, share = "FAILED (5m)", "Failure ratio (5m)"
    this_task_type = (
        f"/d/{UID}?${{__url_time_range}}&${{datasource:queryparam}}&${{job:queryparam}}&${{cluster:queryparam}}"
        "&var-namespace=${__data.fields.mixpeek_namespace}&var-task_type=${__data.fields.task_type}"
    )
    alerts = ("MixpeekTasksFailedSpike", "MixpeekTasksFailureRatioHigh")
    description = (
        f"The {TOP} task types with the most tasks entering FAILED in the last 5 minutes, and the share of "
        "their finished tasks that FAILED. A row links to this dashboard on its task type."
    )
    queries = (
        query(top, "", "A").instant().format(PromQueryFormat.TABLE),
        query(ratio, "", "B").instant().format(PromQueryFormat.TABLE),
    )
    return (
        framed(table.Panel(), "Task types failing most", description, "short", queries=queries, alerts=alerts)
        .data_links(
            [
                dashboard.DashboardLink("Show this task type")
                .type(DashboardLinkType.LINK)
                .url(this_task_type),
                *runbook(alerts[:1]),
            ]
        )
        .height(7)
        .span(24)
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": {"mixpeek_namespace": 0, "task_type": 1, "Value #A": 2, "Value #B": 3},
                    "renameByName": {"Value #A": count, "Value #B": share},
                },
            )
        )
        .sort_by([common_builder.TableSortByFieldState().display_name(count).desc(True)])
        .override_by_name(count, [DynamicConfigValue(id_val="decimals", value=1)])
        .override_by_name(share, [DynamicConfigValue(id_val="unit", value="percentunit")])
    )


def quantiles(name: str, selector: str, legend: str) -> list[prometheus.Dataquery]:
    """p50, p90 and p99 of a recorded histogram quantile `name` (with a {q} placeholder)."""
    return [query(recorded(name.format(q=q), selector), f"p{q} {legend}", ref) for q, ref in QUANTILES]


def task_panels() -> list[timeseries.Panel]:
    return [
        series_panel(
            "Tasks by status",
            "Tasks listed in each status by the last complete poll (mixpeek_tasks).",
            "short",
            query(f"sum by (status) ({deduplicated('mixpeek_tasks', TASKS)})", "{{status}}"),
        ).stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL)),
        series_panel(
            "Terminal transitions by status",
            "Tasks entering COMPLETED, COMPLETED_WITH_ERRORS, FAILED or CANCELED, per minute over 5 minutes.",
            "opm",
            query(f"sum by (status) ({recorded(TRANSITIONS_5M)}) * 60", "{{status}}"),
        ),
        series_panel(
            "Failure ratio",
            "Share of the tasks that finished over the last hour which ended FAILED, per namespace and task "
            "type, as the alert compares it with its threshold (the dashed line) once at least "
            f"{ALERTS['failureRatio']['minTerminal']} finished.",
            "percentunit",
            query(recorded(FAILURE_RATIO.format(window="1h")), "{{mixpeek_namespace}} {{task_type}}"),
            alerts=("MixpeekTasksFailureRatioHigh",),
        )
        .min(0)
        .thresholds(thresholds((ALERTS["failureRatio"]["maxRatio"], "red")))
        .thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        ),
        series_panel(
            "Time to completion",
            "p50, p90 and p99 over 5 minutes of the time from task creation to its terminal status, per "
            "namespace, task type and status (mixpeek_task_completion_seconds); an upper bound when the API "
            "gives no timestamps.",
            "s",
            *quantiles(TASK_QUANTILE, RECORDED_TASKS, "{{mixpeek_namespace}} {{task_type}} {{status}}"),
        ),
        series_panel(
            "Oldest active task age",
            "Age of the oldest task in each non-terminal status.",
            "s",
            query(
                deduplicated("mixpeek_task_oldest_active_age_seconds", TASKS),
                "{{mixpeek_namespace}} {{status}} {{task_type}}",
            ),
            alerts=("MixpeekTasksStuckQueued", "MixpeekTasksStuckRunning"),
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
            "Batch terminal transitions by bucket",
            "Batches of each bucket that entered COMPLETED, COMPLETED_WITH_ERRORS, FAILED or CANCELED in the "
            "last hour, a rolling count.",
            "short",
            query(transitions, "{{mixpeek_namespace}} {{bucket_id}} {{status}}"),
            alerts=("MixpeekBatchesFailed",),
        ).min(0),
        series_panel(
            "Failed objects per hour by bucket",
            "Objects that failed in the batches of each bucket that finished in the last hour, a rolling "
            "count.",
            "short",
            query(failed_objects, "{{mixpeek_namespace}} {{bucket_id}}"),
            alerts=("MixpeekBatchObjectsFailureRatioHigh",),
        ).min(0),
        series_panel(
            "Batch time to completion",
            "p50, p90 and p99 of the time from batch creation to its terminal status "
            "(mixpeek_batch_completion_seconds) over the batches that finished in the last hour, per "
            "namespace and status; empty when none did.",
            "s",
            *quantiles(BATCH_QUANTILE, RECORDED_NAMESPACES, "{{mixpeek_namespace}} {{status}}"),
        ),
        series_panel(
            "Oldest active batch age",
            "Age, from its creation, of the oldest batch in each non-terminal status per bucket (DRAFT "
            "batches never alert).",
            "s",
            query(
                deduplicated("mixpeek_batch_oldest_active_age_seconds", NAMESPACES, by=BATCH_KEY),
                "{{mixpeek_namespace}} {{bucket_id}} {{status}}",
            ),
            alerts=("MixpeekBatchesStuckQueued", "MixpeekBatchesStuckRunning"),
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
            alerts=("MixpeekExporterPollFailing",),
        )
        .min(0)
        .max(1),
        series_panel(
            "Time since last complete poll",
            "Seconds since the freshest exporter last completed a poll.",
            "s",
            query(
                "time() - "
                + deduplicated(
                    "mixpeek_exporter_last_success_timestamp_seconds", NAMESPACES, by="mixpeek_namespace"
                ),
                "{{mixpeek_namespace}}",
            ),
            alerts=("MixpeekExporterDataStale",),
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
            alerts=("MixpeekApiRateLimited",),
        ),
        series_panel(
            "API requests by code",
            "Requests to the Mixpeek API per second by HTTP status, summed over exporters: each replica's "
            "requests really reach the API (code 'error': no response).",
            "reqps",
            query(
                "sum by (endpoint, code) "
                f"(rate(mixpeek_exporter_api_requests_total{{{SCOPE}}}[$__rate_interval]))",
                "{{endpoint}} {{code}}",
            ),
        ),
        framed(
            stat.Panel(),
            "Exporters scraped",
            "Exporter processes scraped, by version: more than one means replicas or sidecars poll the same "
            "namespaces (deduplicated everywhere above).",
            "short",
            queries=(query(f"count by (version) (mixpeek_exporter_build_info{{{SCOPE}}})", "{{version}}"),),
            alerts=("MixpeekExporterAbsent", "MixpeekExporterTargetsMissing"),
        )
        .height(8)
        .span(12),
    ]


def query_variable(name: str, label: str, expr: str) -> dashboard.QueryVariable:
    """A multi-value variable over `label_values(...)` with "All" selected."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(expr)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def variables() -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
    """$job's "All" is the alternation of the exporter's jobs (Grafana's default), so `up{job=~"$job"}`
    keeps to them; $cluster's is `.*`, which also matches a series without a cluster label."""
    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_variable("job", "Job", "label_values(mixpeek_exporter_build_info, job)"),
        query_variable("cluster", "Cluster", "label_values(mixpeek_exporter_build_info, cluster)").all_value(
            ".*"
        ),
        query_variable(
            "namespace", "Namespace", f"label_values(mixpeek_up{{{SCOPE}}}, mixpeek_namespace)"
        ).all_value(".*"),
        query_variable(
            "task_type", "Task type", f"label_values(mixpeek_tasks{{{NAMESPACES}}}, task_type)"
        ).all_value(".*"),
    ]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("Mixpeek tasks")
        .uid(UID)
        .description(
            "Mixpeek asynchronous tasks per namespace and task type, batches per namespace and bucket, and "
            "the exporter's health; the Overview row first, for on-call."
        )
        .tags(["mixpeek", "prometheus-exporter"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        .variables(variables())  # type: ignore[arg-type]
        .links(
            [
                dashboard.DashboardLink("Runbook")
                .type(DashboardLinkType.LINK)
                .url(ALERTS["runbookUrl"])
                .target_blank(True)
            ]
        )
    )
    # Stable, unique panel ids (the builder leaves them unset), so links to a panel (viewPanel=<id>) last: ids
    # are handed out in the order the rows were added to the dashboard (Batches, then Overview, came later),
    # while the rows are shown Overview, Tasks, Batches, Exporter health.
    ids = iter(range(1, 100))
    tasks = (dashboard.Row("Tasks").id(next(ids)), [panel.id(next(ids)) for panel in task_panels()])
    health = (
        dashboard.Row("Exporter health").id(next(ids)),
        [panel.id(next(ids)) for panel in health_panels()],
    )
    batches = (dashboard.Row("Batches").id(next(ids)), [panel.id(next(ids)) for panel in batch_panels()])
    overview = (dashboard.Row("Overview").id(next(ids)), [panel.id(next(ids)) for panel in overview_panels()])
    for row, panels in (overview, tasks, batches, health):
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
