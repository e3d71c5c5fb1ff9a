"""/metrics latency while polls run, served from the poller's interpreter or from a process of its own.

    python bench/serving.py                                  # every arrangement, about 3 minutes
    python bench/serving.py --arrangements inproc,child-ours --steady-polls 8
    python bench/serving.py --pin                            # the exporter on CPU 0, the rest on CPU 1

The 100k scenario of bench/scale.py (one namespace of 100,000 tasks, 5 % active, 1 % changing per poll,
the simulated API in its own process, the real exporter's poller), polled every `--every` seconds, with
bench/scrape.py's Hammer (20 scrapers at once in a process of their own) switched on from the start of
each poll until its render is served: a new connection per scrape without gzip during half of the polls,
kept-alive connections with Prometheus' headers (OpenMetrics, gzip) during the other half. Then, with no
poll and no render, the same two hammers for `--floor-seconds` each: the server's own floor on this
machine. Each arrangement runs in a fresh process:

- `inproc`: today's, the MetricsServer in the poller's process (as exporter.cli and bench/scale.py run it);
- `child-ours`: a serving process (multiprocessing spawn) running the real MetricsServer over a static
  exposition that answers with the last bytes shipped to it (so TLS, basic auth and the connection limits
  would still apply); the poller's process renders in the background as today, and a thread of it ships
  each complete render (both formats kept, plain and gzip) down a pipe;
- `child-asyncio`: the same serving process with a bare asyncio HTTP/1.1 server instead (no TLS, no auth,
  no limits: what the serving itself costs without http.server).

Printed, as markdown: per arrangement, p50/p99 (and count) of each kind of scrape while polling and at the
floor, the 1-minute load average at the start and the end, the CPU of the poller's process per poll, the
serving process's CPU per scrape of each kind (at the floor, where nothing else runs in it; for `inproc`
the poller's process, idle then), and what shipping a render costs the poller's process (CPU and wall
time per render, bytes per render).

With `--pin`, the exporter's processes (the poller's and the serving one) run on CPU 0 only, and the
simulated API and every scraper on CPU 1 only: as in production, where the API and the scrapers run on
other hosts and the exporter has its core to itself, instead of four busy processes sharing two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from statistics import mean

from prometheus_client.exposition import choose_encoder, gzip_accepted
from scale import (
    Options,
    _load,
    _Ours,
    _poll,
    _progress,
    _times,
    bench_settings,
    built_exporter,
    scenario,
    serve_world,
)
from scrape import ROUND_GAP_S, Hammer, ScrapeTimes

from exporter.exposition import RENDERED_AHEAD, VARY, Exposition, Response
from exporter.metrics import Snapshot
from exporter.poller import Poller
from exporter.server import MetricsServer

INPROC, CHILD_OURS, CHILD_ASYNCIO = "inproc", "child-ours", "child-asyncio"
ARRANGEMENTS = (INPROC, CHILD_OURS, CHILD_ASYNCIO)
EXPORTER_CPUS, OTHERS_CPUS = {0}, {1}
"""With --pin: the exporter's processes on the first CPU, the simulated API and the scrapers on the second."""
SERVED_CHECK_S = 0.005
"""How often the poller's process looks whether the last render is served (or shipped)."""

Bodies = dict[str, tuple[bytes, bytes]]
"""content type -> (plain body, gzipped body): one complete render, as shipped."""


@dataclass
class Run:
    arrangement: str
    load: str = ""
    polls: int = 0
    poll_cpu: float = 0.0
    """The poller's process, seconds per steady poll (its server's work too, for inproc)."""
    polling_new: ScrapeTimes | None = None
    polling_kept: ScrapeTimes | None = None
    polling_curl: ScrapeTimes | None = None
    floor_new: ScrapeTimes | None = None
    floor_kept: ScrapeTimes | None = None
    floor_curl: ScrapeTimes | None = None
    """New connections, no gzip, 20 at once from one curl (C): the floor without Python scrapers."""
    floor_cpu_per_scrape: tuple[float | None, float | None] = (None, None)
    """The serving process's CPU per scrape at the floor: new connections, kept-alive ones."""
    polling_wait: float = 0.0
    """Seconds the serving process's threads waited on a run queue (runnable, no core free) per second
    of scraping while polling; `floor_wait` at the floor."""
    floor_wait: float = 0.0
    serving_rss: int = 0
    """Peak RSS of the serving process (for inproc, the poller's, which serves)."""
    ships: list[tuple[float, float, int]] = field(default_factory=list)
    """Per render shipped: CPU seconds of the shipping thread, wall seconds, bytes."""
    error: str | None = None


@contextlib.contextmanager
def spawning_on(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on `cpus` (None: wherever): a child inherits the affinity of the
    thread that starts it, so this thread's is set for the while, then put back."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# The serving process


class Shelf:
    """The last render shipped, chosen from as the exporter's Exposition chooses (format, then gzip)."""

    def __init__(self) -> None:
        self.bodies: Bodies = {}

    def receive(self, ship: Connection) -> None:
        """Until the pipe closes: each message replaces the whole render (one reference swap)."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                self.bodies = ship.recv()

    def pick(self, accept: str | None, accept_encoding: str | None) -> tuple[list[tuple[str, str]], bytes]:
        _, content_type = choose_encoder(accept or "")
        zipped = gzip_accepted(accept_encoding or "")
        plain, gzipped = self.bodies[content_type]
        body = gzipped if zipped else plain
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if zipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", VARY))
        return headers, body


class ShelvedExposition(Exposition):
    """An Exposition that renders nothing: it answers with the bytes shipped to the shelf."""

    def __init__(self, shelf: Shelf) -> None:
        super().__init__()
        self._shelf = shelf

    def respond(self, accept: str | None, accept_encoding: str | None, query: str = "") -> Response:
        headers, body = self._shelf.pick(accept, accept_encoding)
        return Response(headers, [body])


async def _answer(shelf: Shelf, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 GETs on one connection until the client closes it: /metrics and /healthz, one write each."""
    with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            path = head[0].split(" ")[1].partition("?")[0] if head[0].count(" ") == 2 else ""
            if path == "/metrics":
                headers, body = shelf.pick(fields.get("accept"), fields.get("accept-encoding"))
                status = "200 OK"
            else:
                body = b"ok\n" if path == "/healthz" else b"not found\n"
                status = "200 OK" if path == "/healthz" else "404 Not Found"
                headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers), "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await writer.drain()
            if fields.get("connection", "").lower() == "close":
                break
    writer.close()


def _serve_asyncio(shelf: Shelf, started: concurrent.futures.Future[int]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _answer(shelf, r, w), "127.0.0.1", 0, backlog=1024, limit=64 * 1024
        )
        started.set_result(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def serve_child(kind: str, ship: Connection, control: Connection) -> None:
    """The serving process: the shelf fed by `ship`, served by our MetricsServer or a bare asyncio server;
    `control` asks for this process's CPU time until it says stop."""
    shelf = Shelf()
    shelf.bodies = ship.recv()  # the first render, before any scraper comes
    threading.Thread(target=shelf.receive, args=(ship,), name="receive", daemon=True).start()
    server = None
    if kind == CHILD_OURS:
        server = MetricsServer("127.0.0.1", 0, ShelvedExposition(shelf), lambda: True)
        server.start()
        port = server.port
    else:
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Thread(target=_serve_asyncio, args=(shelf, started), name="asyncio", daemon=True).start()
        port = started.result(30)
    control.send(port)
    while control.recv() == "cpu":
        control.send(process_times())
    if server is not None:  # the asyncio server's thread ends with the process
        server.stop()


# The poller's process


class Shipper:
    """Ships each complete render to the serving process: woken by each publish, it waits until the
    exposition serves the current snapshot, then sends both formats, plain and gzipped, in one message."""

    def __init__(self, exposition: Exposition, poller: Poller, ship: Connection) -> None:
        self._exposition, self._poller, self._ship = exposition, poller, ship
        self._published = threading.Event()
        self._stopped = threading.Event()
        self._shipped: object = None
        self.costs: list[tuple[float, float, int]] = []
        poller.on_publish(self._published.set)
        self._thread = threading.Thread(target=self._loop, name="ship", daemon=True)

    def start(self) -> None:
        self._published.set()
        self._thread.start()

    def shipped(self, snapshot: object) -> bool:
        return self._shipped is snapshot

    def stop(self) -> None:
        self._stopped.set()
        self._published.set()
        self._thread.join(5)
        self._ship.close()

    def _loop(self) -> None:
        while True:
            self._published.wait()
            self._published.clear()
            while not self._exposition.serves(snapshot := self._poller.snapshot):
                if self._stopped.wait(SERVED_CHECK_S):
                    return
            if self._stopped.is_set():
                return
            cpu, wall = time.thread_time(), time.perf_counter()
            bodies: Bodies = {}
            for accept in RENDERED_AHEAD:
                plain = self._exposition.respond(accept, None)
                zipped = self._exposition.respond(accept, "gzip")
                content_type = dict(plain.headers)["Content-Type"]
                bodies[content_type] = (b"".join(plain.body), b"".join(zipped.body))
            self._ship.send(bodies)
            size = sum(len(plain) + len(zipped) for plain, zipped in bodies.values())
            self.costs.append((time.thread_time() - cpu, time.perf_counter() - wall, size))
            self._shipped = snapshot


def run_arrangement(arrangement: str, options: Options, every: float, floor_s: float, pin: bool) -> Run:
    """One arrangement, in this (fresh) process: the API in a child, the poller here, the server here or
    in a child of its own."""
    others = OTHERS_CPUS if pin else None
    if pin:  # this process has one thread yet: the threads it starts, and its children, inherit this
        os.sched_setaffinity(0, EXPORTER_CPUS)
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    api = context.Process(
        target=serve_world, args=(scenario("100k"), "default", options, child_end), daemon=True
    )
    with spawning_on(others):
        api.start()
    run = Run(arrangement, load=_load())
    try:
        url, names, _ = control.recv()
        asyncio.run(
            _exporter(
                arrangement,
                url,
                names,
                options,
                control,
                run=run,
                every=every,
                floor_s=floor_s,
                others=others,
            )
        )
    except Exception as exc:  # report it in the table, go on with the next arrangement
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            control.send("stop")
        api.join(30)
    run.load += f" to {_load()}"
    return run


async def _exporter(
    arrangement: str,
    url: str,
    names: list[str],
    options: Options,
    control: Connection,
    *,
    run: Run,
    every: float,
    floor_s: float,
    others: set[int] | None,
) -> None:
    settings = bench_settings(url, names, options)
    async with built_exporter(settings, url) as (client, poller, exposition):
        subject = _Ours(poller, client)
        await subject.poll_once()  # the first poll, a full listing, before the serving starts
        exposition.start()
        async with _serving(arrangement, exposition, poller) as (port, served, server_times, shipper):
            await _until(lambda: served(poller.snapshot))
            metrics = f"http://127.0.0.1:{port}/metrics"
            with spawning_on(others):
                hammers = (
                    Hammer(metrics, keep_alive=False),
                    Hammer(metrics, keep_alive=True),
                    CurlHammer(metrics),
                )
            cpu, (_, waited, _), scraping = time.process_time(), server_times(), 0.0
            for i in range(options.steady_polls):
                started = time.perf_counter()
                control.send("churn")
                control.recv()
                hammer = hammers[i % len(hammers)]
                with spawning_on(others):  # curl's loop starts a shell at each `on`
                    hammer.on()
                await _poll(subject, control, first=False)
                await _until(lambda: served(poller.snapshot))
                hammer.off()
                scraping += time.perf_counter() - started
                run.polls += 1
                _progress(f"{arrangement}: poll {i + 1} served after {time.perf_counter() - started:.2f} s")
                await asyncio.sleep(max(0.0, every - (time.perf_counter() - started)))
            run.poll_cpu = (time.process_time() - cpu) / max(1, run.polls)
            run.polling_wait = (server_times()[1] - waited) / scraping
            run.polling_new, run.polling_kept, run.polling_curl = (_times(*h.close()) for h in hammers)
            await _floor(run, metrics, server_times, others, floor_s)
            if shipper is not None:
                run.ships = shipper.costs
        exposition.stop()


async def _floor(
    run: Run,
    metrics: str,
    server_times: Callable[[], tuple[float, float, int]],
    others: set[int] | None,
    floor_s: float,
) -> None:
    """The floor: no poll, no render; the scrapers of each kind for floor_s, the serving process's CPU
    taken per kind."""
    floors, cpus = [], []
    _, waited, _ = server_times()
    scraping = time.perf_counter()
    for keep_alive in (False, True):
        cpu = server_times()[0]
        with spawning_on(others):
            hammer = Hammer(metrics, keep_alive=keep_alive)
        hammer.on()
        await asyncio.sleep(floor_s)
        hammer.off()
        floors.append(times := _times(*hammer.close()))
        cpus.append((server_times()[0] - cpu) / times.scrapes if times else None)
    run.floor_new, run.floor_kept = floors
    run.floor_cpu_per_scrape = cpus[0], cpus[1]
    _, now_waited, run.serving_rss = server_times()
    run.floor_wait = (now_waited - waited) / (time.perf_counter() - scraping)
    curl = CurlHammer(metrics)
    with spawning_on(others):
        curl.on()
    await asyncio.sleep(floor_s)
    curl.off()
    run.floor_curl = _times(*curl.close())


Serving = tuple[int, Callable[[Snapshot], bool], Callable[[], tuple[float, float, int]], "Shipper | None"]


@contextlib.asynccontextmanager
async def _serving(arrangement: str, exposition: Exposition, poller: Poller) -> AsyncIterator[Serving]:
    """The server of this arrangement: yields its port, whether a snapshot is served, the serving
    process's CPU time, and the shipper (None in process)."""
    if arrangement == INPROC:
        server = MetricsServer("127.0.0.1", 0, exposition, poller.ready)
        server.start()
        try:
            yield server.port, exposition.serves, process_times, None
        finally:
            server.stop()
        return
    context = multiprocessing.get_context("spawn")
    ship, ship_child = context.Pipe(duplex=False)
    control, control_child = context.Pipe()
    child = context.Process(target=serve_child, args=(arrangement, ship, control_child), daemon=True)
    child.start()
    ship.close()
    control_child.close()
    shipper = Shipper(exposition, poller, ship_child)
    shipper.start()
    port = control.recv()

    def child_times() -> tuple[float, float, int]:
        control.send("cpu")
        times: tuple[float, float, int] = control.recv()
        return times

    try:
        yield port, shipper.shipped, child_times, shipper
    finally:
        shipper.stop()
        control.send("stop")
        child.join(10)


class CurlHammer:
    """Rounds of `concurrency` scrapes at once by one curl (C) process, a new connection each, no gzip,
    while switched on: a shell loop of its own, so that no Python client's GIL shows in the times and the
    poller's process does no client work. The times are curl's own (connect to last byte)."""

    def __init__(self, url: str, concurrency: int = 20) -> None:
        curl = [
            "curl",
            *("--silent", "--parallel", "--parallel-immediate", "--parallel-max", str(concurrency)),
            *("--header", "'Accept-Encoding: identity'"),
            *("--write-out", "'%{http_code} %{time_total} %{size_download}\\n'"),
            *("--output", "/dev/null", url) * concurrency,
        ]
        self._loop = f"while :; do {' '.join(curl)}; sleep {ROUND_GAP_S}; done"
        self._process: subprocess.Popen[str] | None = None
        self.times: list[float] = []
        self.size = 0

    def on(self) -> None:
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            ["/bin/sh", "-c", self._loop],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # curl's progress meter, which --parallel draws even when --silent
            text=True,
        )

    def off(self) -> None:
        """Stop the loop after the round under way: the shell, not its curl, which finishes the round
        (its slowest scrapes too) and then closes the pipe."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate()
        for line in out.splitlines():
            status, total, size = line.split()
            if status != "200":
                raise RuntimeError(f"curl: HTTP {status}")
            self.times.append(float(total))
            self.size = int(size)

    def close(self) -> tuple[list[float], int]:
        return self.times, self.size


def process_times() -> tuple[float, float, int]:
    """This process's CPU seconds, the seconds its threads have waited on a run queue (schedstat), and
    its peak RSS in bytes."""
    waited = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/schedstat") as schedstat:
            waited += int(schedstat.read().split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return time.process_time(), waited / 1e9, peak


async def _until(condition: Callable[[], bool]) -> None:
    # A render ends in the exposition's thread, which sets no event this loop could await.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(SERVED_CHECK_S)


# The table


def report(
    runs: Sequence[Run], options: Options, every: float, floor_s: float, elapsed: float, *, pin: bool
) -> str:
    cpus = (
        f"Pinned: the exporter on CPUs {sorted(EXPORTER_CPUS)}, "
        f"the API and the scrapers on CPUs {sorted(OTHERS_CPUS)}."
        if pin
        else f"{os.cpu_count()} CPUs shared by all."
    )
    lines = [
        f"100k tasks in one namespace, {options.active:.0%} active, {options.churn:.0%} changing per poll; "
        f"{options.steady_polls} steady polls, one every {every:g} s, the scrapers on from each poll's start "
        f"until its render is served; floor: {floor_s:g} s of each kind with no poll. {cpus} "
        f"Whole run {elapsed:.0f} s.",
        "",
        "| arrangement | while polling: new conn., no gzip p50 / p99 ms (n) "
        "| kept alive, gzip p50 / p99 ms (n) | curl: new conn. p50 / p99 ms (n) "
        "| floor: new conn. p50 / p99 ms (n) "
        "| floor: kept alive p50 / p99 ms (n) | floor, curl: new conn. p50 / p99 ms (n) | load "
        "| poller process CPU s / poll "
        "| serving CPU ms / scrape (floor): new conn., kept alive "
        "| serving run-queue wait ms / s scraping: polling, floor "
        "| serving process peak RSS MB | ship per render: CPU ms, wall ms, KB (n) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        ship = (
            f"{mean(c for c, _, _ in run.ships) * 1000:.2f}, {mean(w for _, w, _ in run.ships) * 1000:.2f}, "
            f"{mean(b for _, _, b in run.ships) / 1024:,.0f} ({len(run.ships)})"
            if run.ships
            else ""
        )
        per_scrape = ", ".join("" if cpu is None else f"{cpu * 1000:.2f}" for cpu in run.floor_cpu_per_scrape)
        lines.append(
            f"| {run.arrangement} | {_latency(run.polling_new)} | {_latency(run.polling_kept)} "
            f"| {_latency(run.polling_curl)} "
            f"| {_latency(run.floor_new)} | {_latency(run.floor_kept)} | {_latency(run.floor_curl)} "
            f"| {run.load} "
            f"| {run.poll_cpu:.3f} | {per_scrape} "
            f"| {run.polling_wait * 1000:.0f}, {run.floor_wait * 1000:.0f} "
            f"| {run.serving_rss / 2**20:.0f} | {ship} |" + (f" {run.error} |" if run.error else "")
        )
    return "\n".join(lines)


def _latency(times: ScrapeTimes | None) -> str:
    return "" if times is None else f"{times.p50 * 1000:.1f} / {times.p99 * 1000:.1f} ({times.scrapes:,})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arrangements", default=",".join(ARRANGEMENTS), help="comma-separated")
    parser.add_argument(
        "--steady-polls",
        type=int,
        default=18,
        help="polls after the first, a third for each kind of scrape (18)",
    )
    parser.add_argument("--every", type=float, default=3.0, help="seconds from a poll's start to the next's")
    parser.add_argument("--floor-seconds", type=float, default=4.0, help="of each kind of scrape, no poll")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the exporter on CPU 0, the simulated API and the scrapers on CPU 1",
    )
    args = parser.parse_args(argv)
    if args.pin and not {*EXPORTER_CPUS, *OTHERS_CPUS} <= os.sched_getaffinity(0):
        parser.error(f"--pin: needs CPUs {sorted({*EXPORTER_CPUS, *OTHERS_CPUS})}")
    arrangements = [name.strip() for name in args.arrangements.split(",") if name.strip()]
    if not arrangements or set(arrangements) - set(ARRANGEMENTS):
        parser.error(f"--arrangements: of {', '.join(ARRANGEMENTS)}")
    options = Options(
        steady_polls=args.steady_polls,
        reconcile_every=None,
        page_concurrency=None,
        cursor=True,
        churn=0.01,
        active=0.05,
        hammer=True,
        scrape_concurrency=20,
        interval=30.0,
        seed=args.seed,
    )
    started = time.perf_counter()
    runs = []
    context = multiprocessing.get_context("spawn")
    for arrangement in arrangements:
        _progress(f"{arrangement}: 100k tasks, load {_load()}")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(
                run_arrangement, arrangement, options, args.every, args.floor_seconds, args.pin
            )
            runs.append(future.result())
    print(report(runs, options, args.every, args.floor_seconds, time.perf_counter() - started, pin=args.pin))


if __name__ == "__main__":
    main()
