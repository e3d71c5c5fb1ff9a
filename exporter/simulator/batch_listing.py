"""The batch listings: validate a ListBatchesRequest body, then filter, order and page a snapshot of batches.

Serves POST /v1/batches/list (organisation-wide, or one namespace) and POST /v1/buckets/{bucket}/batches/list.
Paging is in the body (API 0.81 style: `limit` 1..1000, default 100; `offset` at most 10,000; `cursor`), and
query parameters are ignored, since neither route declares any. Batches come newest first: created_at
descending, ties broken by batch_id descending. A cursor is the key of the last batch served (see paging.py),
so a batch created while a client pages lands before its position and is not read at all by that walk, and
a batch removed meanwhile never shifts a page not yet read: every batch that existed throughout is read once.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .batches import SimBatch
from .enums import TASK_STATUSES
from .errors import ValidationFailed, enum_error, field_error
from .paging import (
    SortKey,
    cursor_pagination_json,
    decode_cursor,
    encode_cursor,
    query_fingerprint,
    window,
)
from .params import Errors, Paging, object_body, parse_paging
from .render import batch_json

BATCH_BODY_KEYS: Final = ("status", "collection_id", "bucket_id", "namespace_id", "offset", "limit", "cursor")
DEFAULT_BATCH_LIMIT: Final = 100  # ListBatchesRequest's default
_STRING_KEYS: Final = ("collection_id", "bucket_id", "namespace_id", "cursor")


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A valid ListBatchesRequest; `namespace` is the body's namespace_id (a name or id) for the route to
    resolve against X-Namespace."""

    status: str | None
    collection_id: str | None
    bucket_id: str | None
    namespace: str | None
    paging: Paging


def parse_batch_request(body: object) -> BatchRequest:
    """The request a body asks for; raises ValidationFailed (422) for any undeclared key or bad value."""
    errors: Errors = []
    request = object_body(body, BATCH_BODY_KEYS, errors)
    paging = parse_paging({}, errors, body=request, default_limit=DEFAULT_BATCH_LIMIT)
    status = request.get("status")
    if status is not None and not (isinstance(status, str) and status in TASK_STATUSES):
        errors.append(enum_error(("body", "status"), status, TASK_STATUSES))
    strings: dict[str, str | None] = {}
    for key in _STRING_KEYS:
        value = request.get(key)
        if value is None or isinstance(value, str):
            strings[key] = value
        else:
            errors.append(field_error(("body", key), "Input should be a valid string", "string_type", value))
    if errors:
        raise ValidationFailed(errors)
    return BatchRequest(
        status=status if isinstance(status, str) else None,
        collection_id=strings["collection_id"],
        bucket_id=strings["bucket_id"],
        namespace=strings["namespace_id"],
        paging=dataclasses.replace(paging, cursor=strings["cursor"] or None),
    )


def list_batches(
    batches: Sequence[SimBatch],
    request: BatchRequest,
    *,
    scope: str | None,
    bucket: str | None,
    cursor_pagination: bool,
) -> dict[str, object]:
    """One ListBatchesResponse page of `batches` (already limited to the namespace `scope`, if any), of one
    `bucket` when the route names one.

    Without `cursor_pagination` the server behaves like API 0.81: the cursor is ignored and the response is
    `{results, total_count}` with no pagination object, so clients page by offset.
    """
    identity = query_fingerprint(scope, bucket, request.status, request.collection_id, request.bucket_id)
    paging = request.paging
    after = None
    if cursor_pagination and paging.cursor:
        after = decode_cursor(paging.cursor, identity, ("body", "cursor"))
    wanted_buckets = {b for b in (bucket, request.bucket_id) if b is not None}
    matching = [
        batch
        for batch in batches
        if (request.status is None or batch.status == request.status)
        and all(batch.bucket_id == wanted for wanted in wanted_buckets)
        and (request.collection_id is None or request.collection_id in batch.collection_ids)
    ]
    ordered = sorted(matching, key=_key)
    chosen, more = window(ordered, _key, True, after, paging)
    page: dict[str, object] = {
        "results": [batch_json(batch) for batch in chosen],
        "total_count": len(ordered),
    }
    if cursor_pagination:
        next_cursor = encode_cursor(_key(chosen[-1]), identity) if more and chosen else None
        page["pagination"] = cursor_pagination_json(paging, len(ordered), next_cursor)
    return page


def _key(batch: SimBatch) -> SortKey:
    """The order of batches in paging.py's (type rank, value, id) form; read backwards: newest first."""
    return (2, batch.created_at, batch.batch_id)
