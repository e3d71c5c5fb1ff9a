"""Request parameters validated as the real API's FastAPI/pydantic layer does, errors collected for one 422.

Page size defaults to 10 (`DEFAULT_LIMIT`): neither the spec nor the SDK documents a default for the list
routes, and 10 is the documented default of the neighbouring `/v1/buckets/list`. A client that wants a
particular page size must send `limit`.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import field_error

DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 1000
MAX_OFFSET: Final = 10_000  # offset paging stops here; deeper listings must follow the cursor
CURSOR_PARAMS: Final = ("cursor", "next_cursor", "after")  # the SDK sends any of these

_INTEGER = re.compile(r"[+-]?\d+")
_TRUE: Final = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE: Final = frozenset({"0", "off", "f", "false", "n", "no"})

Errors = list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class Paging:
    """The page a client asked for."""

    limit: int
    offset: int
    cursor: str | None
    include_total: bool


def parse_paging(
    query: Mapping[str, str],
    errors: Errors,
    body: Mapping[str, object] | None = None,
    *,
    default_limit: int = DEFAULT_LIMIT,
) -> Paging:
    """Read limit/page_size, offset/page, the cursor and include_total; body values (namespaces) win.

    Routes that document another default page size (batches: 100) pass it as `default_limit`.
    """
    limit = _integer("limit", query, body, errors, bounds=(1, MAX_LIMIT))
    page_size = _integer("page_size", query, body, errors, bounds=(1, MAX_LIMIT))
    offset = _integer("offset", query, body, errors, bounds=(0, MAX_OFFSET))
    page = _integer("page", query, body, errors, bounds=(1, None))
    size = limit or page_size or default_limit  # `limit` wins over its alias
    if offset is None:
        offset = (page - 1) * size if page else 0
    cursor = next((query[name] for name in CURSOR_PARAMS if query.get(name)), None)
    return Paging(size, offset, cursor, _boolean("include_total", query, errors))


def object_body(body: object, allowed: Sequence[str], errors: Errors) -> dict[str, object]:
    """The JSON body as an object whose keys are all declared; no body at all means `{}`.

    Undeclared keys are refused with `extra_forbidden`, as the API does since 2026-11-02, and the message
    names the accepted keys.
    """
    if body is None:
        return {}
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        errors.append(field_error(("body",), msg, "model_attributes_type", body))
        return {}
    accepted = ", ".join(allowed)
    for key in body:
        if key not in allowed:
            msg = f"Extra inputs are not permitted; accepted keys: {accepted}"
            errors.append(
                field_error(("body", key), msg, "extra_forbidden", body[key], {"accepted": list(allowed)})
            )
    return body


def _integer(
    name: str,
    query: Mapping[str, str],
    body: Mapping[str, object] | None,
    errors: Errors,
    *,
    bounds: tuple[int, int | None],
) -> int | None:
    low, high = bounds
    raw: object
    if body is not None and body.get(name) is not None:
        raw, loc = body[name], ("body", name)
        if not isinstance(raw, int) or isinstance(raw, bool):
            errors.append(field_error(loc, "Input should be a valid integer", "int_type", raw))
            return None
        value = raw
    elif name in query:
        raw, loc = query[name], ("query", name)
        if not _INTEGER.fullmatch(query[name].strip()):
            msg = "Input should be a valid integer, unable to parse string as an integer"
            errors.append(field_error(loc, msg, "int_parsing", raw))
            return None
        value = int(query[name])
    else:
        return None
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        errors.append(field_error(loc, msg, "greater_than_equal", raw, {"ge": low}))
        return None
    if high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        errors.append(field_error(loc, msg, "less_than_equal", raw, {"le": high}))
        return None
    return value


def _boolean(name: str, query: Mapping[str, str], errors: Errors) -> bool:
    text = query.get(name)
    if text is None or text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE:
        return True
    errors.append(field_error(("query", name), "Input should be a valid boolean", "bool_parsing", text))
    return False
