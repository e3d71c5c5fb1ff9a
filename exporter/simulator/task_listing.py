"""POST /v1/tasks/list: validate the ListTasksRequest body, then filter, order and page a snapshot of tasks.

The default order is `created_at` ascending, ties broken by task_id; a `sort` on any field keeps task_id as
the tie-breaker.

`list_tasks` filters and sorts the snapshot it is given on every request. `TaskListings`, which the server
uses, gives the same answers from a cache, so that paging through a million tasks does not sort a million
tasks a thousand times: per (scope, query), the filtered and sorted tasks of the world's current version of
that scope; any change of the scope's tasks makes a new version, and the next request sorts again. Two
queries skip the cache: one that names its task ids (a lookup of those ids), and one made of range conditions
on the sort field (a bisection of the unfiltered listing, which is cached).
"""

import hashlib
import json
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final, overload

from .enums import SORT_DIRECTIONS, TASK_STATUSES, TASK_TYPES
from .errors import ValidationFailed, enum_error, field_error
from .filters import Predicate, all_of, compile_filters, operator_at, pinned_ids, resolver, sort_bounds
from .paging import (
    SortKey,
    cursor_pagination_json,
    decode_cursor,
    encode_cursor,
    legacy_pagination_json,
    rank,
    window,
)
from .params import Errors, Paging, object_body, parse_paging
from .profile import DOCUMENTED, ApiProfile
from .render import task_json
from .timestamps import to_micros
from .world import SimTask, World

TASK_BODY_KEYS: Final = ("status", "task_type", "filters", "sort", "search")
PATH: Final = "/v1/tasks/list"
DEFAULT_SORT: Final = ("created_at", False)  # ascending: the documented default direction

_STRING_FIELDS: Final = frozenset({"task_id", "task_type", "status"})
_FAST_FIELDS: Final = _STRING_FIELDS | {"created_at", "updated_at"}  # always set, always one type


# Cached listings are lists of references to the world's tasks: 8 bytes a task, shared between listings.
MAX_CACHED_LISTINGS: Final = 64
MAX_CACHED_TASKS: Final = 4_000_000


@dataclass(frozen=True, slots=True)
class _Request:
    predicate: Predicate | None
    sort_field: str
    descending: bool
    fingerprint: str
    """Binds cursors to the listing: scope, filters, order."""
    selection: str
    """What is listed, in which order (the direction aside): the cache's key."""
    ids: frozenset[str] | None
    """Task ids outside which nothing matches, when the filters name them."""
    bounds: list[tuple[str, int]] | None
    """When the query is nothing but range conditions on the (timestamp) sort field: those conditions."""


def list_tasks(
    tasks: Sequence[SimTask],
    body: object,
    query: Mapping[str, str],
    *,
    scope: str | None,
    cursor_pagination: bool,
    profile: ApiProfile = DOCUMENTED,
) -> dict[str, object]:
    """One ListTasksResponse page of `tasks` (already limited to the namespace `scope`, if any).

    Raises ValidationFailed (422) for a bad parameter, body or cursor. Without `cursor_pagination` the server
    behaves like the older API: cursors are ignored and the pagination object has the older fields only.
    The profile says whether filters and sort are honoured, which operator is refused, what a task shows.
    """
    paging, request, after = _parse(body, query, scope, cursor_pagination, profile)
    return _page(
        _select(tasks, request),
        request,
        paging,
        after,
        cursor_pagination=cursor_pagination,
        profile=profile,
    )


class TaskListings:
    """`list_tasks` over a World's current tasks, with the filtered, sorted listings cached per version.

    Safe to call from the server's threads; requests that find their listing stale build it one at a time,
    so concurrent pages of a new version sort it once.
    """

    def __init__(
        self, world: World, *, max_listings: int = MAX_CACHED_LISTINGS, max_tasks: int = MAX_CACHED_TASKS
    ) -> None:
        self._world = world
        self._max_listings = max_listings
        self._max_tasks = max_tasks
        self._listings: OrderedDict[tuple[str | None, str], tuple[int, list[SimTask]]] = OrderedDict()
        self._cached_tasks = 0
        self._lock = threading.Lock()  # guards _listings
        self._building = threading.RLock()  # one build at a time (a bounded listing builds its base)
        self.builds = 0
        """Listings sorted so far: what a cache miss costs, for tests and benchmarks."""

    def page(
        self,
        body: object,
        query: Mapping[str, str],
        *,
        scope: str | None,
        cursor_pagination: bool,
        profile: ApiProfile = DOCUMENTED,
    ) -> dict[str, object]:
        """What `list_tasks(world.tasks(scope), ...)` answers, without sorting the tasks again.

        The cache key is the listing the profile makes of the request (ignored filters or sort drop out of
        it), so requests that differ only in what the profile ignores share one listing.
        """
        paging, request, after = _parse(body, query, scope, cursor_pagination, profile)
        return _page(
            self._ordered(request, scope),
            request,
            paging,
            after,
            cursor_pagination=cursor_pagination,
            profile=profile,
        )

    def _ordered(self, request: _Request, scope: str | None) -> Sequence[SimTask]:
        if request.ids is not None:
            return _select(self._world.tasks_by_id(request.ids, scope), request)
        if request.bounds is None:
            return self._cached(scope, request.selection, lambda tasks: _select(tasks, request))
        base = _selection(scope, request.sort_field)
        unfiltered = self._cached(scope, base, lambda tasks: _select(tasks, _unfiltered(request)))
        start, stop = _run(unfiltered, request.sort_field, request.bounds)
        return _Run(unfiltered, start, stop)

    def _cached(
        self, scope: str | None, selection: str, build: Callable[[list[SimTask]], list[SimTask]]
    ) -> list[SimTask]:
        key = (scope, selection)
        ordered = self._fresh(key)
        if ordered is not None:
            return ordered
        with self._building:
            ordered = self._fresh(key)  # another thread may have built it meanwhile
            if ordered is not None:
                return ordered
            version, tasks = self._world.versioned_tasks(scope)
            ordered = build(tasks)
            self.builds += 1
            self._store(key, version, ordered)
            return ordered

    def _fresh(self, key: tuple[str | None, str]) -> list[SimTask] | None:
        """The cached listing, if it is of the scope's current version."""
        with self._lock:
            entry = self._listings.get(key)
            if entry is None:
                return None
            self._listings.move_to_end(key)
        version, ordered = entry
        return ordered if version == self._world.version(key[0]) else None

    def _store(self, key: tuple[str | None, str], version: int, ordered: list[SimTask]) -> None:
        with self._lock:
            old = self._listings.pop(key, None)
            self._cached_tasks += len(ordered) - (len(old[1]) if old else 0)
            self._listings[key] = (version, ordered)
            while len(self._listings) > 1 and (  # the newest stays, however big
                len(self._listings) > self._max_listings or self._cached_tasks > self._max_tasks
            ):
                _, (_, evicted) = self._listings.popitem(last=False)
                self._cached_tasks -= len(evicted)


class _Run(Sequence[SimTask]):
    """`tasks[start:stop]` without the copy: a page of a run of a million tasks reads a thousand."""

    def __init__(self, tasks: Sequence[SimTask], start: int, stop: int) -> None:
        self._tasks, self._start, self._len = tasks, start, max(0, stop - start)

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> SimTask: ...
    @overload
    def __getitem__(self, index: slice) -> list[SimTask]: ...
    def __getitem__(self, index: int | slice) -> SimTask | list[SimTask]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if not -self._len <= index < self._len:
            raise IndexError(index)
        return self._tasks[self._start + index % self._len]

    def __iter__(self) -> Iterator[SimTask]:
        return (self._tasks[i] for i in range(self._start, self._start + self._len))


def _run(ordered: Sequence[SimTask], field: str, bounds: list[tuple[str, int]]) -> tuple[int, int]:
    """Where the tasks meeting every bound sit in `ordered` (ascending by `field`, a timestamp): the
    conditions compare whole microseconds, which never decrease along the listing."""
    seconds = attrgetter(field)

    def key(task: SimTask) -> int:
        return to_micros(seconds(task))

    start, stop = 0, len(ordered)
    for operator, instant in bounds:
        if operator in ("gt", "gte"):
            find = bisect_right if operator == "gt" else bisect_left
            start = max(start, find(ordered, instant, key=key))
        else:
            find = bisect_right if operator == "lte" else bisect_left
            stop = min(stop, find(ordered, instant, key=key))
    return start, stop


def _parse(
    body: object, query: Mapping[str, str], scope: str | None, cursor_pagination: bool, profile: ApiProfile
) -> tuple[Paging, _Request, SortKey | None]:
    """The page asked for, the query, and the cursor's position; ValidationFailed (422) when any is bad."""
    errors: Errors = []
    paging = parse_paging(query, errors)
    request = _parse_body(body, scope, errors, profile)
    if errors:
        raise ValidationFailed(errors)
    after = None
    if cursor_pagination and paging.cursor:
        after = decode_cursor(paging.cursor, request.fingerprint)
    return paging, request, after


def _select(tasks: Sequence[SimTask], request: _Request) -> list[SimTask]:
    """The tasks the query matches, ascending in its order."""
    matching = tasks if request.predicate is None else [t for t in tasks if request.predicate(t)]
    sort_key, _ = _ordering(request.sort_field)
    return sorted(matching, key=sort_key)


def _unfiltered(request: _Request) -> _Request:
    return _Request(None, request.sort_field, request.descending, "", "", None, None)


def _page(
    ordered: Sequence[SimTask],
    request: _Request,
    paging: Paging,
    after: SortKey | None,
    *,
    cursor_pagination: bool,
    profile: ApiProfile,
) -> dict[str, object]:
    _, cursor_key = _ordering(request.sort_field)
    chosen, more = window(ordered, cursor_key, request.descending, after, paging)
    pagination: dict[str, object]
    if cursor_pagination:
        next_cursor = encode_cursor(cursor_key(chosen[-1]), request.fingerprint) if more and chosen else None
        pagination = cursor_pagination_json(paging, len(ordered), next_cursor)
    else:
        pagination = legacy_pagination_json(paging, len(ordered), PATH)
    return {"results": [task_json(task, profile) for task in chosen], "pagination": pagination}


def _parse_body(raw: object, scope: str | None, errors: Errors, profile: ApiProfile) -> _Request:
    """The query a body asks for, as the profile's server reads it: filters and sort it ignores are still
    validated, then dropped, so the listing is the one made without them."""
    body = object_body(raw, TASK_BODY_KEYS, errors)
    predicates: list[Predicate] = []
    status, task_type, search = body.get("status"), body.get("task_type"), body.get("search")
    if status is not None:
        if status in TASK_STATUSES:
            predicates.append(lambda task: task.status == status)
        else:
            errors.append(enum_error(("body", "status"), status, TASK_STATUSES))
    if task_type is not None:
        if task_type in TASK_TYPES:
            predicates.append(lambda task: task.task_type == task_type)
        else:
            errors.append(enum_error(("body", "task_type"), task_type, TASK_TYPES))
    filters = body.get("filters")
    if filters is not None:
        try:
            predicate = compile_filters(filters)
        except ValidationFailed as exc:
            errors.extend(exc.errors)
        else:
            if profile.refuse_operator is not None:
                _refuse(filters, profile.refuse_operator, errors)
            if profile.filters_honoured:
                predicates.append(predicate)
    if not profile.filters_honoured:
        filters = None  # as if none were sent: the listing, its cursors and its cache key
    if isinstance(search, str):
        predicates.append(_search(search))
    elif search is not None:
        errors.append(
            field_error(("body", "search"), "Input should be a valid string", "string_type", search)
        )
    sort_field, descending = _parse_sort(body.get("sort"), errors)
    if not profile.sort_honoured:
        sort_field, descending = DEFAULT_SORT
    identity = [scope, status, task_type, filters, sort_field, descending, search]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    if errors:
        return _Request(None, sort_field, descending, digest[:16], "", None, None)
    plain = status is None and task_type is None and search is None
    return _Request(
        all_of(predicates) if predicates else None,
        sort_field,
        descending,
        digest[:16],
        _selection(scope, sort_field, status=status, task_type=task_type, filters=filters, search=search),
        pinned_ids(filters),
        sort_bounds(filters, sort_field) if plain and filters is not None else None,
    )


def _selection(
    scope: str | None,
    sort_field: str,
    *,
    status: object = None,
    task_type: object = None,
    filters: object = None,
    search: object = None,
) -> str:
    """The cache key of a listing: the fingerprint's identity but the direction (both read one listing)."""
    identity = [scope, status, task_type, filters, sort_field, search]
    return json.dumps(identity, sort_keys=True, default=str)


def _refuse(filters: object, operator: str, errors: Errors) -> None:
    """A server that does not support `operator` refuses a filter using it with 422, naming it."""
    loc = operator_at(filters, operator)
    if loc is not None:
        msg = f"Value error, filter operator '{operator}' is not supported"
        errors.append(field_error(loc, msg, "value_error", operator))


def _search(term: str) -> Predicate:
    """Case-insensitive substring of task_id, task_type or status, as documented."""
    needle = term.casefold()
    return lambda task: any(needle in text.casefold() for text in (task.task_id, task.task_type, task.status))


def _parse_sort(sort: object, errors: Errors) -> tuple[str, bool]:
    if sort is None:
        return DEFAULT_SORT
    loc = ("body", "sort")
    if not isinstance(sort, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        errors.append(field_error(loc, msg, "model_attributes_type", sort))
        return DEFAULT_SORT
    field, direction = sort.get("field"), sort.get("direction")
    if field is None:
        errors.append(field_error((*loc, "field"), "Field required", "missing", sort))
    elif not isinstance(field, str):
        errors.append(field_error((*loc, "field"), "Input should be a valid string", "string_type", field))
    if direction is not None and direction not in SORT_DIRECTIONS:
        errors.append(enum_error((*loc, "direction"), direction, SORT_DIRECTIONS))
    return (field if isinstance(field, str) else "created_at"), direction == "desc"


def _ordering(field: str) -> tuple[Callable[[SimTask], Any], Callable[[SimTask], SortKey]]:
    """A key to sort tasks by and the cursor key of a task; both give the same order.

    The common fields sort on a C-level attrgetter (their rank never varies), which keeps a request over
    50,000 tasks in milliseconds; other fields go through the generic ranked path.
    """
    if field in _FAST_FIELDS:
        kind = 3 if field in _STRING_FIELDS else 2
        fast = attrgetter(field, "task_id")

        def cursor_key(task: SimTask) -> SortKey:
            value, task_id = fast(task)
            return (kind, value, task_id)

        return fast, cursor_key
    read = resolver(field)

    def ranked(task: SimTask) -> SortKey:
        kind, value = rank(read(task))
        return (kind, value, task.task_id)

    return ranked, ranked
