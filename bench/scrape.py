"""/metrics response time for a large exposition: a Snapshot of about 50,000 series behind the real
MetricsServer, scraped by concurrent clients in the text format and OpenMetrics, with and without gzip.

The server runs in a child process, so the scrapers' CPU neither counts as the exporter's nor competes
for its GIL. It also reports what rendering costs: the first render of the whole snapshot, and the render
after one namespace's poll replaced its state (the first scrape after each poll pays it).

    python bench/scrape.py [--namespaces 50 --task-types 10 --scrapes 200 --concurrency 20]
                           [--new-connections]

Each scraper keeps its connection open between its scrapes, as Prometheus does; `--new-connections` opens
one per scrape instead.

`measure_scrapes(url)` is the measuring part, for other benchmarks (bench/scale.py); `Hammer` scrapes in
rounds from a process of its own while something else (polls) runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import http.client
import math
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import NamedTuple
from urllib.parse import urlsplit

from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from exporter.config import DEFAULT_BUCKETS
from exporter.exposition import Exposition
from exporter.histogram import Exemplar, Histogram
from exporter.metrics import POLL_DURATION_BUCKETS, NamespaceHealth, Snapshot, SnapshotCollector
from exporter.server import MetricsServer
from exporter.state import NamespaceState
from exporter.vocabulary import TASK_STATUSES, TERMINAL_STATUSES

NOW = 1_750_000_000.0
# What Prometheus (2.x, 3.x by default) sends: OpenMetrics first, and gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
ACTIVE = ("PENDING", "PROCESSING")


class ScrapeTimes(NamedTuple):
    p50: float
    """seconds"""
    p99: float
    """seconds"""
    bytes: int
    """of the body as sent (compressed when gzip was asked for)"""
    scrapes: int = 0
    """how many were timed"""


def measure_scrapes(
    url: str,
    scrapes: int = 200,
    concurrency: int = 20,
    headers: dict[str, str] | None = None,
    *,
    keep_alive: bool = True,
) -> ScrapeTimes:
    """GET `url` `scrapes` times, `concurrency` at once, with the headers Prometheus sends unless others
    are given. With `keep_alive`, each of the `concurrency` scrapers opens one connection (to a server
    that has /healthz) and makes its share of the scrapes on it, as Prometheus does; otherwise each scrape
    opens a new connection. The time of each scrape is from sending the request (connecting, on a new
    connection) to the last byte of the body."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sent = PROMETHEUS_HEADERS if headers is None else headers

    def scrape(connection: http.client.HTTPConnection) -> tuple[float, int]:
        started = time.perf_counter()
        connection.request("GET", path, headers=sent)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        return time.perf_counter() - started, len(body)

    def scraper(share: int) -> list[tuple[float, int]]:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            if not keep_alive:
                return [scrape(connection)]
            # Prometheus's connection is up long before a scrape: opened, and its first request (which
            # waits for the server to accept it and start its thread) answered, before the clock starts.
            # A request for /healthz, not `url`: the first /metrics after a poll renders, and is timed.
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return [scrape(connection) for _ in range(share)]
        finally:
            connection.close()

    if keep_alive:
        shares = [
            scrapes // concurrency + (i < scrapes % concurrency) for i in range(min(concurrency, scrapes))
        ]
    else:
        shares = [1] * scrapes
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = [result for share in pool.map(scraper, shares) for result in share]
    times = sorted(seconds for seconds, _ in results)
    return ScrapeTimes(percentile(times, 50), percentile(times, 99), results[-1][1])


# Between two rounds of a Hammer: the scrapers' own CPU is on the same two cores as the exporter's.
ROUND_GAP_S = 0.02
NO_GZIP = {"Accept-Encoding": "identity"}


class Hammer:
    """`concurrency` scrapers in a process of their own, hitting `url` at once, round after round while
    switched on: the latency of scrapes made while the exporter polls.

    `keep_alive=False`: a new connection per scrape, no gzip, the text format (curl, or a second
    Prometheus without keep-alive); `keep_alive=True`: Prometheus' headers (OpenMetrics, gzip) on one
    kept-alive connection per scraper. `once()` times one scrape on a new connection with Prometheus'
    headers, e.g. the first after a poll."""

    def __init__(self, url: str, concurrency: int = 20, *, keep_alive: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(
            target=_hammer, args=(url, concurrency, keep_alive, child), daemon=True
        )
        self._process.start()
        child.close()
        self._control.recv()  # ready

    def on(self) -> None:
        self._control.send("on")

    def off(self) -> None:
        self._control.send("off")
        self._control.recv()  # the round under way has ended

    def once(self) -> float:
        self._control.send("once")
        seconds: float = self._control.recv()
        return seconds

    def close(self) -> tuple[list[float], int]:
        """The times of every scrape made while on (seconds), and the size of the last body."""
        self._control.send("stop")
        times, size = self._control.recv()
        self._process.join(10)
        return times, size


def _hammer(url: str, concurrency: int, keep_alive: bool, control: Connection) -> None:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    headers = PROMETHEUS_HEADERS if keep_alive else NO_GZIP
    kept = threading.local()
    times: list[float] = []
    size = 0

    def scrape(sent: dict[str, str], reuse: bool) -> tuple[float, int]:
        started = time.perf_counter()
        connection = getattr(kept, "connection", None) if reuse else None
        try:
            if connection is None:
                raise ConnectionResetError
            connection.request("GET", path, headers=sent)
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # None kept, or the server closed it while idle (its 30 s timeout, which a slow poll outlasts):
            # a new connection, as Prometheus' client retries on one.
            connection = http.client.HTTPConnection(host, port, timeout=60)
            connection.request("GET", path, headers=sent)
            response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        seconds = time.perf_counter() - started
        if reuse:
            kept.connection = connection
        else:
            connection.close()
        return seconds, len(body)

    control.send("ready")
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        while True:
            command = control.recv()
            if command == "once":
                control.send(scrape(PROMETHEUS_HEADERS, False)[0])
            elif command == "on":
                while not control.poll():
                    round_ = [pool.submit(scrape, headers, keep_alive) for _ in range(concurrency)]
                    for future in round_:
                        seconds, size = future.result()
                        times.append(seconds)
                    time.sleep(ROUND_GAP_S)
                control.recv()  # off
                control.send(None)
            else:
                control.send((times, size))
                return


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value that at least p % of the values do not exceed."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def namespace_state(namespace: int, task_types: int, version: int = 0) -> NamespaceState:
    """Every known status of every task type, terminal histograms with three observations each."""
    types = tuple(f"task_type_{t:02d}" for t in range(task_types))
    histogram = Histogram.empty(DEFAULT_BUCKETS)
    for value in (3.0, 95.0, 4000.0 + version):
        task_id = f"task_{namespace:04d}_{int(value):06d}_{version}"
        histogram = histogram.observe(value, Exemplar(task_id, value, NOW - 60))
    return NamespaceState(
        buckets=DEFAULT_BUCKETS,
        polled_at=NOW,
        groups=types,
        statuses=TASK_STATUSES,
        counts={(status, kind): 7 + version for status in TASK_STATUSES for kind in types},
        oldest_active={(status, kind): NOW - 600 for status in ACTIVE for kind in types},
        transitions={(status, kind): 40 + version for status in TERMINAL_STATUSES for kind in types},
        completions={(status, kind): histogram for status in TERMINAL_STATUSES for kind in types},
    )


def batch_state(buckets: int) -> NamespaceState:
    groups = tuple(f"bkt_{b:02d}" for b in range(buckets))
    histogram = Histogram.empty(DEFAULT_BUCKETS).observe(700.0)
    return NamespaceState(
        buckets=DEFAULT_BUCKETS,
        polled_at=NOW,
        groups=groups,
        counts={("PROCESSING", group): 2 for group in groups},
        oldest_active={("PROCESSING", group): NOW - 300 for group in groups},
        transitions={("COMPLETED", group): 9 for group in groups},
        completions={("COMPLETED", group): histogram for group in groups},
        tallies={(group, "processed"): 900 for group in groups},
    )


def build_snapshot(namespaces: int = 50, task_types: int = 10, batch_buckets: int = 3) -> Snapshot:
    names = [f"ns-{i:04d}" for i in range(namespaces)]
    durations = Histogram.empty(POLL_DURATION_BUCKETS)
    for seconds in (0.3, 0.4, 2.0):
        durations = durations.observe(seconds)
    return Snapshot(
        namespaces={name: namespace_state(i, task_types) for i, name in enumerate(names)},
        batches={name: batch_state(batch_buckets) for name in names} if batch_buckets else {},
        health={name: NamespaceHealth(True, NOW - 5, durations, {"timeout": 1}) for name in names},
        api_requests={("/v1/tasks/list", "200"): 1000 * namespaces},
    )


def render_costs(snapshot: Snapshot, task_types: int) -> dict[str, float]:
    """Seconds to render the whole snapshot, then again after one namespace's state was replaced."""
    current = [snapshot]
    exposition = Exposition(SnapshotCollector(lambda: current[0], "bench"))
    costs = {}
    for name, accept in (("text", None), ("openmetrics", OPENMETRICS)):
        started = time.perf_counter()
        exposition.respond(accept, None)
        costs[f"first render, {name}"] = time.perf_counter() - started
    for version, (name, accept) in enumerate((("text", None), ("openmetrics", OPENMETRICS)), 1):
        polled = next(iter(snapshot.namespaces))
        namespaces = {**current[0].namespaces, polled: namespace_state(0, task_types, version)}
        current[0] = dataclasses.replace(current[0], namespaces=namespaces)
        started = time.perf_counter()
        exposition.respond(accept, None)
        costs[f"render after one namespace's poll, {name}"] = time.perf_counter() - started
    return costs


def serve(namespaces: int, task_types: int, batch_buckets: int, control: Connection) -> None:
    snapshot = build_snapshot(namespaces, task_types, batch_buckets)
    costs = render_costs(snapshot, task_types)
    collector = SnapshotCollector(lambda: snapshot, "bench")
    server = MetricsServer("127.0.0.1", 0, Exposition(collector), lambda: True)
    server.start()
    control.send((server.port, costs))
    while control.recv() == "cpu":  # until the parent is done
        control.send(time.process_time())
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--task-types", type=int, default=10)
    parser.add_argument("--batch-buckets", type=int, default=3, help="per namespace; 0: no batches")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--new-connections", action="store_true", help="a new connection per scrape, not one per scraper"
    )
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(
        target=serve, args=(args.namespaces, args.task_types, args.batch_buckets, child), daemon=True
    )
    server.start()
    child.close()  # so that recv fails, rather than waits, if the server dies
    port, costs = parent.recv()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        plain.request("GET", "/metrics")
        text = plain.getresponse().read()
        plain.close()
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        print(f"{series:,} series ({args.namespaces} namespaces x {args.task_types} task types)")
        for what, seconds in costs.items():
            print(f"{what}: {seconds * 1000:.1f} ms")
        connections = "a new connection each" if args.new_connections else "one connection per scraper"
        print(
            f"{args.scrapes} scrapes, {args.concurrency} at once, {connections}; "
            "CPU: the server process's, per scrape"
        )
        print(f"{'format':<12} {'gzip':<5} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'body bytes':>11}")

        def row(name: str, zipped: str, url: str, headers: dict[str, str]) -> None:
            parent.send("cpu")
            cpu = parent.recv()
            times = measure_scrapes(
                url, args.scrapes, args.concurrency, headers, keep_alive=not args.new_connections
            )
            parent.send("cpu")
            cpu = (parent.recv() - cpu) / args.scrapes
            print(
                f"{name:<12} {zipped:<5} {times.p50 * 1000:>7.2f} {times.p99 * 1000:>7.2f} "
                f"{cpu * 1000:>7.2f} {times.bytes:>11,}"
            )

        for name, accept in (("text 0.0.4", None), ("openmetrics", OPENMETRICS)):
            for zipped in (False, True):
                headers = {"Accept-Encoding": "gzip" if zipped else "identity"}
                if accept:
                    headers["Accept"] = accept
                measure_scrapes(url, scrapes=1, concurrency=1, headers=headers)  # the render, once
                row(name, "yes" if zipped else "no", url, headers)
        # The HTTP server's own cost: a body of three bytes.
        row("/healthz", "", url.replace("/metrics", "/healthz"), {})
    finally:
        parent.send("done")
        server.join(10)


if __name__ == "__main__":
    main()
