"""POST /v1/namespaces/list: the ListNamespacesRequest body, filtered, sorted and paged by offset.

Filters here are the namespace route's simpler kind, on the fields of the rendered namespace: equality
`{"field": value}` or `{"field": {"$regex": ...}}`. The default order is creation order.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ValidationFailed, field_error
from .paging import cursor_pagination_json, rank
from .params import Errors, Paging, object_body, parse_paging
from .render import namespace_json
from .world import SimNamespace

NAMESPACE_BODY_KEYS: Final = (
    "limit",
    "page_size",
    "offset",
    "page",
    "filters",
    "sort",
    "sorts",
    "search",
    "case_sensitive",
)

Document = dict[str, object]
_SEARCHED: Final = ("namespace_id", "namespace_name", "description")


@dataclass(frozen=True)
class DocumentQuery:
    """A parsed ListNamespacesRequest-shaped body (buckets share it): paging, filters, search and sort."""

    paging: Paging
    tests: list[Callable[[Document], bool]]
    search: str | None
    sensitive: bool
    sort_field: str | None
    descending: bool

    @classmethod
    def parse(cls, body: object, query: Mapping[str, str], keys: Sequence[str]) -> "DocumentQuery":
        """Raises ValidationFailed (422) for a bad parameter or body."""
        errors: Errors = []
        request = object_body(body, keys, errors)
        paging = parse_paging(query, errors, body=request)
        sensitive = request.get("case_sensitive") is True
        tests = _filters(request.get("filters"), sensitive, errors)
        search = request.get("search")
        if search is not None and not isinstance(search, str):
            errors.append(
                field_error(("body", "search"), "Input should be a valid string", "string_type", search)
            )
        field, descending = _sort(request, errors)
        if errors:
            raise ValidationFailed(errors)
        return cls(paging, tests, search if isinstance(search, str) else None, sensitive, field, descending)

    def select(self, docs: list[Document], id_field: str, searched: Sequence[str]) -> list[Document]:
        """Every matching document, sorted (not yet paged); ties and the default keep `docs`' order by id."""
        kept = [doc for doc in docs if all(test(doc) for test in self.tests)]
        if self.search is not None:
            kept = [doc for doc in kept if _matches_search(doc, self.search, searched, self.sensitive)]
        field = self.sort_field
        if field is not None:
            kept.sort(key=lambda doc: (rank(doc.get(field)), doc[id_field]), reverse=self.descending)
        return kept

    def page(self, docs: list[Document]) -> list[Document]:
        return docs[self.paging.offset : self.paging.offset + self.paging.limit]


def list_namespaces(
    namespaces: Sequence[SimNamespace], body: object, query: Mapping[str, str]
) -> dict[str, object]:
    """One ListNamespacesResponse page; raises ValidationFailed (422) for a bad parameter or body."""
    request = DocumentQuery.parse(body, query, NAMESPACE_BODY_KEYS)
    docs = request.select([namespace_json(ns) for ns in namespaces], "namespace_id", _SEARCHED)
    return {
        "results": request.page(docs),
        "pagination": cursor_pagination_json(request.paging, len(docs), None),
        "total_count": len(docs),
        "stats": None,
    }


def _filters(filters: object, sensitive: bool, errors: Errors) -> list[Callable[[Document], bool]]:
    if filters is None:
        return []
    if not isinstance(filters, dict):
        errors.append(
            field_error(("body", "filters"), "Input should be a valid dictionary", "dict_type", filters)
        )
        return []
    tests: list[Callable[[Document], bool]] = []
    for field, wanted in filters.items():
        loc = ("body", "filters", field)
        if isinstance(wanted, dict) and set(wanted) == {"$regex"} and isinstance(wanted["$regex"], str):
            try:
                pattern = re.compile(wanted["$regex"], 0 if sensitive else re.IGNORECASE)
            except re.error as exc:
                errors.append(
                    field_error(loc, f"Value error, invalid regular expression: {exc}", "value_error")
                )
                continue
            tests.append(_regex_test(field, pattern))
        elif isinstance(wanted, dict | list):
            msg = "Value error, only equality and $regex filters are supported"
            errors.append(field_error(loc, msg, "value_error", wanted))
        else:
            tests.append(_equal_test(field, wanted, sensitive))
    return tests


def _regex_test(field: str, pattern: re.Pattern[str]) -> Callable[[Document], bool]:
    def test(doc: Document) -> bool:
        value = doc.get(field)
        return isinstance(value, str) and pattern.search(value) is not None

    return test


def _equal_test(field: str, wanted: object, sensitive: bool) -> Callable[[Document], bool]:
    def test(doc: Document) -> bool:
        actual = doc.get(field)
        if not sensitive and isinstance(actual, str) and isinstance(wanted, str):
            return actual.casefold() == wanted.casefold()
        return actual == wanted

    return test


def _matches_search(doc: Document, term: str, searched: Sequence[str], sensitive: bool) -> bool:
    texts = [str(doc[key]) for key in searched if doc.get(key)]
    if sensitive:
        return any(term in text for text in texts)
    return any(term.casefold() in text.casefold() for text in texts)


def _sort(request: Mapping[str, object], errors: Errors) -> tuple[str | None, bool]:
    """`sorts` (a list, first entry primary) takes precedence over the legacy single `sort`."""
    sorts, sort = request.get("sorts"), request.get("sort")
    chosen: object = sort
    if isinstance(sorts, list) and sorts:
        chosen = sorts[0]
    elif sorts is not None and not isinstance(sorts, list):
        errors.append(field_error(("body", "sorts"), "Input should be a valid list", "list_type", sorts))
    if chosen is None:
        return None, False
    if not isinstance(chosen, dict) or not isinstance(chosen.get("field"), str):
        msg = "Value error, a sort is {field, direction}"
        errors.append(field_error(("body", "sorts" if sorts else "sort"), msg, "value_error", chosen))
        return None, False
    return str(chosen["field"]), chosen.get("direction") == "desc"
