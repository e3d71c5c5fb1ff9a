"""The simulated API as tests and benchmarks drive it: the demo's server, plus recorded requests and faults.

`SimulatorTestServer` answers through the same routes as `SimulatorServer`, so every rule of the real API
still holds; it only adds what a test needs around them: what the client sent (`requests`) and the faults in
force (`inject`, see faults.py).
"""

import json
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..profile import DOCUMENTED, ApiProfile
from ..routes import Request
from ..server import DEFAULT_API_KEY, RequestHandler, SimulatorServer
from ..world import World
from .faults import TASKS_PATH, Drop, Fault, FaultPlan, Requests, Rule

# A benchmark's run makes far more requests than any test: keep the latest only.
MAX_RECORDED: Final = 10_000
_REDACTED: Final = "<redacted>"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What a client sent, for assertions: header names lower-cased, the Authorization value redacted."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: object


class SimulatorTestServer(SimulatorServer):
    """A `SimulatorServer` that records every request and applies the faults a test injects."""

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
        super().__init__(world, api_key, host, port, cursor_pagination=cursor_pagination, profile=profile)
        self._faults = FaultPlan()
        self._requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._requests_lock = threading.Lock()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far (the latest MAX_RECORDED), oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests, to assert on the next ones only."""
        with self._requests_lock:
            self._requests.clear()

    @property
    def faults(self) -> FaultPlan:
        """The faults in force (see `faults.py`); empty unless a test injects some."""
        return self._faults

    def inject(
        self,
        fault: Fault,
        *,
        path: str | None = TASKS_PATH,
        namespace: str | None = None,
        requests: Requests | None = None,
        times: int | None = None,
    ) -> Rule:
        """Switch a fault on for the matching requests (by default every `/v1/tasks/list` request)."""
        return self._faults.add(fault, path=path, namespace=namespace, requests=requests, times=times)

    def clear_faults(self) -> None:
        """Switch every fault off: from the next request on, the server answers normally."""
        self._faults.clear()

    def answer(self, request: Request, handler: RequestHandler) -> None:
        """Record the request, then answer it as the fault in force for it says (normally when none)."""
        self._record(request)
        outcome = self._faults.respond(request, self.routes.handle)
        if isinstance(outcome, Drop):
            self._drop(handler, outcome)
        else:
            handler.send(outcome)

    def stop(self) -> None:
        """Wake the connections a fault holds, then stop as the demo's server does."""
        self._faults.close()
        super().stop()

    def _record(self, request: Request) -> None:
        headers = dict(request.headers)
        if "authorization" in headers:
            headers["authorization"] = _REDACTED
        try:
            body = json.loads(request.raw_body) if request.raw_body.strip() else None
        except ValueError:
            body = None
        recorded = RecordedRequest(request.method, request.path, dict(request.query), headers, body)
        with self._requests_lock:
            self._requests.append(recorded)

    def _drop(self, handler: RequestHandler, drop: Drop) -> None:
        """Answer nothing: hold the connection, then close it; a reset closes at once with an RST."""
        handler.close_connection = True
        if drop.hold:
            self._faults.wait(drop.hold)
        if drop.reset:
            # Linger 0: closing discards the connection with an RST instead of a FIN. rfile (a makefile)
            # holds a reference to the socket, so it must close too or the descriptor stays open.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.rfile.close()
            handler.connection.close()
