"""Ordering, keyset cursors and the pagination object of list responses.

Items are ordered by a total key `(type rank, value, id)`; the id breaks ties, so every key is unique. A
cursor is that key of the last item served plus a fingerprint of the query, base64url JSON: the next page
starts strictly after the key in the same order. Items created or removed between two requests therefore
neither repeat nor push others out of the listing, which offset paging cannot promise.
"""

import base64
import binascii
import hashlib
import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import invalid
from .filters import Missing
from .params import Paging

SortKey = tuple[int, Any, str]
T = TypeVar("T")


def rank(value: object) -> tuple[int, Any]:
    """A comparable form of any JSON value: null/missing first, then booleans, numbers, strings, the rest."""
    if value is None or isinstance(value, Missing):
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True, default=str))


def encode_cursor(key: SortKey, fingerprint: str) -> str:
    """An opaque cursor: the position after `key` in the listing identified by `fingerprint`."""
    raw = json.dumps([fingerprint, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def query_fingerprint(*identity: object) -> str:
    """A short digest of what defines a listing (scope, filters, order), to bind its cursors to it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decode_cursor(cursor: str, fingerprint: str, loc: tuple[str, ...] = ("query", "cursor")) -> SortKey:
    """The key a cursor points after; 422 (at `loc`) when it is not ours or belongs to another query."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise invalid(loc, "Value error, invalid cursor", "value_error", cursor) from None
    if not _well_formed(decoded):
        raise invalid(loc, "Value error, invalid cursor", "value_error", cursor)
    if decoded[0] != fingerprint:
        msg = "Value error, cursor was issued for a different query (filters, sort or namespace changed)"
        raise invalid(loc, msg, "value_error", cursor)
    return (decoded[1], decoded[2], decoded[3])


def _well_formed(decoded: object) -> bool:
    if not isinstance(decoded, list) or len(decoded) != 4:
        return False
    _, kind, value, ident = decoded
    value_types: dict[object, tuple[type, ...]] = {
        0: (int,),
        1: (int,),
        2: (int, float),
        3: (str,),
        4: (str,),
    }
    expected = value_types.get(kind) if isinstance(kind, int) and not isinstance(kind, bool) else None
    return (
        expected is not None
        and isinstance(value, expected)
        and not isinstance(value, bool)
        and isinstance(ident, str)
    )


def window(
    ordered: Sequence[T],
    key: Callable[[T], SortKey],
    descending: bool,
    after: SortKey | None,
    paging: Paging,
) -> tuple[list[T], bool]:
    """The page of a list sorted ascending by `key`, read in the requested direction; and whether more follow.

    With a cursor key the page starts strictly after it; otherwise at the offset.
    """
    size = len(ordered)
    if after is None:
        start = paging.offset
    elif descending:
        start = size - bisect_left(ordered, after, key=key)
    else:
        start = bisect_right(ordered, after, key=key)
    stop = min(size, start + paging.limit)
    if descending:
        return [ordered[size - 1 - i] for i in range(start, stop)], stop < size
    return list(ordered[start:stop]), stop < size


def cursor_pagination_json(paging: Paging, total: int, next_cursor: str | None) -> dict[str, object]:
    """Today's PaginationResponse: follow next_cursor; totals only on request (`include_total=true`)."""
    return {
        "total": total if paging.include_total else None,
        "page": None if paging.cursor else paging.offset // paging.limit + 1,
        "page_size": paging.limit,
        "total_pages": math.ceil(total / paging.limit) if paging.include_total else None,
        "next_page": None,
        "previous_page": None,
        "next_cursor": next_cursor,
    }


def legacy_pagination_json(paging: Paging, total: int, path: str) -> dict[str, object]:
    """The older PaginationResponse: page counts and relative page links, no cursor field at all."""
    after = paging.offset + paging.limit
    before = max(0, paging.offset - paging.limit)
    return {
        "total": total,
        "page": paging.offset // paging.limit + 1,
        "page_size": paging.limit,
        "total_pages": math.ceil(total / paging.limit),
        "next_page": f"{path}?offset={after}&limit={paging.limit}" if after < total else None,
        "previous_page": f"{path}?offset={before}&limit={paging.limit}" if paging.offset > 0 else None,
    }
