"""The fake Mixpeek API as a real HTTP server on a loopback port, for the demo mode and, extended, for tests.

Stdlib `ThreadingHTTPServer` with daemon threads and keep-alive: a client exercises its real HTTP stack
(connection reuse, headers, status codes) while the test thread drives the World. This server answers with
the routes and nothing else; the tests' server (`testing.SimulatorTestServer`) overrides `answer` to record
requests and inject faults, so none of that machinery runs in the demo.
"""

import gzip
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

from .errors import ApiError
from .profile import DOCUMENTED, ApiProfile
from .routes import Request, Response, Routes
from .world import World

DEFAULT_API_KEY: Final = "sk_test_simulator"
# Bodies from this size on are gzipped for a client that accepts it, as a real API's edge does. Level 1:
# the level changes what the simulator spends (on the exporter's cores), hardly what the client inflates.
GZIP_FROM_BYTES: Final = 1024
GZIP_LEVEL: Final = 1


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send as the response."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, response: Response) -> "Reply":
        payload = json.dumps(response.payload, separators=(",", ":")).encode()
        return cls(response.status, payload, response.headers)


class SimulatorServer:
    """Serves a World over HTTP; bound at construction (so `url` is known), serving after `start()`."""

    def __init__(
        self,
        world: World,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cursor_pagination: bool = True,
        profile: ApiProfile = DOCUMENTED,
    ) -> None:
        """Configure the API's variants.

        `cursor_pagination=False` models the older API (offset paging, older pagination fields); `profile`
        answers the questions the documentation leaves open (see profile.py), by default as documented:
        task payloads without timestamps, namespace ids on batch tasks only.
        """
        self.routes = Routes(world, api_key, cursor_pagination=cursor_pagination, profile=profile)
        self.api_key = api_key
        self.profile = profile
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, request: Request, handler: "RequestHandler") -> None:
        """Send the routes' answer to one request (called from the request's thread)."""
        handler.send(Reply.json(self.routes.handle(request)))

    def start(self) -> None:
        """Serve in a background daemon thread."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("a SimulatorServer starts once")
        # stop() waits up to one poll interval; a 10 ms select loop costs nothing measurable when idle.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="mixpeek-simulator",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice or without start()."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: SimulatorServer) -> None:
        super().__init__(address, RequestHandler)
        self.simulator = simulator


class RequestHandler(BaseHTTPRequestHandler):
    """One connection's requests: each is read into a `Request` and answered by `SimulatorServer.answer`."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect from the real API
    timeout = 60  # idle keep-alive connections end instead of holding a thread forever
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # No route takes PUT, PATCH or DELETE: they are read so that a wrong method gets the API's 405 (with
    # Allow), not http.server's 501.
    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo and the tests do not want a line per request on stderr."""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length", "0")
        raw_body = self.rfile.read(int(length)) if length.isdigit() else b""
        request = Request(
            method=self.command,
            path=url.path,
            query={name: values[-1] for name, values in parse_qs(url.query, keep_blank_values=True).items()},
            headers={name.lower(): value for name, value in self.headers.items()},
            raw_body=raw_body,
        )
        try:
            self.server.simulator.answer(request, self)
        except Exception:
            # A simulator bug: answer like the API's 500, then let socketserver print the traceback.
            self.send(
                Reply.json(Response(500, ApiError(500, "InternalServerError", "simulator error").body()))
            )
            raise

    def send(self, reply: Reply) -> None:
        body, headers = reply.body, reply.headers
        if len(body) >= GZIP_FROM_BYTES and "Content-Encoding" not in headers and self._accepts_gzip():
            body, headers = gzip.compress(body, GZIP_LEVEL), {**headers, "Content-Encoding": "gzip"}
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _accepts_gzip(self) -> bool:
        """Accept-Encoding names gzip with a weight above 0 (RFC 9110 12.5.3)."""
        for coding in self.headers.get("Accept-Encoding", "").split(","):
            name, _, weight = coding.partition(";")
            if name.strip().lower() == "gzip":
                return weight.strip().replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
        return False
