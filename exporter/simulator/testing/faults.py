"""Switchable faults for the simulated API: tests make chosen requests slow, fail or lie, then stop it.

A `Rule` names which requests it hits (a path, a namespace as sent in `X-Namespace`, and request numbers) and
one fault. Each rule numbers the requests it matches from 1 since it was added, per (path, namespace): so
`Requests.nth(2, 3)` means the 2nd and 3rd `/v1/tasks/list` calls of prod from now on, and with
`namespace=None` the 2nd and 3rd of each namespace, however concurrent polls interleave. When several rules
pick one request, the first added fires; `times` caps how often a rule fires in all. Faults never touch the
World: its ground truth (`transitions`) stays exact.

    server.inject(HttpError(503), namespace="prod", requests=Requests.nth(1, 2))
    server.inject(RateLimited(retry_after=5), requests=Requests.starting(2), times=4)
    server.clear_faults()

Paging faults (`DuplicateItems`, `RepeatCursor`, `CursorBackToStart`) act on cursor pagination, the default.
"""

import base64
import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Final

from ..errors import ApiError
from ..params import CURSOR_PARAMS, DEFAULT_LIMIT, MAX_LIMIT
from ..routes import Request, Response
from ..server import Reply

TASKS_PATH: Final = "/v1/tasks/list"

# Values outside the SDK's enumerations, for enum-drift tests: `World.create_task` and `set_status` take any
# string. The last ones need sanitising: characters outside [A-Za-z0-9_.:-], and longer than 64 characters.
UNSEEN_STATUSES: Final = ("RETRYING", "PAUSED_BY_OPERATOR", "échec définitif/β", "S" * 80)
UNSEEN_TASK_TYPES: Final = ("api_quantum_teleport", "engine.v2:reindex", "type with spaces!", "t" * 90)

_HTML_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)
_ERROR_TYPES: Final = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "ValidationError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def http_date(epoch_s: float) -> str:
    """An HTTP date (`Wed, 09 Oct 2025 08:53:25 GMT`), e.g. for `RateLimited(retry_after=http_date(...))`."""
    return formatdate(epoch_s, usegmt=True)


# Which requests


@dataclass(frozen=True, slots=True)
class Requests:
    """Which of the requests a rule matches it fires on: numbered from 1 per (path, namespace) since the rule
    was added."""

    numbers: frozenset[int] | None = None
    """Exactly these request numbers; None: every request from `first` on."""
    first: int = 1

    @classmethod
    def every(cls) -> "Requests":
        return cls()

    @classmethod
    def nth(cls, *numbers: int) -> "Requests":
        """Only the requests with these numbers, e.g. `Requests.nth(2, 3)`."""
        if not numbers or min(numbers) < 1:
            raise ValueError("request numbers start at 1")
        return cls(numbers=frozenset(numbers))

    @classmethod
    def starting(cls, number: int) -> "Requests":
        """The `number`th request and every one after it."""
        if number < 1:
            raise ValueError("request numbers start at 1")
        return cls(first=number)

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        return number in self.numbers if self.numbers is not None else number >= self.first


# The faults. Each is plain data; FaultPlan.respond gives them their effect.


@dataclass(frozen=True, slots=True)
class Latency:
    """Wait `seconds`, then answer normally (from the world as it is then)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Hang:
    """Hold the connection `seconds` without answering, then close it: the client's timeout fires first."""

    seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class Reset:
    """Close the socket at once without a response, with SO_LINGER 0 so the client gets a TCP RST."""


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error status with the API's envelope; `retryable=False` adds `error.details.retryable: false`."""

    status: int = 500
    message: str = "simulated failure"
    retryable: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimited:
    """429 with the API's envelope and rate-limit headers.

    `retry_after`: the Retry-After header, seconds (a number) or an HTTP date (`http_date(...)`); None: none.
    `hint_seconds`: the body's `error.details.<hint_key>` (the SDK reads `retry_after_seconds`).
    `retryable=False`: `error.details.retryable: false`, which forbids retrying.
    """

    retry_after: float | str | None = 1
    hint_seconds: float | None = None
    hint_key: str = "retry_after_seconds"
    retryable: bool | None = None


@dataclass(frozen=True, slots=True)
class HtmlPage:
    """A proxy's HTML error page (text/html) instead of JSON, with status 200 unless told otherwise."""

    status: int = 200


@dataclass(frozen=True, slots=True)
class TruncatedJson:
    """Status 200 and the real JSON cut short (`keep` of its bytes); Content-Length matches the cut body."""

    keep: float = 0.5


@dataclass(frozen=True, slots=True)
class GarbledEncoding:
    """Status 200 and the real JSON, but labelled `Content-Encoding: gzip`: the client cannot decode it."""


@dataclass(frozen=True, slots=True)
class ResultsNotList:
    """Status 200 and `results` an object (task_id -> task) instead of a list."""


@dataclass(frozen=True, slots=True)
class TaskWithoutId:
    """Status 200 and the item at `index` (clamped to the page) without `task_id`; an empty page gets one."""

    index: int = 0


@dataclass(frozen=True, slots=True)
class OversizedPage:
    """A page `extra` items longer than the `limit` asked for: the next real tasks, then made-up ones."""

    extra: int = 1


@dataclass(frozen=True, slots=True)
class DuplicateItems:
    """The page starts with the last `count` items of the previous page of the same listing.

    The page is served `count` items shorter so that it stays within `limit` and its cursor still follows
    the last item served: nothing is skipped, some items come twice. At most `limit - 1` items repeat; the
    first page of a listing (no cursor) has no previous page and is served unchanged.
    """

    count: int = 1


@dataclass(frozen=True, slots=True)
class OmitItems:
    """The server lies: the page leaves out these tasks and its first `first` items; same cursor."""

    task_ids: frozenset[str] = frozenset()
    first: int = 0


@dataclass(frozen=True, slots=True)
class RepeatCursor:
    """`next_cursor` is the cursor this request sent: the same page forever. The first page is unchanged."""


@dataclass(frozen=True, slots=True)
class CursorBackToStart:
    """`next_cursor` is a fresh cursor each time, and it leads back to the first page of the listing.

    No cursor repeats, yet a client following them reads the same tasks forever (or, for an empty listing,
    empty pages forever while the rule fires).
    """


Fault = (
    Latency
    | Hang
    | Reset
    | HttpError
    | RateLimited
    | HtmlPage
    | TruncatedJson
    | GarbledEncoding
    | ResultsNotList
    | TaskWithoutId
    | OversizedPage
    | DuplicateItems
    | OmitItems
    | RepeatCursor
    | CursorBackToStart
)


@dataclass(eq=False)
class Rule:
    """One switched-on fault; `numbered` counts its matches per (path, namespace), `fired` its hits."""

    fault: Fault
    path: str | None = TASKS_PATH
    """Exact request path; None: any path."""
    namespace: str | None = None
    """The X-Namespace value as sent; None: any request, with or without the header."""
    requests: Requests = field(default_factory=Requests)
    times: int | None = None
    """Fire at most this many times in all; None: no limit."""
    numbered: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    fired: int = 0

    @property
    def matched(self) -> int:
        """How many requests the rule matched, over every (path, namespace)."""
        return sum(self.numbered.values())

    def matches(self, path: str, namespace: str | None) -> bool:
        return (self.path is None or self.path == path) and (
            self.namespace is None or self.namespace == namespace
        )

    @property
    def spent(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(frozen=True, slots=True)
class Fired:
    """A fault that hit a request: which, where, and the request's number for that rule."""

    fault: Fault
    path: str
    namespace: str | None
    number: int


# What the server does with a request: a `Reply`, or this.


@dataclass(frozen=True, slots=True)
class Drop:
    """No response: hold the connection `hold` seconds, then close it (`reset`: abruptly, with an RST)."""

    hold: float = 0.0
    reset: bool = False


_Key = tuple[str, str | None]
"""(path, namespace as sent)"""


class FaultPlan:
    """The rules in force and what the paging faults must remember; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._rules: list[Rule] = []
        self._fired: list[Fired] = []
        # For the paging faults: each listing's first page, and the latest page with the cursor it issued.
        self._first_pages: dict[_Key, dict[str, object]] = {}
        self._last_pages: dict[_Key, tuple[object, list[object]]] = {}
        self._tokens: dict[str, _Key] = {}

    def add(
        self,
        fault: Fault,
        *,
        path: str | None = TASKS_PATH,
        namespace: str | None = None,
        requests: Requests | None = None,
        times: int | None = None,
    ) -> Rule:
        """Switch a fault on; returns its rule (to read `fired`, or to `remove` it)."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        rule = Rule(fault, path, namespace, requests or Requests(), times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        """Switch every fault off and forget what the paging faults remembered; `fired` is kept."""
        with self._lock:
            self._rules.clear()
            self._first_pages.clear()
            self._last_pages.clear()
            self._tokens.clear()

    @property
    def rules(self) -> tuple[Rule, ...]:
        with self._lock:
            return tuple(self._rules)

    @property
    def fired(self) -> list[Fired]:
        """Every fault that hit a request, oldest first."""
        with self._lock:
            return list(self._fired)

    def close(self) -> None:
        """Wake every held connection (the server is stopping)."""
        self._closing.set()

    def wait(self, seconds: float) -> None:
        """Sleep, cut short by `close`."""
        self._closing.wait(seconds)

    def respond(self, request: Request, serve: Callable[[Request], Response]) -> Reply | Drop:
        """Answer `request` with `serve` (the routes), as the fault in force for it says."""
        key: _Key = (request.path, request.headers.get("x-namespace"))
        with self._lock:
            idle = not self._rules and not self._tokens
            fault = None if idle else self._select(request, key)
            cursor = _cursor(request)
            replay = self._first_pages.get(self._tokens[cursor]) if cursor in self._tokens else None
        if idle:
            return Reply.json(serve(request))  # outside the lock: requests are served concurrently
        match fault:
            case Latency(seconds=seconds):
                self.wait(seconds)
            case Hang(seconds=seconds):
                return Drop(hold=seconds)
            case Reset():
                return Drop(reset=True)
            case HttpError():
                return _error_reply(fault.status, fault.message, fault.retryable, {}, fault.headers)
            case RateLimited():
                return _rate_limited(fault)
            case HtmlPage(status=status):
                return Reply(status, _HTML_PAGE, content_type="text/html")
        return self._listing(request, key, fault, serve, replay)

    def _select(self, request: Request, key: _Key) -> Fault | None:
        """Number the request for every rule it matches; the first rule that picks it fires."""
        chosen: Fault | None = None
        for rule in self._rules:
            if not rule.matches(*key):
                continue
            rule.numbered[key] += 1
            number = rule.numbered[key]
            if chosen is None and not rule.spent and number in rule.requests:
                rule.fired += 1
                chosen = rule.fault
                self._fired.append(Fired(rule.fault, request.path, key[1], number))
        return chosen

    def _listing(
        self,
        request: Request,
        key: _Key,
        fault: Fault | None,
        serve: Callable[[Request], Response],
        replay: dict[str, object] | None,
    ) -> Reply:
        """A normal answer, or a listing page changed by a body or paging fault."""
        limit = _limit(request)
        ask = request
        repeated: list[object] = []
        if isinstance(fault, DuplicateItems) and limit is not None:
            repeated = self._previous_tail(key, _cursor(request), min(fault.count, limit - 1))
            ask = _with_limit(request, limit - len(repeated))
        elif isinstance(fault, OversizedPage) and limit is not None:
            ask = _with_limit(request, min(MAX_LIMIT, limit + fault.extra))
        # A replay is the listing's first page again, its real next_cursor included.
        response = Response(200, copy.deepcopy(replay)) if replay is not None else serve(ask)
        page = response.payload
        if response.status != 200 or not isinstance(page, dict) or not isinstance(page.get("results"), list):
            return Reply.json(response)
        if replay is None and _cursor(request) is None:
            with self._lock:
                self._first_pages[key] = copy.deepcopy(page)
        results: list[object] = page["results"]
        pagination = page.get("pagination")
        if not isinstance(pagination, dict):
            pagination = page["pagination"] = {}
        if limit is not None and isinstance(fault, DuplicateItems | OversizedPage):
            pagination["page_size"] = limit  # as asked, not as served
        match fault:
            case DuplicateItems():
                results[:0] = repeated
            case OversizedPage(extra=extra) if limit is not None:
                results.extend(_phantom(i) for i in range(max(0, limit + extra - len(results))))
            case OmitItems(task_ids=task_ids, first=first):
                results[:] = [task for task in results[first:] if _task_id(task) not in task_ids]
            case RepeatCursor() if _cursor(request) is not None:
                pagination["next_cursor"] = _cursor(request)
            case CursorBackToStart():
                pagination["next_cursor"] = self._mint(key, page)
            case ResultsNotList():
                page["results"] = {str(_task_id(task)): task for task in results}
            case TaskWithoutId(index=index):
                if not results:
                    results.append(_phantom(0))
                target = results[max(0, min(index, len(results) - 1))]
                if isinstance(target, dict):
                    target.pop("task_id", None)
        with self._lock:
            self._last_pages[key] = (pagination.get("next_cursor"), list(results))
        reply = Reply.json(Response(response.status, page, response.headers))
        match fault:
            case TruncatedJson(keep=keep):
                cut = min(len(reply.body) - 1, max(1, int(len(reply.body) * keep)))
                return replace(reply, body=reply.body[:cut])
            case GarbledEncoding():
                return replace(reply, headers={**reply.headers, "Content-Encoding": "gzip"})
        return reply

    def _previous_tail(self, key: _Key, cursor: str | None, count: int) -> list[object]:
        """The last `count` items of the page whose next_cursor this request follows (none for page 1)."""
        with self._lock:
            issued, previous = self._last_pages.get(key, (None, []))
        if cursor is None or issued != cursor or count <= 0:
            return []
        return copy.deepcopy(previous[-count:])

    def _mint(self, key: _Key, page: dict[str, object]) -> str:
        """A cursor never issued before that leads to the first page of the listing on `key`."""
        with self._lock:
            token = _token(len(self._tokens))
            self._tokens[token] = key
            self._first_pages.setdefault(key, copy.deepcopy(page))
        return token


def _cursor(request: Request) -> str | None:
    return next((request.query[name] for name in CURSOR_PARAMS if request.query.get(name)), None)


def _task_id(task: object) -> object:
    return task.get("task_id") if isinstance(task, dict) else None


def _limit(request: Request) -> int | None:
    """The page size asked for, as the routes read it; None when it is not a valid number (the routes 422)."""
    raw = request.query.get("limit") or request.query.get("page_size")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= MAX_LIMIT else None


def _with_limit(request: Request, limit: int) -> Request:
    query = {name: value for name, value in request.query.items() if name != "page_size"}
    return replace(request, query={**query, "limit": str(max(1, limit))})


def _token(n: int) -> str:
    raw = json.dumps(["fault:back-to-start", n]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _phantom(n: int) -> dict[str, object]:
    """A made-up task: only in a response that a client must refuse as a whole."""
    return {"task_id": f"phantom-{n}", "task_type": "thumbnail", "status": "PENDING", "additional_data": {}}


def _error_reply(
    status: int,
    message: str,
    retryable: bool | None,
    details: Mapping[str, object],
    headers: Mapping[str, str],
) -> Reply:
    extra = {**details, **({} if retryable is None else {"retryable": retryable})}
    error = ApiError(status, _ERROR_TYPES.get(status, "HTTPError"), message, extra, headers)
    return Reply.json(Response(status, error.body(), error.headers))


def _rate_limited(fault: RateLimited) -> Reply:
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Window": "1s"}
    if isinstance(fault.retry_after, str):
        headers["Retry-After"] = fault.retry_after
    elif fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    details: dict[str, object] = {}
    if fault.hint_seconds is not None:
        details[fault.hint_key] = fault.hint_seconds
    return _error_reply(429, "Rate limit exceeded", fault.retryable, details, headers)
