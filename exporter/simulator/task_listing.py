"""POST /v1/tasks/list: validate the ListTasksRequest body, then filter, order and page a snapshot of tasks.

The default order is `created_at` ascending, ties broken by task_id; a `sort` on any field keeps task_id as
the tie-breaker. Each request sorts its snapshot once and serves one page of it.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from .enums import SORT_DIRECTIONS, TASK_STATUSES, TASK_TYPES
from .errors import ValidationFailed, enum_error, field_error
from .filters import Predicate, all_of, compile_filters, resolver
from .paging import (
    SortKey,
    cursor_pagination_json,
    decode_cursor,
    encode_cursor,
    legacy_pagination_json,
    rank,
    window,
)
from .params import Errors, object_body, parse_paging
from .render import task_json
from .world import SimTask

TASK_BODY_KEYS: Final = ("status", "task_type", "filters", "sort", "search")
PATH: Final = "/v1/tasks/list"

_STRING_FIELDS: Final = frozenset({"task_id", "task_type", "status"})
_FAST_FIELDS: Final = _STRING_FIELDS | {"created_at", "updated_at"}  # always set, always one type


@dataclass(frozen=True, slots=True)
class _Request:
    predicate: Predicate | None
    sort_field: str
    descending: bool
    fingerprint: str


def list_tasks(
    tasks: Sequence[SimTask],
    body: object,
    query: Mapping[str, str],
    *,
    scope: str | None,
    cursor_pagination: bool,
    include_timestamps: bool,
) -> dict[str, object]:
    """One ListTasksResponse page of `tasks` (already limited to the namespace `scope`, if any).

    Raises ValidationFailed (422) for a bad parameter, body or cursor. Without `cursor_pagination` the server
    behaves like the older API: cursors are ignored and the pagination object has the older fields only.
    """
    errors: Errors = []
    paging = parse_paging(query, errors)
    request = _parse_body(body, scope, errors)
    if errors:
        raise ValidationFailed(errors)
    after = None
    if cursor_pagination and paging.cursor:
        after = decode_cursor(paging.cursor, request.fingerprint)
    matching = tasks if request.predicate is None else [t for t in tasks if request.predicate(t)]
    sort_key, cursor_key = _ordering(request.sort_field)
    ordered = sorted(matching, key=sort_key)
    chosen, more = window(ordered, cursor_key, request.descending, after, paging)
    pagination: dict[str, object]
    if cursor_pagination:
        next_cursor = encode_cursor(cursor_key(chosen[-1]), request.fingerprint) if more and chosen else None
        pagination = cursor_pagination_json(paging, len(ordered), next_cursor)
    else:
        pagination = legacy_pagination_json(paging, len(ordered), PATH)
    return {"results": [task_json(task, include_timestamps) for task in chosen], "pagination": pagination}


def _parse_body(raw: object, scope: str | None, errors: Errors) -> _Request:
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
    if body.get("filters") is not None:
        try:
            predicates.append(compile_filters(body["filters"]))
        except ValidationFailed as exc:
            errors.extend(exc.errors)
    if isinstance(search, str):
        predicates.append(_search(search))
    elif search is not None:
        errors.append(
            field_error(("body", "search"), "Input should be a valid string", "string_type", search)
        )
    sort_field, descending = _parse_sort(body.get("sort"), errors)
    identity = [scope, status, task_type, body.get("filters"), sort_field, descending, search]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return _Request(all_of(predicates) if predicates else None, sort_field, descending, digest[:16])


def _search(term: str) -> Predicate:
    """Case-insensitive substring of task_id, task_type or status, as documented."""
    needle = term.casefold()
    return lambda task: any(needle in text.casefold() for text in (task.task_id, task.task_type, task.status))


def _parse_sort(sort: object, errors: Errors) -> tuple[str, bool]:
    if sort is None:
        return "created_at", False
    loc = ("body", "sort")
    if not isinstance(sort, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        errors.append(field_error(loc, msg, "model_attributes_type", sort))
        return "created_at", False
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
