"""The HTTP server: routes, readiness, content negotiation and exemplars, over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from structlog.typing import EventDict
from support import Exporter, self_signed_certificate

from exporter import server as server_module
from exporter.config import ConfigError
from exporter.server import INDEX, MetricsServer
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.webconfig import load_web_config

MakeExporter = Callable[..., Exporter]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def exporter(api: SimulatorTestServer, make_exporter: MakeExporter) -> Exporter:
    return make_exporter(api, namespaces=("prod",))


@pytest.fixture
def base_url(exporter: Exporter) -> Iterator[str]:
    server = MetricsServer("127.0.0.1", 0, exporter.served, exporter.poller.ready)
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
        assert index.status_code == 200
        assert 'href="metrics"' in index.text
        assert http.get("/nope").status_code == 404
        assert http.get("/metrics/../../etc/passwd").status_code == 404
        refused = http.post("/metrics", content=b"x")
        assert refused.status_code == 405
        assert refused.headers["Allow"] == "GET, HEAD"
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
    # prometheus_client's OpenMetrics parser has no type annotations.
    families = {f.name: f for f in parse_openmetrics(response.text)}  # type: ignore[no-untyped-call]
    samples = [
        s
        for s in families["mixpeek_task_completion_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["status"] == "FAILED" and s.exemplar is not None
    ]
    assert samples, "no exemplar on the FAILED buckets"
    assert {s.exemplar.labels["task_id"] for s in samples if s.exemplar} == {task_id}
    assert samples[0].labels["le"] == "60.0"
    assert samples[0].exemplar is not None
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


async def test_two_hundred_concurrent_scrapes_while_polls_run(exporter: Exporter) -> None:
    await exporter.poll()
    limits = httpx.Limits(max_connections=200)
    # Room for every connection: past the cap, one that has not sent its request yet may be closed.
    server = MetricsServer("127.0.0.1", 0, exporter.served, exporter.poller.ready, max_connections=200)
    server.start()
    base_url = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        scrapes = [http.get("/metrics") for _ in range(200)]
        results = await asyncio.gather(exporter.poll(), *scrapes, exporter.poll())
    server.stop()
    responses = [r for r in results if isinstance(r, httpx.Response)]
    assert len(responses) == 200
    assert all(r.status_code == 200 and "mixpeek_up" in r.text for r in responses)


def test_a_stalled_client_does_not_block_others(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as stalled:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never finishes the request
        with httpx.Client(base_url=base_url, timeout=5) as http:
            assert http.get("/metrics").status_code == 200


HOSTILE = [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 405),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
]
HOSTILE_IDS = ["long-path", "huge-header", "many-headers", "odd-method", "not-http"]


@contextlib.contextmanager
def connect(base_url: str) -> Iterator[http.client.HTTPConnection]:
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.connect()
        yield connection
    finally:
        connection.close()


def get(connection: http.client.HTTPConnection, path: str, method: str = "GET") -> http.client.HTTPResponse:
    connection.request(method, path)
    response = connection.getresponse()
    response.read()
    return response


def test_a_connection_is_kept_alive_between_requests(base_url: str) -> None:
    with connect(base_url) as connection:
        kept = connection.sock
        for path, body in (("/healthz", b"ok\n"), ("/", INDEX), ("/healthz", b"ok\n")):
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == body
            assert response.version == 11
            assert not response.will_close
        assert get(connection, "/metrics").status == 200
        assert connection.sock is kept  # http.client reconnects, on a new socket, after a close


@pytest.mark.parametrize(
    ("request_bytes", "answers", "last_body"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 2, b"ok\n"),
        (b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", 1, b"ok\n"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 25\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            1,
            b"method not allowed\n",
        ),
    ],
    ids=["connection-close", "http-1.0", "request-body"],
)
def test_the_server_closes_when_asked_or_when_it_must(
    base_url: str, request_bytes: bytes, answers: int, last_body: bytes
) -> None:
    """After `Connection: close`, after an HTTP/1.0 request, after a request whose body it did not read
    (the next request would start with it): the answer ends with `Connection: close`, then the close."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(request_bytes)
        answer = b"".join(iter(lambda: raw.recv(65536), b""))  # until the server closes
    assert answer.count(b"HTTP/1.1 ") == answers
    assert answer.endswith(b"Connection: close\r\n\r\n" + last_body)


def test_an_idle_kept_alive_connection_does_not_block_others(base_url: str) -> None:
    with connect(base_url) as idle, connect(base_url) as other:
        assert get(idle, "/healthz").status == 200  # its thread now waits for a next request
        assert get(other, "/healthz").status == 200
        with httpx.Client(base_url=base_url, timeout=5) as http:
            assert http.get("/metrics").status_code == 200
        assert get(idle, "/healthz").status == 200


def test_an_idle_connection_is_closed_after_the_timeout(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module._Handler, "timeout", 0.2)  # 30 s in service
    with connect(base_url) as idle:
        assert get(idle, "/healthz").status == 200
        assert idle.sock.recv(1) == b""  # closed by the server, well before this socket's own 10 s


@pytest.mark.parametrize(("request_bytes", "status"), HOSTILE, ids=HOSTILE_IDS)
def test_limits_hold_on_a_kept_alive_connection(base_url: str, request_bytes: bytes, status: int) -> None:
    with connect(base_url) as connection:
        assert get(connection, "/healthz").status == 200
        connection.sock.sendall(request_bytes)
        answer = connection.sock.recv(4096)
    assert str(status).encode() in answer[:16] or f"Error code: {status}".encode() in answer, answer[:80]


def test_head_on_a_kept_alive_connection_has_a_length_and_no_body(base_url: str) -> None:
    with connect(base_url) as connection:
        index = get(connection, "/", method="HEAD")
        assert index.status == 200
        assert index.headers["Content-Length"] == str(len(INDEX))
        metrics = get(connection, "/metrics", method="HEAD")
        assert metrics.status == 200
        assert int(metrics.headers["Content-Length"]) > 0
        # Had a body followed either HEAD, it would be read here as the next response.
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b"ok\n"


@pytest.mark.parametrize(("request_bytes", "status"), HOSTILE, ids=HOSTILE_IDS)
def test_hostile_requests_get_a_4xx_and_no_trace(
    base_url: str, request_bytes: bytes, status: int, capfd: pytest.CaptureFixture[str]
) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(request_bytes)
        answer = raw.recv(4096)
    # A request that is not HTTP/1.x gets an HTTP/0.9-style answer: the error page without a status line.
    assert str(status).encode() in answer[:16] or f"Error code: {status}".encode() in answer, answer[:80]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def web_config(path: Path, cert: Path, key: Path) -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}
    path.write_text(yaml.safe_dump({**config, "basic_auth_users": {"prometheus": hashed}}))
    return path


def test_tls_and_basic_auth(exporter: Exporter, tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files
    web = load_web_config(web_config(tmp_path / "web.yml", cert, key))
    server = MetricsServer("127.0.0.1", 0, exporter.served, exporter.poller.ready, web)
    server.start()
    try:
        url = f"https://127.0.0.1:{server.port}"
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=cert)) as https:
            assert https.get("/metrics").status_code == 401
            assert https.get("/metrics").headers["WWW-Authenticate"].startswith("Basic")
            assert https.get("/metrics", auth=("prometheus", "wrong")).status_code == 401
            assert https.get("/metrics", auth=("prometheus", "s3cret")).status_code == 200
            assert https.get("/metrics", auth=("prometheus", "s3cret")).status_code == 200  # cached
            assert https.get("/healthz").status_code == 200  # probes need no credentials
        with pytest.raises(httpx.HTTPError), httpx.Client() as plain:
            plain.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("tls_server_config: [", "not YAML"),
        ("basic_auth_users:\n  bob: plaintext\n", "not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n", "TLS files unusable"),
        ("unknown_key: 1\n", "unknown_key"),
    ],
)
def test_bad_web_config_is_one_clear_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_web_config(path)
    assert "\n" not in str(caught.value)
    assert "MIXPEEK_WEB_CONFIG_FILE" in str(caught.value)


def test_a_failing_collector_gives_a_500_and_one_log_line(logs: list[EventDict]) -> None:
    """A bug in rendering is the exporter's: the scraper gets a plain 500, the log one line, no traceback."""

    class Broken:
        def collect(self) -> Iterator[Metric]:
            raise RuntimeError("boom")

    server = MetricsServer("127.0.0.1", 0, Broken(), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
            failed = http.get("/metrics")
            after = http.get("/healthz")
    finally:
        server.stop()
    assert (failed.status_code, failed.text) == (500, "internal server error\n")
    assert "Traceback" not in failed.text
    assert after.status_code == 200
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["error"]) for e in errors] == [("request failed", "RuntimeError: boom")]
