"""The Mixpeek API client: the listings and lookups the poller makes, page by page, retried and decoded.

It keeps no metric objects, only plain counts (responses by endpoint and status, values it ignored as
impossible), which the poller publishes. It
checks what the spec promises (shapes, page sizes, cursors); what the spec leaves open (whether a filter,
a sort or a header is honoured) is the poller's to verify (see exporter/checks.py).
"""

from __future__ import annotations

import asyncio
import enum
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import structlog
import tenacity
from pydantic import SecretStr
from zlib_ng import zlib_ng as zlib  # zlib's format, inflated 2.7 times faster (see bench/decode.py)

from exporter.ratelimit import RateLimiter
from exporter.tallies import FailureKey, ObjectsKey, Tally
from exporter.vocabulary import FAILURE_CATEGORIES

TASKS_LIST = "/v1/tasks/list"
TASK_GET = "/v1/tasks/{task_id}"
BATCHES_LIST = "/v1/batches/list"
BUCKETS_LIST = "/v1/buckets/list"
BUCKET_BATCHES_LIST = "/v1/buckets/{bucket_id}/batches/list"
NAMESPACES_LIST = "/v1/namespaces/list"
# The `endpoint` label of mixpeek_exporter_api_requests_total: every route the client calls.
ENDPOINTS = (TASKS_LIST, TASK_GET, BATCHES_LIST, BUCKETS_LIST, BUCKET_BATCHES_LIST, NAMESPACES_LIST)
# The API refuses offsets above this; deeper listings need a cursor or a created_at window.
MAX_OFFSET = 10_000
# Cursor pages in a row that add nothing before a listing is judged a loop.
MAX_BARREN_PAGES = 3
NEWEST_FIRST = {"field": "created_at", "direction": "desc"}
OLDEST_FIRST = {"field": "created_at", "direction": "asc"}
# Failure categories outside the API's enum count as "unknown", which keeps the label bounded.
KNOWN_FAILURE_CATEGORIES = frozenset(FAILURE_CATEGORIES)
# A 1000-task page of the documented TaskResponse is about 470 KiB, a 1000-batch page of 100-object batches
# about 5.3 MiB: 32 MiB leaves room for both while one response can never take the process down.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# The Content-Encodings the client inflates itself, within the size cap; it offers no other.
ACCEPT_ENCODING = "gzip, deflate"
# Decompressed bytes made at a time: a page's worth, far below what one network read can unpack to.
INFLATE_STEP = 1024 * 1024
# An error body is read only for its message and retry advice: anything longer is ignored, unread.
MAX_ERROR_BODY_BYTES = 64 * 1024
# Messages taken from an error body are cut to this: they end up in log lines.
MAX_ERROR_MESSAGE_CHARS = 300
# A count above this is no real batch's: it is invalid input, not a number to add to a counter.
MAX_COUNT = 1_000_000_000
# Unix seconds from 1970 up to the year 10000: the range of a plausible timestamp.
MAX_EPOCH_SECONDS = 253_402_300_800.0
# Numbers above this are epoch milliseconds: as seconds they would be past the year 5000.
EPOCH_MILLISECONDS_ABOVE = 1e11
_NUMERIC = re.compile(r"[0-9]{1,20}(\.[0-9]{1,9})?")

T = TypeVar("T")
P = TypeVar("P", "_TaskPage", "_BatchPage", "_NamespacePage", "_BucketPage")
Page = tuple[list[T], str | None, str | float | None]
"""One page: its items, the next cursor, and the last item's raw created_at (to narrow a window)."""
Sink = Callable[[list[T]], int]
"""Takes one page's items as they arrive; returns how many were new to the listing (loop detection)."""


class Reason(enum.StrEnum):
    """Why a request or listing failed: the bounded `reason` label of the poll-error counters, spelled once
    here because dashboards and alert rules match its values. The order is the zero-filled label order."""

    ERROR = "error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    INVALID_RESPONSE = "invalid_response"
    PAGINATION_LIMIT = "pagination_limit"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    UNEXPECTED_STATUS = "unexpected_status"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    INTERNAL = "internal"
    """An exception the exporter did not expect (the poller's): a bug, or input nobody foresaw."""


class ApiError(Exception):
    """A request or listing failed; `reason` becomes the bounded poll-error label."""

    reason: Reason = Reason.ERROR


class ApiTimeout(ApiError):
    reason = Reason.TIMEOUT


class ApiUnreachable(ApiError):
    reason = Reason.CONNECTION_ERROR


class InvalidResponse(ApiError):
    reason = Reason.INVALID_RESPONSE


class PaginationLimit(ApiError):
    reason = Reason.PAGINATION_LIMIT


class EndOfListing(Exception):
    """Raised by a sink once it has read enough: the walk ends after the page it was given."""


class ApiHTTPError(ApiError):
    def __init__(
        self, status_code: int, message: str, *, retry_after: float | None = None, retryable: bool = True
    ) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.retry_after = retry_after
        """The server's advised wait in seconds (Retry-After, or the error body's hint)."""
        self.retryable = retryable
        """False when the error body says `retryable: false`."""

    @property
    def refused(self) -> bool:
        """The API refused what was asked (400, 422): a body, filter or parameter it does not take."""
        return self.status_code in (400, 422)

    @property
    def reason(self) -> Reason:  # type: ignore[override]
        if self.status_code in (401, 403):
            return Reason.UNAUTHORIZED
        if self.status_code == 429:
            return Reason.RATE_LIMITED
        if self.status_code == 404:
            return Reason.NOT_FOUND
        if self.status_code < 400:  # a redirect or other non-200 success: not what the API answers
            return Reason.UNEXPECTED_STATUS
        return Reason.HTTP_5XX if self.status_code >= 500 else Reason.HTTP_4XX


class _Pagination(msgspec.Struct, gc=False):
    next_cursor: str | None = None


class _Extra(msgspec.Struct, gc=False):
    """additional_data, reduced to the namespace it names (read in organization scope)."""

    namespace_id: Any = None


Stamp = Any
"""A timestamp as the API sends it (ISO 8601 text, unix seconds or milliseconds, or anything odd), kept raw
and parsed only when needed: an odd value then counts as absent instead of rejecting the whole page."""


class Task(msgspec.Struct, frozen=True, gc=False):
    """One TaskResponse, reduced to what the exporter reads; unknown statuses and types pass as text.

    Decoded straight from the page bytes into the names the task state reads (`item_id`, `group`: plain
    fields are several times faster than properties in the hot loop); timestamps stay raw until a
    transition needs them, so a task that did not change costs no parsing.
    """

    item_id: Annotated[str, msgspec.Meta(min_length=1)] = msgspec.field(name="task_id")
    status: str
    group: str = msgspec.field(name="task_type")
    additional_data: _Extra | None = None
    created: Stamp = msgspec.field(default=None, name="created_at")
    completed: Stamp = msgspec.field(default=None, name="completed_at")
    finished: Stamp = msgspec.field(default=None, name="finished_at")
    updated: Stamp = msgspec.field(default=None, name="updated_at")

    @property
    def task_id(self) -> str:
        return self.item_id

    @property
    def task_type(self) -> str:
        return self.group

    @property
    def namespace_id(self) -> str | None:
        value = self.additional_data.namespace_id if self.additional_data else None
        return value if isinstance(value, str) else None

    @property
    def created_at(self) -> float | None:
        return parse_timestamp(self.created)

    @property
    def finished_at(self) -> float | None:
        """When it finished: the first of the fields the payload may carry (the documented model has none)."""
        for raw in (self.completed, self.finished, self.updated):
            parsed = parse_timestamp(raw)
            if parsed is not None:
                return parsed
        return None

    @property
    def tallies(self) -> tuple[Tally, ...]:
        return ()


class _TaskPage(msgspec.Struct, gc=False):
    results: list[Task]
    pagination: _Pagination | None = None


class _TierPayload(msgspec.Struct, gc=False):
    started_at: Stamp = None
    completed_at: Stamp = None


class _ProgressPayload(msgspec.Struct, gc=False):
    total: Any = None
    objects_failed: Any = None


class _BatchPayload(msgspec.Struct, gc=False):
    """One BatchModel, reduced to what the exporter reads."""

    batch_id: Annotated[str, msgspec.Meta(min_length=1)]
    bucket_id: str
    status: str = "DRAFT"  # the SDK's default for a batch that has none yet
    created_at: Stamp = None
    updated_at: Stamp = None
    last_activity_at: Stamp = None
    tier_tasks: list[_TierPayload] | None = None
    object_ids: list[Any] | None = None
    loaded_object_ids: list[Any] | None = None
    progress: _ProgressPayload | None = None
    failed_object_count: Any = None
    failure_category: str | None = None


class _BatchPage(msgspec.Struct, gc=False):
    results: list[_BatchPayload]
    pagination: _Pagination | None = None


class _NamespacePayload(msgspec.Struct, gc=False):
    namespace_name: str
    namespace_id: str | None = None


class _NamespacePage(msgspec.Struct, gc=False):
    results: list[_NamespacePayload]


class _BucketPayload(msgspec.Struct, gc=False):
    bucket_id: Annotated[str, msgspec.Meta(min_length=1)]


class _BucketPage(msgspec.Struct, gc=False):
    results: list[_BucketPayload]


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch: an ingestion run of many objects through the tiers of a bucket's pipeline."""

    batch_id: str
    status: str
    bucket_id: str
    created_at: float | None
    finished_at: float | None
    objects: int | None
    failed_objects: int
    failure_category: str | None

    @property
    def item_id(self) -> str:
        return self.batch_id

    @property
    def group(self) -> str:
        return self.bucket_id

    @property
    def tallies(self) -> tuple[Tally, ...]:
        """What a finished batch adds to the object and failure counters."""
        counts = [Tally(ObjectsKey("failed"), self.failed_objects)]
        if self.objects is not None:
            counts.append(Tally(ObjectsKey("processed"), max(0, self.objects - self.failed_objects)))
        if self.failure_category is not None:
            counts.append(Tally(FailureKey.of(self.failure_category), 1))
        return tuple(counts)


@dataclass(frozen=True, slots=True)
class Namespace:
    namespace_id: str | None
    name: str


def parse_timestamp(value: Any) -> float | None:
    """Unix seconds from a timestamp in any plausible encoding, else None (absent); never raises.

    Accepted: ISO 8601 text with or without a zone (naive means UTC, as the API sends), a number of unix
    seconds, or of unix milliseconds (any number above 1e11, which as seconds would be past the year 5000),
    and the same numbers as digit strings ("1733000000", "1733000000123"). Anything else, or a time outside
    1970 to 9999 (nan, inf, huge numbers, year 0, bools, nested objects, garbage), counts as absent.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            text = value.strip()
            if _NUMERIC.fullmatch(text) is None:
                return None
            return _epoch(float(text))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return _plausible(parsed.timestamp())
        except (OverflowError, ValueError, OSError):  # e.g. year 1 shifted below datetime.min by its zone
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _epoch(float(value))
        except OverflowError:  # an int too large for a float
            return None
    return None


def _epoch(number: float) -> float | None:
    """A number of unix seconds, or milliseconds above EPOCH_MILLISECONDS_ABOVE, as plausible seconds."""
    return _plausible(number / 1000.0 if number > EPOCH_MILLISECONDS_ABOVE else number)


def _plausible(seconds: float) -> float | None:
    """`seconds` if between 1970 and the year 10000 (nan and inf are not)."""
    return seconds if 0.0 <= seconds < MAX_EPOCH_SECONDS else None


def _error_object(body: Any) -> dict[str, Any]:
    """`error` of the API's envelope, or `detail.error` of an older shape; else empty."""
    if not isinstance(body, dict):
        return {}
    detail = body.get("detail")
    error = detail.get("error") if isinstance(detail, dict) else body.get("error")
    return error if isinstance(error, dict) else {}


def _to_batch(payload: _BatchPayload, invalid: Callable[[str], None]) -> Batch:
    """The batch a payload describes. A count that cannot be true (not a whole number, negative, above
    MAX_COUNT, more failed objects than objects) is reported to `invalid` by field and counts as absent:
    a counter fed from it could otherwise go down or leap."""
    tiers = payload.tier_tasks or []
    tier_ends = [ts for ts in (parse_timestamp(t.completed_at) for t in tiers) if ts is not None]
    fallback = parse_timestamp(payload.last_activity_at) or parse_timestamp(payload.updated_at)
    progress = payload.progress or _ProgressPayload()
    ids = payload.loaded_object_ids if payload.loaded_object_ids is not None else payload.object_ids
    objects = _count(progress.total, "progress.total", None, invalid)
    if objects is None:
        objects = len(ids) if ids is not None else None
    failed = _count(payload.failed_object_count, "failed_object_count", objects, invalid)
    if not failed:
        failed = _count(progress.objects_failed, "progress.objects_failed", objects, invalid)
    category = payload.failure_category
    return Batch(
        batch_id=payload.batch_id,
        status=payload.status,
        bucket_id=payload.bucket_id,
        created_at=parse_timestamp(payload.created_at),
        finished_at=max(tier_ends) if tier_ends else fallback,
        objects=objects,
        failed_objects=failed or 0,
        failure_category=None
        if category is None
        else (category if category in KNOWN_FAILURE_CATEGORIES else "unknown"),
    )


def _count(value: Any, name: str, most: int | None, invalid: Callable[[str], None]) -> int | None:
    """`value` as a count of objects (at most `most` when known), None when absent or reported invalid."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is int and 0 <= value <= (MAX_COUNT if most is None else min(MAX_COUNT, most)):
        return value
    invalid(name)
    return None


def decode_error_body(raw: bytes | None) -> Any:
    """An error body as JSON values, or None when it is absent, too long or not JSON. Never raises:
    msgspec bounds the nesting depth (RecursionError past it), and what reads the result only walks
    the top levels."""
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def error_message(body: Any) -> str:
    """The message of any of the API's three error shapes (cut to MAX_ERROR_MESSAGE_CHARS), else a fixed
    text; only strings are taken, so no nested value is ever rendered."""
    return _message(body)[:MAX_ERROR_MESSAGE_CHARS]


def _message(body: Any) -> str:
    message = _error_object(body).get("message")
    if isinstance(message, str):
        return message
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        texts = [item.get("msg") for item in detail[:3] if isinstance(item, dict)]
        return "; ".join(text for text in texts if isinstance(text, str)) or "unexpected error body"
    if isinstance(detail, str):
        return detail
    return "unexpected error body"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_advice(response: httpx.Response, body: Any, now: float) -> tuple[float | None, bool]:
    """(advised wait, retryable) from Retry-After, else the error body, as the official SDK reads them."""
    details = _error_object(body).get("details")
    details = details if isinstance(details, dict) else {}
    advised = parse_retry_after(response.headers.get("Retry-After"), now)
    for key in ("retry_after_seconds", "retry_after"):
        hint = details.get(key)
        if advised is None:
            advised = _seconds_hint(hint)
    return advised, details.get("retryable") is not False


def _seconds_hint(hint: object) -> float | None:
    """A retry hint from an error body, capped at a day; None unless a finite number (an int too big for
    a float, such as 10**400, is no advice either)."""
    if isinstance(hint, bool) or not isinstance(hint, int | float):
        return None
    try:
        seconds = float(hint)
    except OverflowError:
        return None
    return min(max(0.0, seconds), 86_400.0) if math.isfinite(seconds) else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiHTTPError):
        return exc.retryable and (exc.status_code == 429 or exc.status_code >= 500)
    return isinstance(exc, ApiTimeout | ApiUnreachable)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter from `initial` to `maximum` seconds; a server's advice wins, capped."""

    attempts: int = 4
    initial: float = 1.0
    maximum: float = 30.0


class MixpeekClient:
    """Talks to one Mixpeek organisation through a shared, pooled httpx.AsyncClient: lists namespaces,
    tasks (and looks tasks up by id: a `task_id in` filter, or one GET each), buckets and batches."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_key: Callable[[], SecretStr],
        *,
        page_size: int = 1000,
        page_concurrency: int = 1,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline: float | None = None,
    ) -> None:
        """`max_response_bytes` caps each response's body after decompression; `deadline` (seconds, None:
        none) bounds each attempt as a whole, from connecting to the body's last byte."""
        self._http = http
        self._api_key = api_key
        self._page_size = page_size
        self._page_concurrency = page_concurrency
        self._retry = retry or RetryPolicy()
        self._backoff = tenacity.wait_exponential_jitter(
            initial=self._retry.initial, max=self._retry.maximum, jitter=self._retry.initial
        )
        self._limiter = limiter
        self._clock = clock
        self._sleep = sleep
        self._log = logger or structlog.get_logger("exporter.api")
        self._max_response_bytes = max_response_bytes
        self._deadline = deadline
        self.requests: Counter[tuple[str, str]] = Counter()
        """Responses by (endpoint, HTTP status), "error" where none came back."""
        self.invalid_values: Counter[tuple[str, str]] = Counter()
        """Values the API sent that cannot be true and were ignored, by (endpoint, field)."""

    @property
    def page_size(self) -> int:
        return self._page_size

    async def walk_tasks(
        self, namespace: str | None, sink: Sink[Task], filters: dict[str, Any] | None = None
    ) -> int:
        """Every task (matching `filters`), newest first, into `sink` page by page; returns the pages read.

        Newest first means a task created while we page lands before our position and never shifts
        an unread page, and a task expiring at the tail never hides one we have not read yet. Without
        cursors, offset pages are read concurrently, then windows narrowed by created_at.
        """

        async def fetch(paging: dict[str, Any], narrowing: dict[str, Any]) -> Page[Task]:
            body: dict[str, Any] = {"sort": NEWEST_FIRST}
            if narrowing:
                body["filters"] = {"AND": [*([filters] if filters else []), *narrowing["AND"]]}
            elif filters:
                body["filters"] = filters
            page = await self._task_page(namespace, paging, body)
            tail = page.results[-1].created if page.results else None
            cursor = page.pagination.next_cursor if page.pagination else None
            return page.results, cursor, tail

        return await self._walk(fetch, sink, self._older_window)

    async def lookup_tasks(self, namespace: str | None, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among `task_ids` (at most a page of them) that the API returns for a `task_id in`
        filter: one request. What it returns is the caller's to check (see exporter/checks.py)."""
        where = {"AND": [{"field": "task_id", "operator": "in", "value": list(task_ids)}]}
        page = await self._task_page(namespace, {"limit": len(task_ids)}, {"filters": where})
        return page.results

    async def get_task(self, namespace: str | None, task_id: str) -> Task | None:
        """GET /v1/tasks/{task_id} (documented): the task, or None when the API no longer has it."""
        try:
            raw = await self._request("GET", f"/v1/tasks/{quote(task_id, safe='')}", TASK_GET, namespace)
        except ApiHTTPError as exc:
            if exc.status_code == 404:
                return None
            raise
        try:
            return msgspec.json.decode(raw, type=Task)
        except msgspec.ValidationError as exc:
            raise InvalidResponse(f"{TASK_GET}: {exc}") from None
        except msgspec.DecodeError:
            raise InvalidResponse(f"{TASK_GET} answered 200 with a body that is not JSON") from None

    async def first_tasks(
        self,
        namespace: str | None,
        sort: dict[str, str],
        limit: int = 1,
        filters: dict[str, Any] | None = None,
    ) -> list[Task]:
        """The first tasks of the listing in this order (matching `filters`): one request."""
        body: dict[str, Any] = {"sort": sort} if filters is None else {"sort": sort, "filters": filters}
        page = await self._task_page(namespace, {"limit": limit}, body)
        return page.results

    async def walk_batches(self, namespace: str, sink: Sink[Batch]) -> int:
        """Every batch of a namespace (POST /v1/batches/list with X-Namespace); paging goes in the body.

        The route is in the SDK but not in the 0.81 spec: on 404, use `walk_bucket_batches` instead."""
        return await self._walk_batch_route(BATCHES_LIST, BATCHES_LIST, namespace, sink)

    async def walk_bucket_batches(self, namespace: str, sink: Sink[Batch]) -> int:
        """Every batch of a namespace through the routes of the 0.81 spec: its buckets, then each bucket's
        batches. Returns the requests made."""
        buckets: list[str] = []
        offset = 0
        requests = 0
        while True:
            body = {"limit": self._page_size, "offset": offset}
            raw = await self._request("POST", BUCKETS_LIST, BUCKETS_LIST, namespace, params={}, body=body)
            requests += 1
            page = _validated(_BucketPage, raw, BUCKETS_LIST, self._page_size)
            buckets.extend(item.bucket_id for item in page.results)
            offset += len(page.results)
            if len(page.results) < self._page_size or offset > MAX_OFFSET - self._page_size:
                break
        for bucket in dict.fromkeys(buckets):
            path = f"/v1/buckets/{quote(bucket, safe='')}/batches/list"
            requests += await self._walk_batch_route(path, BUCKET_BATCHES_LIST, namespace, sink)
        return requests

    async def _walk_batch_route(self, path: str, endpoint: str, namespace: str, sink: Sink[Batch]) -> int:
        async def fetch(paging: dict[str, Any], narrowing: dict[str, Any]) -> Page[Batch]:
            raw = await self._request("POST", path, endpoint, namespace, params={}, body=paging)
            page = _validated(_BatchPage, raw, endpoint, paging["limit"])
            cursor = page.pagination.next_cursor if page.pagination else None
            return [_to_batch(p, self._invalid_batch_value) for p in page.results], cursor, None

        return await self._walk(fetch, sink, None)

    async def _walk(
        self,
        fetch: Callable[[dict[str, Any], dict[str, Any]], Awaitable[Page[T]]],
        sink: Sink[T],
        narrow: Callable[[str | float | None], dict[str, Any]] | None,
    ) -> int:
        """Read every page into `sink`: by cursor when the API gives one, else by offset up to MAX_OFFSET
        (`page_concurrency` pages at a time, handed to the sink in order), then by windows `narrow`ed below
        the last item's created_at (each starting again at offset 0). The sink says how many items were
        new; a repeated cursor, MAX_BARREN_PAGES pages of nothing new, or a window that adds nothing ends
        the walk rather than loop, and a sink raising EndOfListing ends it early. Returns the pages read."""
        narrowing: dict[str, Any] = {}
        seen_cursors: set[str] = set()
        cursor: str | None = None
        offset = window_new = pages = barren = 0
        limit = self._page_size
        while True:
            if cursor is not None:
                pagings: list[dict[str, Any]] = [{"limit": limit, "cursor": cursor}]
            elif not offset:
                pagings = [{"limit": limit}]
            else:
                last = min(MAX_OFFSET, offset + (self._page_concurrency - 1) * limit)
                pagings = [{"limit": limit, "offset": o} for o in range(offset, last + 1, limit)]
            replies = await asyncio.gather(*(fetch(paging, narrowing) for paging in pagings))
            for results, next_cursor, tail in replies:
                pages += 1
                try:
                    new = sink(results)
                except EndOfListing:
                    return pages
                window_new += new
                if next_cursor and (cursor is not None or not offset):
                    # A cursor must lead somewhere new: a repeated one, or cursors on page after page that
                    # add nothing, would page forever. (One barren page can be honest: items hidden.)
                    barren = 0 if new else barren + 1
                    if next_cursor in seen_cursors or barren >= MAX_BARREN_PAGES:
                        raise InvalidResponse("the API repeated a cursor or a whole page; listing abandoned")
                    seen_cursors.add(next_cursor)
                    cursor = next_cursor
                    break
                if cursor is not None or len(results) < limit:
                    return pages
                offset += len(results)
                if offset > MAX_OFFSET:
                    if narrow is None:
                        raise PaginationLimit(f"more than {MAX_OFFSET} items and the API gives no cursor")
                    if not window_new:
                        raise PaginationLimit(
                            "an offset window added nothing; cannot page deeper without a cursor"
                        )
                    narrowing, offset, window_new = narrow(tail), 0, 0
                    break

    @staticmethod
    def _older_window(oldest: str | float | None) -> dict[str, Any]:
        """The next offset window: tasks created no later than the last one read (dupes are merged)."""
        if oldest is None or parse_timestamp(oldest) is None:
            raise PaginationLimit(
                f"more than {MAX_OFFSET} tasks, and the API gives neither a cursor nor created_at to page on"
            )
        return {"AND": [{"field": "created_at", "operator": "lte", "value": oldest}]}

    async def list_namespaces(self) -> list[Namespace]:
        namespaces: list[Namespace] = []
        offset = 0
        while True:
            body = {"limit": self._page_size, "offset": offset}
            raw = await self._request("POST", NAMESPACES_LIST, NAMESPACES_LIST, None, params={}, body=body)
            page = _validated(_NamespacePage, raw, NAMESPACES_LIST, self._page_size)
            namespaces.extend(Namespace(item.namespace_id, item.namespace_name) for item in page.results)
            offset += len(page.results)
            if len(page.results) < self._page_size or offset > MAX_OFFSET - self._page_size:
                return namespaces

    async def _task_page(
        self, namespace: str | None, params: dict[str, Any], body: dict[str, Any]
    ) -> _TaskPage:
        raw = await self._request("POST", TASKS_LIST, TASKS_LIST, namespace, params=params, body=body)
        return _validated(_TaskPage, raw, TASKS_LIST, params["limit"])

    async def _request(
        self,
        method: str,
        path: str,
        endpoint: str,
        namespace: str | None,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> bytes:
        """One logical request: retried on timeouts, connection errors, 5xx and 429, never on other 4xx."""
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return await retrying(
            self._attempt, method, path, endpoint, namespace=namespace, params=params, body=body
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, self._retry.maximum)
        return float(self._backoff(state))

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._log.info(
            "retrying API request",
            endpoint=state.args[2],
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            reason=getattr(exc, "reason", Reason.ERROR),
            error=str(exc),
        )

    async def _attempt(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        namespace: str | None,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
    ) -> bytes:
        """One request and its whole body, within the deadline and the size cap; failures are ApiErrors."""
        if self._limiter is not None:
            await self._limiter.acquire()
        headers = {"Authorization": f"Bearer {self._api_key().get_secret_value()}"}
        if namespace is not None:
            headers["X-Namespace"] = namespace
        try:
            async with asyncio.timeout(self._deadline):
                response, content = await self._exchange(method, path, params, body, headers)
        except (TimeoutError, httpx.TimeoutException):
            self.requests[(endpoint, "error")] += 1
            raise ApiTimeout(f"{endpoint} timed out") from None
        except httpx.TransportError as exc:
            self.requests[(endpoint, "error")] += 1
            raise ApiUnreachable(f"{endpoint}: {type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:  # e.g. a body whose Content-Encoding does not decode
            self.requests[(endpoint, "error")] += 1
            raise InvalidResponse(f"{endpoint}: {type(exc).__name__}: {exc}") from None
        self.requests[(endpoint, str(response.status_code))] += 1
        if response.status_code != 200:
            decoded = decode_error_body(content)
            advised, retryable = _retry_advice(response, decoded, self._clock())
            raise ApiHTTPError(
                response.status_code, error_message(decoded), retry_after=advised, retryable=retryable
            )
        if content is None:
            raise InvalidResponse(
                f"{endpoint} answered with more than {self._max_response_bytes} bytes "
                "(MIXPEEK_MAX_RESPONSE_BYTES); the rest was not read"
            )
        return content

    async def _exchange(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> tuple[httpx.Response, bytes | None]:
        """The response and its decoded body, None once the body passes the cap (a 200's:
        max_response_bytes; an error's: MAX_ERROR_BODY_BYTES, and an error body that does not decode
        is None too: the status says enough). Leaving the stream early closes the connection: nothing
        past the cap is read."""
        request = self._http.stream(method, path, params=params, json=body, headers=headers)
        async with request as response:
            if response.status_code == 200:
                return response, await _read_capped(response, self._max_response_bytes)
            try:
                return response, await _read_capped(response, MAX_ERROR_BODY_BYTES)
            except httpx.DecodingError:
                return response, None

    def _invalid_batch_value(self, field: str) -> None:
        self._invalid(BATCHES_LIST, field)

    def _invalid(self, endpoint: str, field: str) -> None:
        """Count a value that cannot be true; warn the first time per (endpoint, field)."""
        key = (endpoint, field)
        if not self.invalid_values[key]:
            self._log.warning(
                "the API sent an impossible value; ignoring it (counted in "
                "mixpeek_exporter_invalid_values_total)",
                endpoint=endpoint,
                field=field,
            )
        self.invalid_values[key] += 1


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, decompressed, or None as soon as it passes `cap` bytes (or declares more).

    The raw bytes are inflated here, INFLATE_STEP at a time: a gzip bomb costs about `cap` bytes, not
    what one network read (64 KiB) can unpack to (64 MiB).
    """
    if response.is_stream_consumed:  # a transport that answers from memory (httpx.MockTransport)
        return response.content if len(response.content) <= cap else None
    inflater = _inflater(response)
    declared = response.headers.get("Content-Length", "")
    if inflater is None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    room = cap
    async for raw in response.aiter_raw():
        for chunk in (raw,) if inflater is None else _inflate(inflater, raw, response.request):
            room -= len(chunk)
            if room < 0:
                return None
            chunks.append(chunk)
    if inflater is not None:
        chunks.append(inflater.flush())  # the few bytes of a copy still pending, if any
        if len(chunks[-1]) > room:
            return None
    return b"".join(chunks)


def _inflate(inflater: zlib._Decompress, data: bytes, request: httpx.Request) -> Iterator[bytes]:
    """`data` decompressed, INFLATE_STEP bytes at a time, so the reader can stop at its cap."""
    while data:
        try:
            yield inflater.decompress(data, INFLATE_STEP)
        except zlib.error as exc:  # type: ignore[misc]  # zlib-ng's stub types `error` as an instance
            raise httpx.DecodingError(f"the body does not inflate: {exc}", request=request) from None
        data = inflater.unconsumed_tail


def _inflater(response: httpx.Response) -> zlib._Decompress | None:
    """A decompressor for the body's Content-Encoding (None: none); ACCEPT_ENCODING offers only these."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib tells a gzip from a zlib header
    raise httpx.DecodingError(f"unsupported Content-Encoding {encoding!r}", request=response.request)


def _validated(page_type: type[P], raw: bytes, endpoint: str, limit: int) -> P:
    """The page decoded as `page_type`, or InvalidResponse: a body that is not what the API promises
    changes nothing. msgspec decodes straight from bytes into the few fields we read (see bench/decode.py)."""
    try:
        page = msgspec.json.decode(raw, type=page_type)
    except msgspec.ValidationError as exc:
        raise InvalidResponse(f"{endpoint}: {exc}") from None
    except (msgspec.DecodeError, RecursionError):  # msgspec bounds nesting with a RecursionError
        raise InvalidResponse(f"{endpoint} answered 200 with a body that is not JSON") from None
    if len(page.results) > limit:
        raise InvalidResponse(f"{endpoint} returned {len(page.results)} items for limit {limit}")
    return page
