"""The HTTP server: routes, readiness, content negotiation and exemplars, over a real socket."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from support import Exporter

from exporter.server import MetricsServer
from exporter.simulator import FakeClock, SimulatorServer, World

MakeExporter = Callable[..., Exporter]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def exporter(api: SimulatorServer, make_exporter: MakeExporter) -> Exporter:
    return make_exporter(api, namespaces=("prod",))


@pytest.fixture
def base_url(exporter: Exporter) -> Iterator[str]:
    server = MetricsServer("127.0.0.1", 0, exporter.registry, exporter.poller.ready)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


async def test_readyz_turns_ready_after_the_first_complete_poll(exporter: Exporter, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 503
        await exporter.poll()
        assert (await http.get("/readyz")).status_code == 200


def test_routes_and_methods(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as http:
        index = http.get("/")
        assert index.status_code == 200 and 'href="metrics"' in index.text
        assert http.get("/nope").status_code == 404
        assert http.get("/metrics/../../etc/passwd").status_code == 404
        refused = http.post("/metrics", content=b"x")
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
        assert http.delete("/").status_code == 405
        assert http.head("/metrics").status_code == 200


async def test_openmetrics_buckets_carry_task_exemplars(
    clock: FakeClock, world: World, exporter: Exporter, base_url: str
) -> None:
    task_id = world.create_task("prod", "thumbnail", status="PROCESSING")
    await exporter.poll()
    clock.advance(42)
    world.set_status(task_id, "FAILED")
    await exporter.poll()
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(response.text)}
    samples = [
        s
        for s in families["mixpeek_task_completion_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["status"] == "FAILED" and s.exemplar is not None
    ]
    assert samples, "no exemplar on the FAILED buckets"
    assert {s.exemplar.labels["task_id"] for s in samples if s.exemplar} == {task_id}
    assert samples[0].labels["le"] == "60.0" and samples[0].exemplar is not None
    assert samples[0].exemplar.value == 42.0


def test_plain_text_and_gzip(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as http:
        plain = http.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "mixpeek_exporter_build_info" in plain.text
        with http.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as zipped:
            assert zipped.headers["Content-Encoding"] == "gzip"
            body = gzip.decompress(b"".join(zipped.iter_raw()))
        assert b"mixpeek_exporter_build_info" in body
