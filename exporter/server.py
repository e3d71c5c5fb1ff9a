"""The HTTP server: /metrics, /healthz, /readyz and a small index page, on a threaded HTTP/1.1 server.

Prometheus keeps its connection to a target open between scrapes, so a scrape here costs a request on a
connection that already has its thread, not a new connection, a new thread and a close.

Connections are capped (a thread each): at the cap, the connection that has waited longest for a request
(kept alive, or one that never finished its request: slowloris) is closed to make room, so that a flood of
slow clients cannot starve the kubelet's /healthz. Accept backs off when the process is out of file
descriptors or memory instead of spinning.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

import structlog
from prometheus_client.registry import Collector

from exporter.exposition import Chunk, Exposition
from exporter.webconfig import WebConfig
from exporter.webreload import Accept, LiveWebConfig

INDEX = b"""<!doctype html>
<html><head><title>Mixpeek exporter</title></head>
<body><h1>Mixpeek exporter</h1>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
"""


# serve_forever checks for a stop request this often: stop() returns within 50 ms instead of socketserver's
# default 0.5 s, and 20 idle wake-ups a second cost nothing measurable.
SHUTDOWN_POLL_SECONDS = 0.05
# stop() returns within this (serve_forever's next check, then closing the open connections): the HTTP
# server's share of cli.SHUTDOWN_SECONDS.
STOP_SECONDS = 0.5


class Reply(NamedTuple):
    status: HTTPStatus
    headers: list[tuple[str, str]]
    """Content-Length included: every reply has one, so that the connection can serve the next request."""
    body: list[Chunk]


App = Callable[[str, str, Message], Reply]
"""(method, request target, request headers) -> the reply"""


def _plain(status: HTTPStatus, body: bytes, extra: list[tuple[str, str]] | None = None) -> Reply:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return Reply(status, [*headers, *(extra or [])], [body])


# The replies that never change, made once.
HEALTHY = _plain(HTTPStatus.OK, b"ok\n")
NOT_LIVE = _plain(HTTPStatus.SERVICE_UNAVAILABLE, b"not live: the exporter has stopped polling\n")
READY = _plain(HTTPStatus.OK, b"ready\n")
NOT_READY = _plain(HTTPStatus.SERVICE_UNAVAILABLE, b"not ready: waiting for a first complete poll\n")
NOT_FOUND = _plain(HTTPStatus.NOT_FOUND, b"not found\n")
NOT_ALLOWED = _plain(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", [("Allow", "GET, HEAD")])
UNAUTHORIZED = _plain(
    HTTPStatus.UNAUTHORIZED, b"unauthorized\n", [("WWW-Authenticate", 'Basic realm="mixpeek-exporter"')]
)
TOO_MANY = _plain(HTTPStatus.TOO_MANY_REQUESTS, b"too many requests\n")
SERVER_ERROR = _plain(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal server error\n")
INDEX_PAGE = Reply(
    HTTPStatus.OK,
    [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(INDEX)))],
    [INDEX],
)

_log = structlog.get_logger("exporter.server")

# Probes must work without credentials, and they reveal nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _always() -> bool:
    return True


class Guard(Protocol):
    def refusal(self, authorization: str | None) -> HTTPStatus | None:
        """401 or 429 for a request to a protected path, or None to answer it."""


def make_app(
    metrics: Exposition | Collector,
    ready: Callable[[], bool],
    guard: Guard | None = None,
    live: Callable[[], bool] = _always,
    on_error: Callable[[BaseException], object] | None = None,
) -> App:
    """`metrics` is served at /metrics: an Exposition (cached), or any collector, rendered per scrape.

    /healthz fails while `live()` is false, so that Kubernetes restarts a process that will not recover.
    A HEAD is answered as a GET (the server leaves the body out)."""
    exposition = metrics if isinstance(metrics, Exposition) else Exposition(fresh=metrics)

    def app(method: str, target: str, headers: Message) -> Reply:
        if method not in ("GET", "HEAD"):
            return NOT_ALLOWED
        path, _, query = target.partition("?")
        path = unquote(path, "iso-8859-1")  # as WSGI's PATH_INFO, which this server used to route by
        if guard is not None and path not in OPEN_PATHS:
            refused = guard.refusal(headers.get("Authorization"))
            if refused is not None:
                return UNAUTHORIZED if refused is HTTPStatus.UNAUTHORIZED else TOO_MANY
        if path == "/metrics":
            try:
                response = exposition.respond(headers.get("Accept"), headers.get("Accept-Encoding"), query)
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)  # counted with the poll loops' unexpected errors
                raise
            return Reply(HTTPStatus.OK, response.headers, response.body)
        if path == "/healthz":
            return HEALTHY if live() else NOT_LIVE
        if path == "/readyz":
            return READY if ready() else NOT_READY
        if path == "/":
            return INDEX_PAGE
        return NOT_FOUND

    return app


class _Handler(BaseHTTPRequestHandler):
    """Requests of one connection, one after another, until the client closes it or goes quiet.

    http.server answers what is not HTTP (400), a request line over 64 KiB (414) and headers over 64 KiB
    or more than 100 of them (431), and closes the connection after each of those."""

    protocol_version = "HTTP/1.1"
    # An idle kept-alive connection, a client that stops sending or one that never finishes its TLS
    # handshake frees its thread after this.
    timeout = 30
    # A reply is buffered and sent in one write (a large body in its own), flushed by _send. Nagle's
    # algorithm would hold a write back until the client's delayed ACK of the one before (up to 40 ms).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def handle(self) -> None:
        if self.server.admit(self.connection):  # client_allowed_sans, checked once per connection
            super().handle()

    def send_response(self, code: int, message: str | None = None) -> None:
        """Every response, http.server's own errors too, carries the web config's extra headers."""
        super().send_response(code, message)
        for name, value in self.server.extra_headers():
            self.send_header(name, value)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False  # http.server has answered
        if not self.server.begin(self.connection):
            self.close_connection = True  # closed to make room while its request came in
            return False
        if self.command in ("GET", "HEAD"):
            return True  # on to do_GET or do_HEAD
        self.do_GET()  # the app's 405 (with Allow), where http.server would answer 501
        return False

    def do_GET(self) -> None:
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            # Its body is not read, so the next request would start with it: this one is the last.
            self.close_connection = True
        try:
            reply = self.server.app(self.command, self.path, self.headers)
        except Exception as exc:  # a bug of ours: one log line and a 500, never a traceback to anyone
            _log.error("request failed", path=self.path[:200], error=f"{type(exc).__name__}: {exc}")
            self.close_connection = True
            reply = SERVER_ERROR
        try:
            self._send(reply)
        finally:
            self.server.end(self.connection)

    do_HEAD = do_GET

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")  # it asked for it; HTTP/1.1 is kept alive by default
        self.end_headers()
        if self.command != "HEAD":
            for chunk in reply.body:
                self.wfile.write(chunk)
        self.wfile.flush()  # now: the 405 of parse_request is not followed by http.server's flush

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would drown the poll logs; Prometheus records scrape failures itself."""


# accept() errors that say the process or the system is out of something: retrying at once would spin.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BACKOFF_FIRST_SECONDS = 0.01
BACKOFF_MAX_SECONDS = 1.0


def _accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    return listener.accept()


def _shut(connection: socket.socket) -> None:
    """Wake the connection's thread (its read returns end of file) so that it closes the connection.

    The plain socket's shutdown, also for TLS: SSLSocket.shutdown would change the TLS object under the
    thread that reads it."""
    with contextlib.suppress(OSError):  # the client has gone already
        socket.socket.shutdown(connection, socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    """One thread per connection (daemon threads), so a slow client never holds up another scrape.

    At most `max_connections` connections are open. Each one either waits for a request (from its
    accept, or since its last reply) or answers one; only a waiting one is closed to make room, the one
    that has waited longest first. With every connection answering, a new one is closed at once: the
    client may retry, where a queued connection would wait behind the slowest reply."""

    # socketserver's default backlog of 5 drops connections when many scrapers arrive at once.
    request_queue_size = 1024

    def __init__(
        self,
        host: str,
        port: int,
        app: App,
        max_connections: int,
        *,
        accept: Accept = _accept,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.admit: Callable[[socket.socket], bool] = lambda connection: True
        self.extra_headers: Callable[[], Sequence[tuple[str, str]]] = tuple
        self.max_connections = max_connections
        self._accept = accept
        self._stopping = threading.Event()
        # Stop wakes a default pause: a server out of file descriptors still stops at once.
        self._pause = pause or self._stopping.wait
        self._backoff = 0.0
        self._lock = threading.Lock()
        self._waiting: OrderedDict[socket.socket, None] = OrderedDict()  # longest waiting first
        self._answering: set[socket.socket] = set()
        self._at_cap = False
        super().__init__((host, port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            connection, address = self._accept(self.socket)
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                self._back_off(exc)
            raise  # socketserver drops the attempt and selects again
        if self._backoff:
            _log.info("accepting connections again")
            self._backoff = 0.0
        return connection, address

    def _back_off(self, exc: OSError) -> None:
        """The pending connection stays queued in the kernel; wait a growing while before trying again.

        Each failure also closes the connection that has waited longest for a request: when idle clients
        hold the descriptors, that frees one for the next accept."""
        with self._lock:
            if self._waiting:
                _shut(self._waiting.popitem(last=False)[0])
        if not self._backoff:
            _log.warning(
                "cannot accept connections, backing off",
                error=f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}",
            )
            self._backoff = BACKOFF_FIRST_SECONDS
        else:
            self._backoff = min(2 * self._backoff, BACKOFF_MAX_SECONDS)
        self._pause(self._backoff)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Make room for the new connection, or refuse it (socketserver then closes it)."""
        with self._lock:
            open_ = len(self._waiting) + len(self._answering)
            if open_ >= self.max_connections and self._waiting:
                oldest, _ = self._waiting.popitem(last=False)
                _shut(oldest)  # still open: a connection leaves the registry before it is closed
                open_ -= 1
            accepted = open_ < self.max_connections
            if accepted:
                self._waiting[request] = None
            # One warning per flood: it ends once at most half the places are taken.
            was_at_cap = self._at_cap
            if open_ + 1 >= self.max_connections:
                self._at_cap = True
            elif open_ < self.max_connections // 2:
                self._at_cap = False
            at_cap = self._at_cap
        if at_cap and not was_at_cap:
            _log.warning(
                "connection limit reached: closing connections that wait for a request to make room",
                max_connections=self.max_connections,
            )
        elif was_at_cap and not at_cap:
            _log.info("below the connection limit again", max_connections=self.max_connections)
        return accepted

    def begin(self, connection: socket.socket) -> bool:
        """The connection has sent a whole request: it may no longer be closed to make room.

        False when it was closed to make room already."""
        with self._lock:
            if connection not in self._waiting:
                return False
            del self._waiting[connection]
            self._answering.add(connection)
            return True

    def end(self, connection: socket.socket) -> None:
        """The reply is sent: the connection waits for its next request, the newest of the waiting."""
        with self._lock:
            if connection in self._answering:
                self._answering.remove(connection)
                self._waiting[connection] = None

    def close_request(self, request: Any) -> None:
        with self._lock:
            self._waiting.pop(request, None)
            self._answering.discard(request)
        request.close()

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()

    def close_connections(self) -> None:
        """Wake every connection's thread, which then closes it: a stop does not wait for idle clients."""
        with self._lock:
            for connection in (*self._waiting, *self._answering):
                _shut(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (reset, broken pipe) or failed its TLS handshake is no error of ours.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class MetricsServer:
    """Serves the app in a background thread; `port` is the bound one (useful with port 0).

    Give it an Exposition of the SnapshotCollector: a registry (any collector) works too, but is
    rendered whole at every scrape."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Exposition | Collector,
        ready: Callable[[], bool],
        web: LiveWebConfig | WebConfig | None = None,
        *,
        live: Callable[[], bool] = _always,
        on_error: Callable[[BaseException], object] | None = None,
        max_connections: int = 64,
        accept: Accept = _accept,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        """`web`: TLS, basic auth, headers, rate limit; a WebConfig is never reloaded, a LiveWebConfig is
        when its files change. `live`: false makes /healthz answer 503; `on_error` hears of a /metrics
        render that failed.
        `accept` and `pause` (seconds; default: a wait that stop ends) are the accept loop's calls, for
        tests."""
        web = LiveWebConfig(web) if isinstance(web, WebConfig) else web
        app = make_app(metrics, ready, web, live, on_error)
        if web is not None and web.tls:
            accept = web.accepting(accept)
        self._server = _Server(host, port, app, max_connections, accept=accept, pause=pause)
        if web is not None:
            self._server.admit = web.admits
            self._server.extra_headers = web.headers
        self.scheme = "https" if web is not None and web.tls else "http"
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="metrics-http",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
