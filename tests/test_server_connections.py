"""The HTTP server under hostile connection patterns: the connection cap, accept backoff, liveness, stop.

Each test waits on conditions (an answer, an end of file, an event), bounded by generous socket timeouts,
never on a sleep."""

from __future__ import annotations

import contextlib
import errno
import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.typing import EventDict

from exporter.config import ConfigError, load_settings
from exporter.server import BACKOFF_MAX_SECONDS, STOP_SECONDS, MetricsServer
from exporter.webconfig import load_web_config

TIMEOUT = 5.0  # seconds: generous bounds on waits that end at once when the server behaves


@contextlib.contextmanager
def running(**options: Any) -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def healthz(port: int, method: str = "GET") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, "/healthz")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def kept_alive(port: int) -> http.client.HTTPConnection:
    """A connection that has had one answer and now waits, kept alive, for its next request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request("GET", "/healthz")
    assert connection.getresponse().read() == b"ok\n"
    return connection


def settle(server: MetricsServer, waiting: int) -> None:
    """Until `waiting` connections wait for a request: a client has its answer a moment before the server
    files its connection as waiting again."""
    deadline = time.monotonic() + TIMEOUT
    while len(server._server._waiting) < waiting and time.monotonic() < deadline:
        time.sleep(0.001)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed it: end of file (or a reset) before TIMEOUT."""
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def slowloris(port: int, count: int) -> list[socket.socket]:
    """Connections that never finish a request: every other one sends nothing at all."""
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if i % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(sock)
    return sockets


def test_healthz_answers_under_a_slowloris_flood_and_the_longest_waiting_are_closed(
    logs: list[EventDict],
) -> None:
    cap = 8
    with running(max_connections=cap) as server:
        idle = [kept_alive(server.port) for _ in range(cap)]
        settle(server, cap)
        slow = slowloris(server.port, 5 * cap)
        newest = kept_alive(server.port)  # the last to start waiting: the last to go
        assert healthz(server.port) == (200, b"ok\n")
        # 6 * cap + 2 connections for cap places: every kept-alive one waited longer than the flood.
        assert all(closed_by_server(c.sock) for c in idle)
        assert all(closed_by_server(s) for s in slow[: 4 * cap])
        newest.request("GET", "/healthz")
        assert newest.getresponse().read() == b"ok\n"
        for sock in slow:
            sock.close()
        newest.close()
    limits = [e for e in logs if str(e["event"]).startswith("connection limit reached")]
    assert len(limits) == 1
    assert limits[0]["max_connections"] == cap


def test_at_the_cap_with_every_connection_answering_a_new_one_is_closed_at_once() -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def live() -> bool:  # holds each /healthz answer until released
        entered.release()
        return release.wait(TIMEOUT)

    with running(max_connections=2, live=live) as server:
        answers: list[tuple[int, bytes]] = []
        busy = [threading.Thread(target=lambda: answers.append(healthz(server.port))) for _ in range(2)]
        for thread in busy:
            thread.start()
        assert entered.acquire(timeout=TIMEOUT)
        assert entered.acquire(timeout=TIMEOUT)
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as refused:
            assert closed_by_server(refused)  # not queued behind the two slow answers
        release.set()
        for thread in busy:
            thread.join(TIMEOUT)
        assert answers == [(200, b"ok\n")] * 2
        assert healthz(server.port) == (200, b"ok\n")


def test_stop_returns_promptly_and_closes_open_connections() -> None:
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, max_connections=64)
    server.start()
    idle = [kept_alive(server.port) for _ in range(32)]
    slow = slowloris(server.port, 100)
    assert healthz(server.port) == (200, b"ok\n")  # every connection above has been accepted
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < STOP_SECONDS  # real threads and sockets: wall time is the only clock
    # No thread keeps a connection open past the stop (before, idle ones stayed for their 30 s).
    assert all(closed_by_server(c.sock) for c in idle)
    assert all(closed_by_server(s) for s in slow)
    for sock in slow:
        sock.close()


class FlakyAccept:
    """accept() that fails with `error` `failures` times, then works."""

    def __init__(self, error: int, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def __call__(self, listener: socket.socket) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(self.error, "injected")
        return listener.accept()


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_accept_backs_off_when_out_of_resources_then_serves_again(error: int, logs: list[EventDict]) -> None:
    pauses: list[float] = []
    accept = FlakyAccept(error, failures=9)
    with running(accept=accept, pause=pauses.append) as server:
        assert healthz(server.port) == (200, b"ok\n")
    # Growing waits instead of a spin, capped; the pending connection is served once accept works.
    assert pauses == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, BACKOFF_MAX_SECONDS, BACKOFF_MAX_SECONDS]
    assert accept.calls == 10
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [
        ("cannot accept connections, backing off", "warning"),
        ("accepting connections again", "info"),
    ]
    assert errno.errorcode[error] in str(logs[0]["error"])


def test_out_of_descriptors_the_connection_idle_longest_is_closed_to_free_one() -> None:
    class AfterTheFirst(FlakyAccept):
        def __call__(self, listener: socket.socket) -> tuple[socket.socket, Any]:
            self.calls += 1
            if self.calls == 2:
                raise OSError(errno.EMFILE, "injected")
            return listener.accept()

    with running(accept=AfterTheFirst(errno.EMFILE, 0), pause=lambda seconds: None) as server:
        idle = kept_alive(server.port)
        settle(server, 1)
        assert healthz(server.port) == (200, b"ok\n")
        assert closed_by_server(idle.sock)
        idle.close()


def test_a_new_episode_of_accept_failures_starts_the_backoff_again() -> None:
    pauses: list[float] = []

    class TwoEpisodes(FlakyAccept):
        def __call__(self, listener: socket.socket) -> tuple[socket.socket, Any]:
            self.calls += 1
            if self.calls in (1, 2, 4):
                raise OSError(errno.EMFILE, "injected")
            return listener.accept()

    with running(accept=TwoEpisodes(errno.EMFILE, 0), pause=pauses.append) as server:
        assert healthz(server.port) == (200, b"ok\n")
        assert healthz(server.port) == (200, b"ok\n")
    assert pauses == [0.01, 0.02, 0.01]


def test_stop_is_prompt_while_accept_backs_off() -> None:
    attempted = threading.Event()

    def exhausted(listener: socket.socket) -> tuple[socket.socket, Any]:
        attempted.set()
        raise OSError(errno.EMFILE, "injected")

    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, accept=exhausted)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT):
        assert attempted.wait(TIMEOUT)
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < BACKOFF_MAX_SECONDS


def test_healthz_fails_while_not_live() -> None:
    alive = [True]
    with running(live=lambda: alive[0]) as server:
        assert healthz(server.port) == (200, b"ok\n")
        alive[0] = False
        status, body = healthz(server.port)
        assert status == 503
        assert body.endswith(b"\n")
        assert body.count(b"\n") == 1
        assert b"not live" in body
        assert healthz(server.port, "HEAD") == (503, b"")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        connection.request("GET", "/metrics")
        assert connection.getresponse().status == 200  # the last numbers are still served
        connection.close()
        alive[0] = True
        assert healthz(server.port) == (200, b"ok\n")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_connections_that_never_finish_a_tls_handshake_make_room(
    tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = tls_files
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    with running(web=load_web_config(path), max_connections=2) as server:
        stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) for _ in range(6)]
        context = ssl.create_default_context(cafile=cert)
        https = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=TIMEOUT, context=context)
        https.request("GET", "/healthz")
        response = https.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        https.close()
        assert all(closed_by_server(s) for s in stalled[:5])
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("value", ["0", "10001", "many"])
def test_max_connections_out_of_bounds_is_one_clear_line(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXPEEK_MAX_CONNECTIONS", value)
    with pytest.raises(ConfigError, match="MIXPEEK_MAX_CONNECTIONS") as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_max_connections_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXPEEK_DEMO", "true")
    monkeypatch.setenv("MIXPEEK_MAX_CONNECTIONS", "300")
    assert load_settings().max_connections == 300
    monkeypatch.delenv("MIXPEEK_MAX_CONNECTIONS")
    assert load_settings().max_connections == 64
