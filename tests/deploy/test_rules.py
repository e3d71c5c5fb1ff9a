"""The alert rules: promtool checks them and runs their unit tests (deploy/prometheus/rules.test.yaml: each
alert firing and not firing, two exporters side by side); every alert is documented in docs/runbook.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from support import REPO, deploy_module, promtool

from exporter.metrics import METRICS

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rules.test.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
BOARD = REPO / "deploy" / "grafana" / "mixpeek-tasks.json"
DASHBOARD = "/d/mixpeek-tasks"
# An alert about a namespace links to the dashboard on that namespace, the value URL-escaped by Prometheus.
ON_NAMESPACE = DASHBOARD + "?var-namespace={{ $labels.mixpeek_namespace | urlquery }}"
# A metric name in an expression; mixpeek_namespace is the one label that starts the same way.
METRIC_NAME = r"\bmixpeek_(?!namespace\b)[a-z_]+"


# A recorded series: level:metric:operations (https://prometheus.io/docs/practices/rules/).
RECORDED_NAME = r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b"


def rules(text: str | None = None) -> list[dict[str, Any]]:
    """Every rule of rules.yaml (or of `text`), recording rules first, in evaluation order."""
    groups = yaml.safe_load(RULES.read_text() if text is None else text)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def records() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


def raw_metrics(expr: str) -> set[str]:
    """The exporter's metrics an expression reads directly (recorded series left out)."""
    return set(re.findall(METRIC_NAME, re.sub(RECORDED_NAME, "", expr)))


@pytest.mark.e2e
def test_promtool_check_rules() -> None:
    code, output = promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert f"SUCCESS: {len(rules())} rules found" in output


@pytest.mark.e2e
def test_promtool_rule_unit_tests_pass() -> None:
    code, output = promtool("test", "rules", str(RULE_TESTS))
    assert code == 0, output


@pytest.mark.e2e
def test_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {alert["alert"] for alert in alerts()}
    assert fired == names
    assert quiet == names


def test_the_issue_asks_for_these_alerts() -> None:
    assert {alert["alert"] for alert in alerts()} >= {
        "MixpeekTasksFailedSpike",
        "MixpeekTasksFailureRatioHigh",
        "MixpeekTasksStuckQueued",
        "MixpeekTasksStuckRunning",
        "MixpeekExporterPollFailing",
        "MixpeekExporterDataStale",
        "MixpeekExporterAbsent",
        "MixpeekApiRateLimited",
        "MixpeekBatchesFailed",
        "MixpeekBatchObjectsFailureRatioHigh",
        "MixpeekBatchesStuckQueued",
        "MixpeekBatchesStuckRunning",
        "MixpeekExporterTargetDown",
        "MixpeekExporterTargetsMissing",
    }


def test_every_alert_is_labelled_described_and_has_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}, name
        namespaced = "{{ $labels.mixpeek_namespace }}" in annotations["description"]
        assert annotations["dashboard_url"] == (ON_NAMESPACE if namespaced else DASHBOARD), name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("/docs/runbook.md"), name
        assert anchor == name.lower(), name
        assert anchor in anchors, name
        if "mixpeek_exporter_series_dropped_total" in alert["expr"]:  # per metric, across namespaces
            assert "{{ $labels.metric }}" in annotations["description"], name
        elif alert["expr"].startswith(("up{", "count by (job)")):  # scrape targets, before any namespace
            assert "{{ $labels.job }}" in annotations["description"], name
        elif name != "MixpeekExporterAbsent":  # no series, so no labels to name
            assert "{{ $labels.mixpeek_namespace }}" in annotations["description"], name
        if "mixpeek_batches_up" in alert["expr"]:  # the batch listing of a namespace, as a whole
            assert "batch metrics" in annotations["description"], name
        elif "mixpeek_batch" in alert["expr"]:  # batch alerts are per bucket
            assert "$labels.bucket_id" in annotations["description"], name
        else:
            assert "task_type" in annotations["description"], name


def test_rules_use_only_exported_metrics_and_deduplicate() -> None:
    histograms = [name for name, kind, *_ in METRICS if kind == "histogram"]
    exported = {name for name, *_ in METRICS} | {
        name + suffix for name in histograms for suffix in ("_bucket", "_sum", "_count")
    }
    for rule in rules():
        name, expr = rule.get("alert", rule.get("record")), rule["expr"]
        used = raw_metrics(expr)
        assert used <= exported, (name, used - exported)
        assert used or re.search(RECORDED_NAME, expr) or re.search(r"\bup\{", expr), name
        if "absent(" not in expr:
            # Two exporters scraped side by side must not double anything: max by (...) before any sum
            # (recorded series are deduplicated already).
            raw = re.findall(METRIC_NAME, re.sub(RECORDED_NAME, "", expr))
            assert expr.count("max by (") >= len(raw), name


def test_recorded_series_are_recorded_before_they_are_read() -> None:
    recorded: set[str] = set()
    for rule in rules():
        read = set(re.findall(RECORDED_NAME, rule["expr"]))
        assert read <= recorded, (rule.get("alert", rule.get("record")), read - recorded)
        if "record" in rule:
            recorded.add(rule["record"])
    assert any(re.search(RECORDED_NAME, alert["expr"]) for alert in alerts())


def test_recording_rule_names_follow_the_convention() -> None:
    """level (the labels kept) : metric (no _total once rated) : operations (the window in each)."""
    levels: dict[str, str] = {}
    for rule in records():
        level, metric, operations = rule["record"].split(":")
        expr = rule["expr"]
        kept = re.findall(r"by \(([^)]*)\)", expr)
        if kept:  # the last aggregation sets the labels
            assert level == kept[-1].replace(", ", "_"), rule["record"]
        else:  # a quantile of a recorded histogram drops its le
            (source,) = set(re.findall(RECORDED_NAME, expr))
            assert "histogram_quantile(" in expr, rule["record"]
            assert levels[source] == f"{level}_le", rule["record"]
        levels[rule["record"]] = level
        assert metric.startswith("mixpeek_"), rule["record"]
        assert not metric.endswith("_total"), rule["record"]
        window = re.fullmatch(r"(rate|ratio_rate|p(50|90|99)_)([0-9]+[mh])", operations)
        assert window is not None, rule["record"]
        assert f"[{window[3]}]" in expr or f":rate{window[3]}" in expr, rule["record"]


def test_every_recording_rule_has_a_unit_test() -> None:
    tested = {
        name
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
        if case["exp_samples"]
        for name in re.findall(RECORDED_NAME, case["expr"])
    }
    assert {rule["record"] for rule in records()} <= tested


@pytest.mark.e2e
def test_without_recording_rules_the_alerts_use_their_own_expressions(tmp_path: Path) -> None:
    build = deploy_module("deploy/prometheus/build.py")
    plain = rules(build.render_rules(recording_rules=False))
    assert all("alert" in rule for rule in plain)
    assert [rule["alert"] for rule in plain] == [alert["alert"] for alert in alerts()]
    assert not any(re.search(RECORDED_NAME, rule["expr"]) for rule in plain)
    (tmp_path / "rules.yaml").write_text(build.render_rules(recording_rules=False))
    code, output = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert code == 0, output


@pytest.mark.e2e
def test_without_keep_firing_for_a_trickle_of_failures_flaps(tmp_path: Path) -> None:
    """The trickle unit test again, on the spike rule without keep_firing_for: 6 firing episodes, not 1."""
    build = deploy_module("deploy/prometheus/build.py")
    (tmp_path / "rules.yaml").write_text(build.render_rules({"failedSpike": {"keepFiringFor": ""}}))
    (trickle,) = [
        test
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        if test["name"] == "failed spike, trickle at the threshold"
    ]
    (episodes,) = trickle["promql_expr_test"]
    assert episodes["exp_samples"][0]["value"] == 1
    episodes["exp_samples"][0]["value"] = 6
    del trickle["alert_rule_test"]  # with no hysteresis the alert is not firing at the end
    scenario = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [trickle]}
    (tmp_path / "trickle.test.yaml").write_text(yaml.safe_dump(scenario))
    code, output = promtool("test", "rules", str(tmp_path / "trickle.test.yaml"))
    assert code == 0, output


def test_group_by_labels_join_every_by_and_on() -> None:
    """alerts.groupBy adds its labels to every by (...) and on (...), and changes nothing else."""
    build = deploy_module("deploy/prometheus/build.py")
    default = build.render_rules()
    clustered = build.render_rules({"groupBy": ["cluster", "region"]})
    assert clustered == re.sub(r"\b(by|on) \(", r"\1 (cluster, region, ", default)
    assert clustered.count("(cluster, region, ") == default.count("by (") + default.count("on (")


@pytest.mark.e2e
def test_group_by_cluster_keeps_two_clusters_apart(tmp_path: Path) -> None:
    build = deploy_module("deploy/prometheus/build.py")
    (tmp_path / "rules.yaml").write_text(build.render_rules({"groupBy": ["cluster"]}))
    scenario = tmp_path / "cluster.rules.test.yaml"
    scenario.write_text((REPO / "tests" / "deploy" / "cluster.rules.test.yaml").read_text())
    code, output = promtool("test", "rules", str(scenario))
    assert code == 0, output


def test_an_empty_dashboard_url_leaves_the_annotation_out() -> None:
    build = deploy_module("deploy/prometheus/build.py")
    plain = rules(build.render_rules({"dashboardUrl": ""}))
    assert [rule for rule in plain if "dashboard_url" in rule.get("annotations", {})] == []
    assert len([rule for rule in plain if "alert" in rule]) == len(alerts())


def test_the_namespace_link_sets_the_dashboards_namespace_variable() -> None:
    """A renamed dashboard variable would make the links open the dashboard on every namespace, silently."""
    board = json.loads(BOARD.read_text())
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    (parameter,) = parse_qs(urlsplit(ON_NAMESPACE).query)
    variable = variables[parameter.removeprefix("var-")]
    assert variable["query"].endswith(", mixpeek_namespace)"), variable


@pytest.mark.e2e
def test_a_dashboard_link_escapes_the_namespace_and_keeps_the_urls_query(tmp_path: Path) -> None:
    """Prometheus renders the link: a namespace with a space and an `&` stays one query value, and a
    dashboardUrl that has a query already gets `&`, not a second `?`."""
    build = deploy_module("deploy/prometheus/build.py")
    text = build.render_rules({"dashboardUrl": "https://grafana.example.com/d/mixpeek-tasks?orgId=2"})
    (tmp_path / "rules.yaml").write_text(text)
    namespace = "a b&c"
    (rule,) = [rule for rule in rules(text) if rule.get("alert") == "MixpeekExporterPollFailing"]
    expected = {
        key: value.replace("{{ $labels.mixpeek_namespace }}", namespace)
        for key, value in rule["annotations"].items()
    }
    expected["dashboard_url"] = "https://grafana.example.com/d/mixpeek-tasks?orgId=2&var-namespace=a+b%26c"
    labels = {"severity": "warning", "mixpeek_namespace": namespace}
    case = {
        "eval_time": "15m",
        "alertname": "MixpeekExporterPollFailing",
        "exp_alerts": [{"exp_labels": labels, "exp_annotations": expected}],
    }
    test = {
        "interval": "1m",
        "input_series": [{"series": f'mixpeek_up{{mixpeek_namespace="{namespace}"}}', "values": "0x20"}],
        "alert_rule_test": [case],
    }
    scenario = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "link.test.yaml").write_text(yaml.safe_dump(scenario))
    code, output = promtool("test", "rules", str(tmp_path / "link.test.yaml"))
    assert code == 0, output
