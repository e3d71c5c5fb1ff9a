"""The HTTP server: /metrics, /healthz, /readyz and a small index page, on a threaded HTTP/1.1 server.

Prometheus keeps its connection to a target open between scrapes, so a scrape here costs a request on a
connection that already has its thread, not a new connection, a new thread and a close.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote

import structlog
from prometheus_client.registry import Collector

from exporter.exposition import Exposition
from exporter.webconfig import BasicAuth, WebConfig

INDEX = b"""<!doctype html>
<html><head><title>Mixpeek exporter</title></head>
<body><h1>Mixpeek exporter</h1>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
"""


class Reply(NamedTuple):
    status: HTTPStatus
    headers: list[tuple[str, str]]
    """Content-Length included: every reply has one, so that the connection can serve the next request."""
    body: list[bytes]


App = Callable[[str, str, Message], Reply]
"""(method, request target, request headers) -> the reply"""


def _plain(status: HTTPStatus, body: bytes, extra: list[tuple[str, str]] | None = None) -> Reply:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return Reply(status, [*headers, *(extra or [])], [body])


# The replies that never change, made once.
HEALTHY = _plain(HTTPStatus.OK, b"ok\n")
READY = _plain(HTTPStatus.OK, b"ready\n")
NOT_READY = _plain(HTTPStatus.SERVICE_UNAVAILABLE, b"not ready: waiting for a first complete poll\n")
NOT_FOUND = _plain(HTTPStatus.NOT_FOUND, b"not found\n")
NOT_ALLOWED = _plain(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", [("Allow", "GET, HEAD")])
UNAUTHORIZED = _plain(
    HTTPStatus.UNAUTHORIZED, b"unauthorized\n", [("WWW-Authenticate", 'Basic realm="mixpeek-exporter"')]
)
SERVER_ERROR = _plain(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal server error\n")
INDEX_PAGE = Reply(
    HTTPStatus.OK,
    [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(INDEX)))],
    [INDEX],
)

_log = structlog.get_logger("exporter.server")

# Probes must work without credentials, and they reveal nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def make_app(
    metrics: Exposition | Collector, ready: Callable[[], bool], auth: BasicAuth | None = None
) -> App:
    """`metrics` is served at /metrics: an Exposition (cached), or any collector, rendered per scrape.

    A HEAD is answered as a GET (the server leaves the body out)."""
    exposition = metrics if isinstance(metrics, Exposition) else Exposition(fresh=metrics)

    def app(method: str, target: str, headers: Message) -> Reply:
        if method not in ("GET", "HEAD"):
            return NOT_ALLOWED
        path, _, query = target.partition("?")
        path = unquote(path, "iso-8859-1")  # as WSGI's PATH_INFO, which this server used to route by
        if auth is not None and path not in OPEN_PATHS and not auth.allows(headers.get("Authorization")):
            return UNAUTHORIZED
        if path == "/metrics":
            response = exposition.respond(headers.get("Accept"), headers.get("Accept-Encoding"), query)
            return Reply(HTTPStatus.OK, response.headers, response.body)
        if path == "/healthz":
            return HEALTHY
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

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False  # http.server has answered
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
        self._send(reply)

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


class _Server(ThreadingHTTPServer):
    """One thread per connection (daemon threads), so a slow client never holds up another scrape."""

    # socketserver's default backlog of 5 drops connections when many scrapers arrive at once.
    request_queue_size = 1024

    def __init__(self, host: str, port: int, app: App) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        super().__init__((host, port), _Handler)

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
        web: WebConfig | None = None,
    ) -> None:
        auth = BasicAuth(web.basic_auth_users) if web and web.basic_auth_users else None
        self._server = _Server(host, port, make_app(metrics, ready, auth))
        context = web.ssl_context() if web else None
        if context is not None:
            # The handshake then runs in the connection's own thread, not in the accepting one.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if context else "http"
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
