"""The naive exporter bench/scale.py runs beside ours, on the same simulated API: what one writes first.

httpx (gzip as it asks by default), `json`, prometheus_client gauges and a counter served by
prometheus_client's own threaded server (rendered at every scrape), and a full cursor listing of every
namespace at every poll, remembering each task's status and type in a dict. It counts a transition when
a task is seen in a terminal status that it was not seen in before (after the first poll).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as CounterMetric

from exporter.simulator import TERMINAL_STATUSES

TASKS_LIST = "/v1/tasks/list"
PAGE_SIZE = 1000


class NaiveExporter:
    def __init__(self, http: httpx.AsyncClient, key: str, namespaces: list[str]) -> None:
        self._http = http
        self._key = key
        self._namespaces = namespaces
        self.registry = CollectorRegistry()
        self._tasks = Gauge(
            "naive_tasks", "Tasks by status.", ["namespace", "status", "task_type"], registry=self.registry
        )
        self._transitions = CounterMetric(
            "naive_task_transitions",
            "Tasks seen reaching a terminal status.",
            ["namespace", "status", "task_type"],
            registry=self.registry,
        )
        self.seen: dict[str, dict[str, tuple[str, str]]] = {}
        self.requests: Counter[str] = Counter()

    def serve(self) -> int:
        """Serve /metrics on a free loopback port; returns the port."""
        server, _ = start_http_server(0, "127.0.0.1", registry=self.registry)
        port: int = server.server_port
        return port

    async def poll_once(self) -> None:
        for namespace in self._namespaces:
            await self._poll(namespace)

    async def _poll(self, namespace: str) -> None:
        seen: dict[str, tuple[str, str]] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            response = await self._http.post(
                TASKS_LIST,
                params=params,
                json={"sort": {"field": "created_at", "direction": "desc"}},
                headers={"Authorization": f"Bearer {self._key}", "X-Namespace": namespace},
            )
            self.requests[TASKS_LIST] += 1
            response.raise_for_status()
            page = json.loads(response.content)
            for task in page["results"]:
                seen[task["task_id"]] = (task["status"], task["task_type"])
            cursor = (page.get("pagination") or {}).get("next_cursor")
            if not cursor or not page["results"]:
                break
        before = self.seen.get(namespace)
        if before is not None:
            for task_id, (status, task_type) in seen.items():
                was = before.get(task_id)
                if status in TERMINAL_STATUSES and (was is None or was[0] not in TERMINAL_STATUSES):
                    self._transitions.labels(namespace, status, task_type).inc()
            for status, task_type in set(before.values()) - set(seen.values()):
                self._tasks.labels(namespace, status, task_type).set(0)
        for (status, task_type), n in Counter(seen.values()).items():
            self._tasks.labels(namespace, status, task_type).set(n)
        self.seen[namespace] = seen
