"""The cached exposition: the same bytes as a fresh render, made once per snapshot and part, in every
format and encoding; the fresh collectors, the `name[]` filter and the HTTP headers around it."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import threading
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import httpx
import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.registry import Collector
from support import Exporter

from exporter.exposition import MAX_FORMATS, Exposition
from exporter.metrics import Family, Layout, Part, Row, Snapshot, SnapshotCollector, keep_all
from exporter.server import MetricsServer
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

MakeExporter = Callable[..., Exporter]


def generate_openmetrics(registry: Collector) -> bytes:
    """prometheus_client's OpenMetrics rendering (typed here: that module has no annotations)."""
    rendered: bytes = openmetrics_exposition.generate_latest(registry)  # type: ignore[no-untyped-call]
    return rendered


FORMATS: dict[str, tuple[str | None, Callable[[Collector], bytes]]] = {
    "text": (None, generate_latest),
    "openmetrics": (OPENMETRICS, generate_openmetrics),
}


class CountingCollector(SnapshotCollector):
    """Counts the layouts made and, per (family, namespace), the rows asked of the snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__(snapshot, "test")
        self.layouts = 0
        self.rows: Counter[tuple[str, str]] = Counter()

    def layout(self, snapshot: Snapshot, size: Callable[[Family, Part], int]) -> Layout:
        self.layouts += 1
        return super().layout(snapshot, size)

    def families(self, snapshot: Snapshot) -> list[Family]:
        return [
            Family(f.name, f.kind, f.labels, tuple(self._count_rows(f, p) for p in f.parts))
            for f in super().families(snapshot)
        ]

    def _count_rows(self, family: Family, part: Part) -> Part:
        def rows() -> Sequence[Row]:
            self.rows[(family.name, part.namespace)] += 1
            return part.rows()

        return Part(part.namespace, part.source, rows)


@pytest.fixture
async def lively(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> Exporter:
    """Two namespaces with tasks in several statuses and types, finished ones with exemplars, batches."""
    exporter = make_exporter(api, namespaces=("prod", "staging"), batches=True)
    ids = [
        world.create_task(namespace, kind, status="PROCESSING")
        for namespace in ("prod", "staging")
        for kind in ("thumbnail", "engine_cluster_build", "api_taxonomies_execute")
    ]
    world.create_task("prod", "thumbnail", status="PENDING")
    batch = world.create_batch("prod", status="PROCESSING")
    await exporter.poll()
    clock.advance(75)
    world.set_status(ids[0], "FAILED")
    world.set_status(ids[4], "COMPLETED")
    world.set_batch_status(batch, "FAILED", failed_objects=3, failure_category="timeout")
    await exporter.poll()
    return exporter


def body(exposition: Exposition, accept: str | None = None, encoding: str | None = None) -> bytes:
    response = exposition.respond(accept, encoding)
    data = b"".join(response.body)
    headers = dict(response.headers)
    assert int(headers["Content-Length"]) == len(data)
    if encoding == "gzip":
        assert headers["Content-Encoding"] == "gzip"
        return gzip.decompress(data)
    assert "Content-Encoding" not in headers
    return data


@pytest.mark.parametrize("encoding", [None, "gzip"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_cached_body_is_a_fresh_render(lively: Exporter, fmt: str, encoding: str | None) -> None:
    accept, encoder = FORMATS[fmt]
    fresh = encoder(lively.registry)
    assert b"mixpeek_task_completion_seconds_bucket" in fresh
    if fmt == "openmetrics":
        assert b'# {task_id="' in fresh  # exemplars, kept in the cached text too
    for _ in range(3):  # the first renders, the next ones serve what was kept
        assert body(lively.served, accept, encoding) == fresh


def test_both_formats_say_what_they_are(lively: Exporter) -> None:
    text = dict(lively.served.respond(None, None).headers)
    openmetrics = dict(lively.served.respond(OPENMETRICS, "gzip, deflate").headers)
    assert text["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert openmetrics["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert text["Vary"] == openmetrics["Vary"] == "Accept, Accept-Encoding"


def test_gzip_is_one_member_that_single_member_decoders_read_whole(lively: Exporter) -> None:
    """The parts' deflate streams are joined into one gzip member: a decoder that stops at the end of
    the first member (zlib's, as httpx uses) must still get everything."""
    for accept, encoder in FORMATS.values():
        zipped = b"".join(lively.served.respond(accept, "gzip").body)
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert decoder.decompress(zipped) == encoder(lively.registry)
        assert decoder.eof
        assert not decoder.unused_data


async def test_a_new_snapshot_gives_a_new_body_rendering_only_what_changed(
    clock: FakeClock, world: World, lively: Exporter
) -> None:
    collector = CountingCollector(lambda: lively.poller.snapshot)
    served = Exposition(collector)
    before = body(served)
    world.create_task("staging", "thumbnail", status="QUEUED")
    clock.advance(30)
    collector.rows.clear()
    await lively.poller.poll_namespace("staging")
    after = body(served)
    assert after != before
    assert after == generate_latest(lively.registry)
    assert b'mixpeek_tasks{mixpeek_namespace="staging",status="QUEUED",task_type="thumbnail"} 1.0' in after
    redone = {namespace for _, namespace in collector.rows}
    assert "staging" in redone
    assert "prod" not in redone  # prod's state and health are the same objects


def test_many_scrapes_of_one_snapshot_lay_it_out_once(lively: Exporter) -> None:
    collector = CountingCollector(lambda: lively.poller.snapshot)
    served = Exposition(collector)
    for _ in range(50):
        served.respond(None, None)
        served.respond(None, "gzip")
    assert collector.layouts == 1
    assert set(collector.rows.values()) == {1}  # each part's rows made once
    parts = sum(collector.rows.values())
    for _ in range(50):
        served.respond(OPENMETRICS, None)
    # A layout is let go once its text is made (it reaches the namespaces' states): a second format lays
    # the snapshot out once more, and makes each part's rows once more, then keeps its text.
    assert collector.layouts == 2
    assert sum(collector.rows.values()) == 2 * parts


async def test_the_cache_does_not_keep_a_replaced_state_alive(lively: Exporter) -> None:
    """A namespace's state holds its whole task table: once polls have replaced it, the cached text of an
    earlier scrape must not keep it in memory until the next scrape."""
    served = Exposition(SnapshotCollector(lambda: lively.poller.snapshot, "test", keep_all))
    served.respond(None, "gzip")
    scraped = weakref.ref(lively.poller.snapshot.namespaces["prod"])
    await lively.poll()
    await lively.poll()
    gc.collect()
    assert scraped() is None
    assert b"mixpeek_tasks" in b"".join(served.respond(None, None).body)


def test_concurrent_scrapes_of_a_new_snapshot_render_it_once(lively: Exporter) -> None:
    collector = CountingCollector(lambda: lively.poller.snapshot)
    served = Exposition(collector)
    start = threading.Barrier(20)
    bodies: list[bytes] = []

    def scrape() -> None:
        start.wait()
        bodies.append(b"".join(served.respond(None, None).body))

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert collector.layouts == 1
    assert set(collector.rows.values()) == {1}
    assert len(bodies) == 20
    assert len(set(bodies)) == 1


class Ticks:
    """A collector whose value changes at every collect, as the process collector's CPU time does."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        ticks = CounterMetricFamily("test_ticks", "Collections so far.")
        ticks.add_metric((), self.calls)
        yield ticks


def test_fresh_collectors_are_collected_at_every_scrape_after_the_cached_text(lively: Exporter) -> None:
    fresh = CollectorRegistry()
    ticks = Ticks()
    fresh.register(ticks)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=fresh)
    served = Exposition(SnapshotCollector(lambda: lively.poller.snapshot, "test"), fresh)
    for n in (1, 2, 3):
        text = body(served, OPENMETRICS, "gzip").decode()
        assert f"test_ticks_total {n}.0\n" in text
        assert text.count("# EOF") == 1
        assert text.endswith("# EOF\n")
        assert "python_info" in text
        assert "python_gc_objects_collected" in text
        assert text.index("mixpeek_exporter_build_info") < text.index("test_ticks")
    plain = body(served)
    assert b"test_ticks_total 4.0\n" in plain
    assert b"# EOF" not in plain


def test_a_collector_alone_is_rendered_at_every_scrape(lively: Exporter) -> None:
    served = Exposition(fresh=lively.registry)
    assert body(served, OPENMETRICS) == generate_openmetrics(lively.registry)


def test_name_filter_renders_the_samples_named(lively: Exporter) -> None:
    response = lively.served.respond(None, None, "name[]=mixpeek_up&name[]=mixpeek_tasks_total")
    text = b"".join(response.body).decode()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'mixpeek_up{mixpeek_namespace="prod"} 1.0',
        'mixpeek_up{mixpeek_namespace="staging"} 1.0',
    ]
    assert body(lively.served) == generate_latest(lively.registry)  # the filter left the cache alone


def test_formats_past_the_limit_are_rendered_uncached_and_right(lively: Exporter) -> None:
    for minor in range(MAX_FORMATS + 2):
        accept = f"application/openmetrics-text; version=1.{minor}.0"
        response = lively.served.respond(accept, None)
        assert dict(response.headers)["Content-Type"].startswith(
            f"application/openmetrics-text; version=1.{minor}.0"
        )
        assert b"".join(response.body) == generate_openmetrics(lively.registry)


def test_over_http_head_and_headers(lively: Exporter) -> None:
    server = MetricsServer("127.0.0.1", 0, lively.served, lively.poller.ready)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
            got = http.get("/metrics", headers={"Accept": OPENMETRICS})
            head = http.head("/metrics", headers={"Accept": OPENMETRICS})
    finally:
        server.stop()
    assert got.content == generate_openmetrics(lively.registry)  # httpx undid the gzip it asked for
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Vary"] == "Accept, Accept-Encoding"
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == got.headers["Content-Length"]


class Gated(SnapshotCollector):
    """Holds layouts while the gate is shut, so that a test can scrape while a render is under way."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__(snapshot, "test")
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def layout(self, snapshot: Snapshot, size: Callable[[Family, Part], int]) -> Layout:
        self.entered.release()
        assert self.gate.wait(timeout=10)
        return super().layout(snapshot, size)


def wait_for(condition: Callable[[], bool]) -> None:
    """A background render finishes soon after its layout is let through; 10 s bounds a stuck one."""
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the background render did not finish")


async def test_started_it_renders_after_each_publish_and_a_scrape_never_waits(
    clock: FakeClock, world: World, lively: Exporter
) -> None:
    collector = Gated(lambda: lively.poller.snapshot)
    served = Exposition(collector)
    lively.poller.on_publish(served.changed)
    served.start()
    try:
        assert collector.entered.acquire(timeout=10)  # the first render, of the snapshot at start
        collector.gate.set()
        before = generate_latest(lively.registry)
        wait_for(lambda: body(served) == before)
        before_openmetrics = body(served, OPENMETRICS, "gzip")
        collector.gate.clear()
        world.create_task("staging", "thumbnail", status="QUEUED")
        clock.advance(30)
        await lively.poller.poll_namespace("staging")
        assert collector.entered.acquire(timeout=10)  # the publish woke the renderer; it is held
        # Scrapes meanwhile get the last complete bytes at once, in both formats and encodings.
        assert body(served) == body(served, None, "gzip") == before
        assert body(served, OPENMETRICS, "gzip") == before_openmetrics
        assert not served.serves(lively.poller.snapshot)  # /readyz waits for this (cli._latched)
        collector.gate.set()
        after = generate_latest(lively.registry)
        assert after != before
        wait_for(lambda: body(served) == after)
        assert served.serves(lively.poller.snapshot)
        assert body(served, None, "gzip") == after
        assert (
            b'mixpeek_tasks{mixpeek_namespace="staging",status="QUEUED",task_type="thumbnail"} 1.0' in after
        )
    finally:
        collector.gate.set()
        served.stop()


def test_a_failed_background_render_is_reported_and_the_last_bytes_stay(lively: Exporter) -> None:
    broken = threading.Event()

    class Failing(SnapshotCollector):
        def layout(self, snapshot: Snapshot, size: Callable[[Family, Part], int]) -> Layout:
            if broken.is_set():
                raise RuntimeError("render bug")
            return super().layout(snapshot, size)

    served = Exposition(Failing(lambda: lively.poller.snapshot, "test"))
    errors: list[BaseException] = []
    served.start(errors.append)
    try:
        expected = generate_latest(lively.registry)
        wait_for(lambda: body(served) == expected)
        broken.set()
        lively.poller.snapshot = dataclasses.replace(lively.poller.snapshot)
        served.changed()
        wait_for(lambda: bool(errors))
        assert [str(e) for e in errors] == ["render bug"]
        assert body(served) == expected
    finally:
        served.stop()
