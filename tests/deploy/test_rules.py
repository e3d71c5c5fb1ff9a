"""The alert rules: promtool checks them and runs their unit tests (deploy/prometheus/rules.test.yaml: each
alert firing and not firing, two exporters side by side); every alert is documented in docs/runbook.md."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from support import REPO, promtool

from exporter.metrics import METRICS

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rules.test.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
# A metric name in an expression; mixpeek_namespace is the one label that starts the same way.
METRIC_NAME = r"\bmixpeek_(?!namespace\b)[a-z_]+"


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.e2e
def test_promtool_check_rules() -> None:
    code, output = promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert f"SUCCESS: {len(alerts())} rules found" in output


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
    assert fired == names and quiet == names


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
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("/docs/runbook.md") and anchor == name.lower() and anchor in anchors, name
        if "mixpeek_exporter_series_dropped_total" in alert["expr"]:  # per metric, across namespaces
            assert "{{ $labels.metric }}" in annotations["description"], name
        elif name != "MixpeekExporterAbsent":  # no series, so no labels to name
            assert "{{ $labels.mixpeek_namespace }}" in annotations["description"], name
        if "mixpeek_batches_up" in alert["expr"]:  # the batch listing of a namespace, as a whole
            assert "batch metrics" in annotations["description"], name
        elif "mixpeek_batch" in alert["expr"]:  # batch alerts are per bucket
            assert "$labels.bucket_id" in annotations["description"], name
        else:
            assert "task_type" in annotations["description"], name


def test_rules_use_only_exported_metrics_and_deduplicate() -> None:
    exported = {name for name, *_ in METRICS}
    for alert in alerts():
        expr = alert["expr"]
        used = set(re.findall(METRIC_NAME, expr))
        assert used and used <= exported, (alert["alert"], used - exported)
        if "absent(" not in expr:
            # Two exporters scraped side by side must not double anything: max by (...) before any sum.
            assert expr.count("max by (") >= len(re.findall(METRIC_NAME, expr)), alert["alert"]
