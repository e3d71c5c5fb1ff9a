"""POST /v1/buckets/list: a namespace's buckets, filtered, searched, sorted and paged by offset.

The ListBucketsRequest body has the same keys and rules as the namespace listing's (body paging wins over the
query's, default page size 10, equality and `$regex` filters, `sort`/`sorts`), so the filters and the sort are
the namespace listing's own; `search` looks at the bucket's id, name and description.
"""

from collections.abc import Mapping, Sequence
from typing import Final

from .buckets import SimBucket
from .errors import ValidationFailed, field_error
from .namespace_listing import Document
from .namespace_listing import _filters as document_filters
from .namespace_listing import _sort as document_sort
from .paging import cursor_pagination_json, rank
from .params import Errors, object_body, parse_paging
from .render import bucket_json

BUCKET_BODY_KEYS: Final = (
    "limit",
    "page_size",
    "offset",
    "page",
    "search",
    "filters",
    "sort",
    "sorts",
    "case_sensitive",
)
_SEARCHED: Final = ("bucket_id", "bucket_name", "description")


def list_buckets(buckets: Sequence[SimBucket], body: object, query: Mapping[str, str]) -> dict[str, object]:
    """One ListBucketsResponse page; raises ValidationFailed (422) for a bad parameter or body."""
    errors: Errors = []
    request = object_body(body, BUCKET_BODY_KEYS, errors)
    paging = parse_paging(query, errors, body=request)
    sensitive = request.get("case_sensitive") is True
    tests = document_filters(request.get("filters"), sensitive, errors)
    search = request.get("search")
    if search is not None and not isinstance(search, str):
        errors.append(
            field_error(("body", "search"), "Input should be a valid string", "string_type", search)
        )
    field, descending = document_sort(request, errors)
    if errors:
        raise ValidationFailed(errors)
    rendered = [(bucket, bucket_json(bucket)) for bucket in buckets]
    kept = [
        (bucket, doc)
        for bucket, doc in rendered
        if all(test(doc) for test in tests) and (search is None or _found(doc, str(search), sensitive))
    ]
    if field is not None:
        kept.sort(key=lambda pair: (rank(pair[1].get(field)), pair[0].bucket_id), reverse=descending)
    return {
        "results": [doc for _, doc in kept[paging.offset : paging.offset + paging.limit]],
        "total_count": len(kept),
        "pagination": cursor_pagination_json(paging, len(kept), None),
        "stats": _stats([bucket for bucket, _ in kept]),
    }


def _found(doc: Document, term: str, sensitive: bool) -> bool:
    texts = [str(doc[key]) for key in _SEARCHED if doc.get(key)]
    if sensitive:
        return any(term in text for text in texts)
    return any(term.casefold() in text.casefold() for text in texts)


def _stats(buckets: Sequence[SimBucket]) -> dict[str, object]:
    """BucketListStats over every matching bucket, not only the page."""
    objects = sum(bucket.object_count for bucket in buckets)
    size = sum(bucket.total_size_bytes for bucket in buckets)
    count = max(1, len(buckets))
    return {
        "total_objects": objects,
        "total_size_bytes": size,
        "avg_objects_per_bucket": objects / count,
        "avg_size_per_bucket": size / count,
    }
