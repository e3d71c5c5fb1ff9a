"""The `filters` object of a list request, compiled once per request into a predicate over tasks.

A filter is a logical operator `{"AND": [...], "OR": [...], "NOT": [...], "case_sensitive": bool}`, nested to
`MAX_DEPTH`; its items are further operators or conditions `{"field", "operator", "value"}` (operator defaults
to `eq`), and any other key is the shorthand `{"field.path": value}` for equality. Dotted paths reach into the
task as the API renders it (`additional_data.bucket_id`). Timestamp fields compare as instants, so the ISO
strings the server emits (or epoch seconds) can be sent back. String matching ignores case unless
`case_sensitive` is true. The geo operators are refused with 422: tasks have no coordinates.

A listing may filter a million tasks, so the common conditions (on task_id, task_type, status, created_at,
updated_at, which every task has, each always of one type) compile to a direct comparison of the attribute;
every other condition goes through the generic path, which reads any dotted field of any type. And two shapes
need no scan at all (see `pinned_ids` and `sort_bounds`): a conjunction that names the task ids, and one of
range conditions on the listing's sort field.
"""

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, ge, gt, le, lt
from typing import Any, Final, TypeGuard

from .enums import FILTER_OPERATORS
from .errors import ValidationFailed, enum_error, invalid
from .timestamps import parse_micros, to_micros
from .world import SimTask

MAX_DEPTH: Final = 5
_LOGICAL_KEYS: Final = ("AND", "OR", "NOT")
_GEO_OPERATORS: Final = frozenset({"geo_radius", "geo_bounding_box", "geo_polygon"})

Loc = tuple[str | int, ...]
Predicate = Callable[[SimTask], bool]
Resolver = Callable[[SimTask], object]


class Missing(enum.Enum):
    """A field the task does not have (distinct from a field that is null)."""

    MISSING = enum.auto()


MISSING: Final = Missing.MISSING


def _completed_micros(task: SimTask) -> int | Missing:
    """Only finished tasks show `completed_at` at all."""
    return MISSING if task.completed_at is None else to_micros(task.completed_at)


def _error(task: SimTask) -> object:
    return task.additional_data.get("error") if task.status == "FAILED" else None


# The task's fields as `render.task_json` shows them, except that timestamps are epoch microseconds.
FIELDS: Final[Mapping[str, Resolver]] = {
    "task_id": lambda t: t.task_id,
    "task_type": lambda t: t.task_type,
    "status": lambda t: t.status,
    "inputs": lambda t: list(t.inputs),
    "outputs": lambda t: None,
    "additional_data": lambda t: t.additional_data,
    "error": _error,
    "cancellation": lambda t: None,
    "queue_position": lambda t: None,
    "estimated_wait_minutes": lambda t: None,
    "created_at": lambda t: to_micros(t.created_at),
    "updated_at": lambda t: to_micros(t.updated_at),
    "completed_at": _completed_micros,
}
TIMESTAMP_FIELDS: Final = frozenset({"created_at", "updated_at", "completed_at"})
# Fields every task has, always a string or always a number: a condition on them reads the attribute directly.
_TEXT_FIELDS: Final = frozenset({"task_id", "task_type", "status"})
_INSTANT_FIELDS: Final = frozenset({"created_at", "updated_at"})
_COMPARISONS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {"gt": gt, "gte": ge, "lt": lt, "lte": le}


def resolver(path: str) -> Resolver:
    """A function reading a dotted field path from a task, or MISSING."""
    head, _, rest = path.partition(".")
    top = FIELDS.get(head)
    if top is None:
        return lambda _task: MISSING
    if not rest:
        return top
    keys = rest.split(".")

    def nested(task: SimTask) -> object:
        value = top(task)
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return MISSING
            value = value[key]
        return value

    return nested


def compile_filters(spec: object, loc: Loc = ("body", "filters")) -> Predicate:
    """Validate a filters object and return its predicate; raises ValidationFailed as the API's 422."""
    return _logical(spec, loc, case_sensitive=False, depth=1)


def _logical(spec: object, loc: Loc, case_sensitive: bool, depth: int) -> Predicate:
    if not isinstance(spec, dict):
        raise invalid(loc, "Input should be a valid dictionary", "dict_type", spec)
    if depth > MAX_DEPTH:
        raise invalid(loc, f"Value error, filters nest deeper than {MAX_DEPTH} levels", "value_error", spec)
    sensitive = _flag(spec.get("case_sensitive"), (*loc, "case_sensitive"), case_sensitive)
    parts: list[Predicate] = []
    for key, value in spec.items():
        if key == "case_sensitive" or (key in _LOGICAL_KEYS and value is None):
            continue
        if key not in _LOGICAL_KEYS:
            parts.append(_condition(key, "eq", value, sensitive, (*loc, key)))
            continue
        if not isinstance(value, list):
            raise invalid((*loc, key), "Input should be a valid list", "list_type", value)
        children = [_node(item, (*loc, key, i), sensitive, depth + 1) for i, item in enumerate(value)]
        parts.append(_combine(key, children))
    return all_of(parts)


def _combine(key: str, children: Sequence[Predicate]) -> Predicate:
    if key == "AND":
        return all_of(children)
    if key == "OR":
        # An empty OR constrains nothing rather than excluding everything.
        return any_of(children) if children else (lambda _task: True)
    either = any_of(children) if children else (lambda _task: False)
    return lambda task: not either(task)


def all_of(parts: Sequence[Predicate]) -> Predicate:
    """A predicate true when every part is (true for no parts)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda task: first(task) and second(task)
    return lambda task: all(part(task) for part in parts)


def any_of(parts: Sequence[Predicate]) -> Predicate:
    """A predicate true when some part is (false for no parts)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda task: first(task) or second(task)
    return lambda task: any(part(task) for part in parts)


def _node(item: object, loc: Loc, case_sensitive: bool, depth: int) -> Predicate:
    if isinstance(item, dict) and isinstance(item.get("field"), str):
        # A FilterCondition has no case_sensitive of its own: the enclosing operator's applies. (The SDK
        # serialises conditions through its LogicalOperator model, which adds `"case_sensitive": false`.)
        if "value" not in item:
            raise invalid((*loc, "value"), "Field required", "missing", item)
        operator = item.get("operator")
        return _condition(
            item["field"], "eq" if operator is None else operator, item["value"], case_sensitive, loc
        )
    return _logical(item, loc, case_sensitive, depth)


def _flag(value: object, loc: Loc, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(loc, "Input should be a valid boolean", "bool_type", value)
    return value


def _condition(path: str, operator: object, value: object, case_sensitive: bool, loc: Loc) -> Predicate:
    if not isinstance(operator, str) or operator not in FILTER_OPERATORS:
        raise ValidationFailed([enum_error((*loc, "operator"), operator, FILTER_OPERATORS)])
    if operator in _GEO_OPERATORS:
        raise invalid((*loc, "operator"), f"Value error, {operator} is not supported on tasks", "value_error")
    if path in TIMESTAMP_FIELDS:
        value = _instant(value, (*loc, "value"))
    test = _test(operator, value, case_sensitive, (*loc, "value"))  # validates the value in every case
    direct = _direct(path, operator, value, case_sensitive)
    if direct is not None:
        return direct
    read = resolver(path)
    return lambda task: test(read(task))


def _direct(path: str, operator: str, value: object, case_sensitive: bool) -> Predicate | None:
    """The same test as the generic path, as one attribute read and one comparison, for the shapes where
    that is exact: a string field against strings, a timestamp field against an instant. Else None."""
    if path in _TEXT_FIELDS:
        read: Callable[[SimTask], str] = attrgetter(path)
        fold = _folder(case_sensitive)
        if operator in ("eq", "ne") and isinstance(value, str):
            want = fold(value)
            if operator == "ne":
                return (
                    (lambda t: read(t) != want) if case_sensitive else (lambda t: read(t).casefold() != want)
                )
            return (lambda t: read(t) == want) if case_sensitive else (lambda t: read(t).casefold() == want)
        if operator in ("in", "nin") and isinstance(value, list):
            # A string equals only a string: the other options can never match.
            options = frozenset(fold(v) for v in value if isinstance(v, str))
            if operator == "nin":
                if case_sensitive:
                    return lambda t: read(t) not in options
                return lambda t: read(t).casefold() not in options
            return (
                (lambda t: read(t) in options)
                if case_sensitive
                else (lambda t: read(t).casefold() in options)
            )
        return None
    if path in _INSTANT_FIELDS and operator in _COMPARISONS and _is_number(value):
        seconds: Callable[[SimTask], float] = attrgetter(path)
        compare, want = _COMPARISONS[operator], value
        return lambda t: compare(to_micros(seconds(t)), want)
    return None


def operator_at(spec: object, operator: str, loc: Loc = ("body", "filters")) -> Loc | None:
    """Where a valid filters object first uses `operator` (the shorthand `{"field": value}` is `eq`), else
    None: a server that refuses an operator names its place."""
    if not isinstance(spec, dict):
        return None
    for key, value in spec.items():
        if key == "case_sensitive" or (key in _LOGICAL_KEYS and value is None):
            continue
        if key not in _LOGICAL_KEYS:
            if operator == "eq":
                return (*loc, key)
            continue
        for i, item in enumerate(value if isinstance(value, list) else []):
            here = (*loc, key, i)
            if isinstance(item, dict) and isinstance(item.get("field"), str):
                if (item.get("operator") or "eq") == operator:
                    return (*here, "operator")
            elif (found := operator_at(item, operator, here)) is not None:
                return found
    return None


def pinned_ids(spec: object) -> frozenset[str] | None:
    """Task ids outside which a valid filters object matches nothing, when it pins them, else None.

    The filter pins ids when a condition `task_id` `eq` or `in` is one of the conjuncts at its top (directly,
    or inside AND); OR and NOT pin nothing. The set includes each value casefolded, so it covers the
    case-insensitive match as well (task ids are lower-case UUIDs). The caller still applies the predicate.
    """
    pinned: frozenset[str] | None = None
    for field, operator, value in _conjuncts(spec):
        if field != "task_id":
            continue
        values = [value] if operator == "eq" else value if operator == "in" else None
        if not isinstance(values, list):
            continue
        ids = frozenset(v for text in values if isinstance(text, str) for v in (text, text.casefold()))
        pinned = ids if pinned is None else pinned & ids
    return pinned


def sort_bounds(spec: object, field: str) -> list[tuple[str, int]] | None:
    """When a valid filters object is nothing but range conditions (gt, gte, lt, lte) of the timestamp
    `field` against instants, those conditions as (operator, epoch microseconds); else None.

    A listing sorted by that field then holds the matching tasks in one contiguous run, found by bisection.
    """
    if field not in _INSTANT_FIELDS:
        return None
    bounds: list[tuple[str, int]] = []
    for path, operator, value in _conjuncts(spec, whole=True):
        if path != field or not isinstance(operator, str) or operator not in _COMPARISONS:
            return None
        instant = _instant(value, ())
        if not isinstance(instant, int) or isinstance(instant, bool):
            return None
        bounds.append((operator, instant))
    return bounds


def _conjuncts(spec: object, *, whole: bool = False) -> list[tuple[str, object, object]]:
    """The conditions (field, operator, value) ANDed at the top of a filters object. With `whole`, a
    filter that is more than such conditions (an OR, a NOT) yields one unusable entry."""
    found: list[tuple[str, object, object]] = []
    if not isinstance(spec, dict):
        return [("", None, None)] if whole else found
    for key, value in spec.items():
        if key == "case_sensitive" or (key in _LOGICAL_KEYS and value is None):
            continue
        if key not in _LOGICAL_KEYS:
            found.append((key, "eq", value))
        elif key == "AND" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and isinstance(item.get("field"), str):
                    operator = item.get("operator")
                    found.append((item["field"], "eq" if operator is None else operator, item.get("value")))
                else:
                    found.extend(_conjuncts(item, whole=whole))
        elif whole:
            found.append(("", None, None))
    return found


def _instant(value: object, loc: Loc) -> object:
    """Timestamps compare as epoch microseconds, whether sent as ISO strings or epoch seconds."""
    if isinstance(value, list):
        return [_instant(item, loc) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return to_micros(value)
    if isinstance(value, str):
        try:
            return parse_micros(value)
        except ValueError:
            pass
    raise invalid(loc, "Value error, expected an ISO 8601 timestamp", "value_error", value)


def _folder(case_sensitive: bool) -> Callable[[object], object]:
    if case_sensitive:
        return lambda value: value
    return lambda value: value.casefold() if isinstance(value, str) else value


def _test(operator: str, expected: object, case_sensitive: bool, loc: Loc) -> Callable[[object], bool]:
    """The comparison of one condition, with its expected value prepared once."""
    fold = _folder(case_sensitive)
    want = fold(expected)

    def equal(actual: object) -> bool:
        if isinstance(actual, list) and not isinstance(want, list):
            return any(fold(item) == want for item in actual)
        return actual is not MISSING and fold(actual) == want

    if operator == "eq":
        return equal
    if operator == "ne":
        return lambda actual: not equal(actual)
    if operator in ("gt", "gte", "lt", "lte"):
        return _ordering(operator, want, fold)
    if operator in ("in", "nin"):
        if not isinstance(expected, list):
            raise invalid(loc, "Input should be a valid list", "list_type", expected)
        options = [fold(item) for item in expected]
        inside = _membership(options, fold)
        return inside if operator == "in" else (lambda actual: not inside(actual))
    if operator in ("exists", "is_null"):
        wanted = True if expected is None else bool(expected)
        if operator == "exists":
            return lambda actual: (actual is not MISSING) == wanted
        return lambda actual: (actual is None or actual is MISSING) == wanted
    return _text(operator, expected, case_sensitive, loc)


def _ordering(operator: str, want: object, fold: Callable[[object], object]) -> Callable[[object], bool]:
    """Numbers compare with numbers and strings with strings; anything else does not match."""
    compare: Callable[[Any, Any], bool] = {"gt": gt, "gte": ge, "lt": lt, "lte": le}[operator]

    def test(actual: object) -> bool:
        actual = fold(actual)
        if _is_number(actual) and _is_number(want):
            return compare(actual, want)
        if isinstance(actual, str) and isinstance(want, str):
            return compare(actual, want)
        return False

    return test


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _membership(options: list[object], fold: Callable[[object], object]) -> Callable[[object], bool]:
    def test(actual: object) -> bool:
        if isinstance(actual, list):
            return any(fold(item) in options for item in actual)
        return actual is not MISSING and fold(actual) in options

    return test


def _text(operator: str, expected: object, case_sensitive: bool, loc: Loc) -> Callable[[object], bool]:
    """String operators; `text`, `phrase` and `words` are full-text in the API, plain substrings here."""
    if not isinstance(expected, str):
        raise invalid(loc, "Input should be a valid string", "string_type", expected)
    fold = _folder(case_sensitive)
    if operator == "regex":
        try:
            pattern = re.compile(expected, 0 if case_sensitive else re.IGNORECASE)
        except re.error as exc:
            raise invalid(
                loc, f"Value error, invalid regular expression: {exc}", "value_error", expected
            ) from None
        return lambda actual: isinstance(actual, str) and pattern.search(actual) is not None
    if operator in ("text", "phrase", "words"):
        words = expected.casefold().split() if operator == "words" else [expected.casefold()]
        return lambda actual: isinstance(actual, str) and all(w in actual.casefold() for w in words)
    want = str(fold(expected))
    if operator == "contains":

        def contains(actual: object) -> bool:
            if isinstance(actual, list):
                return any(fold(item) == want for item in actual)
            return isinstance(actual, str) and want in str(fold(actual))

        return contains
    if operator == "starts_with":
        return lambda actual: isinstance(actual, str) and str(fold(actual)).startswith(want)
    return lambda actual: isinstance(actual, str) and str(fold(actual)).endswith(want)
