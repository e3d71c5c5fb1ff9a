"""The HTTP server: /metrics, /healthz, /readyz and a small index page, on a threaded WSGI server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.registry import Collector

from exporter.exposition import Exposition
from exporter.webconfig import BasicAuth, WebConfig

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

INDEX = b"""<!doctype html>
<html><head><title>Mixpeek exporter</title></head>
<body><h1>Mixpeek exporter</h1>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
"""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection, so a slow client never holds up another scrape."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when many scrapers arrive at once.
    request_queue_size = 1024


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # A client that stops sending (or never finishes its TLS handshake) frees its thread after this.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would drown the poll logs; Prometheus records scrape failures itself."""


# Probes must work without credentials, and they reveal nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def make_app(
    metrics: Exposition | Collector, ready: Callable[[], bool], auth: BasicAuth | None = None
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """`metrics` is served at /metrics: an Exposition (cached), or any collector, rendered per scrape."""
    exposition = metrics if isinstance(metrics, Exposition) else Exposition(fresh=metrics)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method == "HEAD":
            route(dict(environ, REQUEST_METHOD="GET"), start_response)
            return []
        if method != "GET":
            return _plain(
                start_response, "405 Method Not Allowed", b"method not allowed\n", [("Allow", "GET, HEAD")]
            )
        return route(environ, start_response)

    def route(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if auth is not None and path not in OPEN_PATHS and not auth.allows(environ.get("HTTP_AUTHORIZATION")):
            challenge = [("WWW-Authenticate", 'Basic realm="mixpeek-exporter"')]
            return _plain(start_response, "401 Unauthorized", b"unauthorized\n", challenge)
        if path == "/metrics":
            response = exposition.respond(
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_ACCEPT_ENCODING"),
                environ.get("QUERY_STRING", ""),
            )
            start_response("200 OK", response.headers)
            return response.body
        if path == "/healthz":
            return _plain(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if ready():
                return _plain(start_response, "200 OK", b"ready\n")
            return _plain(
                start_response, "503 Service Unavailable", b"not ready: waiting for a first complete poll\n"
            )
        if path == "/":
            start_response(
                "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(INDEX)))]
            )
            return [INDEX]
        return _plain(start_response, "404 Not Found", b"not found\n")

    return app


def _plain(
    start_response: StartResponse, status: str, body: bytes, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *(extra or []),
    ]
    start_response(status, headers)
    return [body]


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
        server_class = _IPv6Server if ":" in host else _Server
        auth = BasicAuth(web.basic_auth_users) if web and web.basic_auth_users else None
        app = make_app(metrics, ready, auth)
        self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
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
