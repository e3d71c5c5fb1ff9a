"""What many distinct task types cost a scrape with the default settings: sample lines, bytes, render time.

One namespace whose tasks carry `--task-types` distinct task types, three tasks each (one still PROCESSING,
one FAILED, one COMPLETED after a second poll), laid out by the exporter's own /metrics (the collector and
exposition `cli.build_exposition` makes from the default Settings). It prints the size of the text
exposition, how long its first render took, the process's peak memory, and the totals by status, which
must not depend on how task types are folded.

    python bench/cardinality.py [--task-types 10000]
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from exporter.api import Task
from exporter.cli import build_exposition
from exporter.config import load_settings
from exporter.histogram import Histogram
from exporter.metrics import POLL_DURATION_BUCKETS, NamespaceHealth, Snapshot
from exporter.state import NamespaceState, observe

NOW = 1_750_000_000.0


@dataclass
class Published:
    """What build_exposition reads of a poller: one snapshot, never replaced."""

    snapshot: Snapshot

    def on_publish(self, listener: Callable[[], object]) -> None:
        """Nothing to tell: the snapshot never changes."""


def snapshot(task_types: int, buckets: tuple[float, ...]) -> Snapshot:
    def listing(final: bool) -> list[Task]:
        statuses = ("PROCESSING", "FAILED", "COMPLETED") if final else ("PROCESSING",) * 3
        return [
            Task(f"t{i}-{j}", status, f"type_{i}", created=NOW - 60)
            for i in range(task_types)
            for j, status in enumerate(statuses)
        ]

    state = observe(NamespaceState(buckets=buckets), listing(final=False), NOW - 30)
    state = observe(state, listing(final=True), NOW)
    durations = Histogram.empty(POLL_DURATION_BUCKETS).observe(1.0)
    health = NamespaceHealth(up=True, last_success=NOW, poll_durations=durations)
    return Snapshot(namespaces={"prod": state}, health={"prod": health})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task-types", type=int, default=10_000)
    args = parser.parse_args()
    settings = load_settings(api_key="sk_bench_cardinality")
    published = Published(snapshot(args.task_types, tuple(settings.histogram_buckets)))
    exposition = build_exposition(settings, published)
    started = time.perf_counter()
    body = b"".join(exposition.respond(None, None).body)
    rendered = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = body.decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    totals: dict[tuple[str, str], float] = defaultdict(float)
    dropped = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("mixpeek_tasks", "mixpeek_task_terminal_transitions_total"):
                totals[(sample.name, sample.labels["status"])] += sample.value
            if sample.name == "mixpeek_exporter_series_dropped_total":
                dropped += sample.value
    print(f"task types: {args.task_types}")
    print(f"sample lines: {len(lines)}")
    print(f"scrape size: {len(body) / 1e6:.1f} MB (text format, no gzip)")
    print(f"first render: {rendered:.2f} s")
    print(f"peak RSS after the render: {peak:.0f} MB")
    print(f"series dropped by the cap: {dropped:.0f}")
    for (name, status), value in sorted(totals.items()):
        if value:
            print(f"{name}{{status={status!r}}} summed: {value:.0f}")


if __name__ == "__main__":
    main()
