"""End to end, with real parts: the simulated Mixpeek API, the exporter process, Debian's Prometheus scraping
it every second with the chart's alert rules, and Debian's Alertmanager delivering to a webhook in this test.

A burst of FAILED tasks makes MixpeekTasksFailedSpike reach the webhook, and it resolves once the burst has
left the rule's window. The rules are the chart's own (rendered by deploy/prometheus/build.py through Helm),
with the window and `for` shortened through the chart's values so the story fits in a minute: the expressions
are the production ones (checked below), only the numbers differ. Everything listens on 127.0.0.1 and is
stopped here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import API_KEY
from support import (
    REPO,
    ExporterProcess,
    ServiceProcess,
    deploy_module,
    free_port,
    prometheus_query,
    require_binary,
    serve_in_background,
    start_prometheus,
    wait_until,
)

from exporter.simulator import World
from exporter.simulator.testing import SimulatorTestServer

pytest.importorskip("helm_python")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ALERT = "MixpeekTasksFailedSpike"
TASK_TYPE = "api_buckets_batches_process"
# Chart values for the test: a 20 s window, a 2 s `for` and a 2 s keep_firing_for instead of 10m, 2m and 30m;
# same floor and share.
SHORT_SPIKE = {"window": "20s", "for": "2s", "keepFiringFor": "2s"}


class Webhook:
    """Alertmanager's receiver: a loopback HTTP server that keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        serve_in_background(self._server)

    def alerts(self, status: str) -> list[dict[str, Any]]:
        """Alerts of ALERT delivered with this status (firing or resolved)."""
        return [
            alert
            for notification in list(self.notifications)
            for alert in notification["alerts"]
            if alert["status"] == status and alert["labels"]["alertname"] == ALERT
        ]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_alertmanager(workdir: Path, webhook: Webhook) -> tuple[ServiceProcess, str]:
    """Debian's Alertmanager on 127.0.0.1, clustering off, grouping waits of a second."""
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "mixpeek_namespace", "task_type"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test", "webhook_configs": [{"url": webhook.url, "send_resolved": True}]}],
    }
    (workdir / "alertmanager.yml").write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServiceProcess(
        [
            require_binary("prometheus-alertmanager"),
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port on 0.0.0.0
            "--log.level=warn",
        ],
        workdir / "alertmanager.log",
        f"{url}/-/ready",
    )
    return server, url


def spike_rule(rules_text: str) -> dict[str, Any]:
    (rule,) = [
        rule
        for group in yaml.safe_load(rules_text)["groups"]
        for rule in group["rules"]
        if rule.get("alert") == ALERT
    ]
    return dict(rule)


def test_the_test_rules_are_the_production_rules_with_short_windows() -> None:
    build = deploy_module("deploy/prometheus/build.py")
    short = spike_rule(build.render_rules({"failedSpike": SHORT_SPIKE}))
    production = spike_rule((REPO / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert re.sub(r"\[20s\]", "[10m]", short["expr"]) == production["expr"]
    assert (short["for"], production["for"]) == ("2s", "2m")
    assert (short["keep_firing_for"], production["keep_firing_for"]) == ("2s", "30m")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Simulated API, exporter, Prometheus (short-window rules), Alertmanager and webhook on 127.0.0.1."""
    world = World(clock=time.time, seed=3)  # real time; nothing changes unless the test says so
    world.add_namespace("prod")
    running = [world.create_task("prod", TASK_TYPE, "PROCESSING") for _ in range(4)]
    rules = tmp_path / "rules.yaml"
    rules.write_text(deploy_module("deploy/prometheus/build.py").render_rules({"failedSpike": SHORT_SPIKE}))
    started: list[Any] = []
    try:
        api = SimulatorTestServer(world, api_key=API_KEY)
        api.start()
        started.append(api)
        webhook = Webhook()
        started.append(webhook)
        alertmanager, alertmanager_url = start_alertmanager(tmp_path, webhook)
        started.append(alertmanager)
        exporter = ExporterProcess(
            "--poll-interval",
            "1",
            env={"MIXPEEK_API_KEY": API_KEY, "MIXPEEK_API_URL": api.url, "MIXPEEK_NAMESPACES": "prod"},
        )
        started.append(exporter)
        exporter.wait_ready()
        prometheus, prometheus_url = start_prometheus(
            tmp_path, [f"127.0.0.1:{exporter.port}"], (rules,), alertmanager_url.removeprefix("http://")
        )
        started.append(prometheus)
        yield {
            "world": world,
            "running": running,
            "webhook": webhook,
            "prometheus": prometheus_url,
            "alertmanager": alertmanager_url,
        }
    finally:
        for part in reversed(started):
            if isinstance(part, ExporterProcess):
                part.kill()
            else:
                part.stop()


def rule_state(prometheus: str) -> str:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule["name"] == ALERT]
    assert rule["health"] == "ok", rule.get("lastError")
    return str(rule["state"])


def test_a_burst_of_failed_tasks_pages_through_alertmanager_and_resolves(stack: dict[str, Any]) -> None:
    started = time.monotonic()
    world: World = stack["world"]
    prometheus: str = stack["prometheus"]
    webhook: Webhook = stack["webhook"]
    labels = f'mixpeek_namespace="prod", task_type="{TASK_TYPE}"'

    # Healthy traffic first: four tasks complete. Prometheus sees it, and the rule stays quiet.
    for task_id in stack["running"]:
        world.set_status(task_id, "COMPLETED")
    wait_until(
        lambda: prometheus_query(
            prometheus, f'mixpeek_task_terminal_transitions_total{{{labels}, status="COMPLETED"}} == 4'
        ),
        30,
        "Prometheus to scrape 4 COMPLETED transitions",
    )
    assert prometheus_query(
        prometheus, f'mixpeek_task_terminal_transitions_total{{{labels}, status="FAILED"}} == 0'
    )
    assert rule_state(prometheus) == "inactive"

    # The burst: twelve tasks fail at once.
    world.fail_burst("prod", 12, task_type=TASK_TYPE)
    world.advance(1)
    fired = wait_until(lambda: webhook.alerts("firing"), 60, f"{ALERT} to reach the webhook")
    fire_seconds = time.monotonic() - started
    assert {alert["labels"]["mixpeek_namespace"] for alert in fired} == {"prod"}
    assert fired[0]["labels"]["task_type"] == TASK_TYPE
    assert fired[0]["labels"]["severity"] == "critical"
    assert fired[0]["annotations"]["runbook_url"].endswith("/docs/runbook.md#mixpeektasksfailedspike")
    assert "in namespace prod FAILED in the last 20s" in fired[0]["annotations"]["description"]
    active = httpx.get(
        f"{stack['alertmanager']}/api/v2/alerts", params={"filter": f"alertname={ALERT}"}
    ).json()
    assert [alert["labels"]["mixpeek_namespace"] for alert in active] == ["prod"]

    # No more failures: once the burst leaves the 20 s window the alert resolves, and the webhook hears it.
    wait_until(lambda: webhook.alerts("resolved"), 90, f"{ALERT} to resolve")
    assert rule_state(prometheus) == "inactive"
    print(f"fired after {fire_seconds:.1f} s, resolved after {time.monotonic() - started:.1f} s")
