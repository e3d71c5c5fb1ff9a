"""POST /v1/buckets/list: a namespace's buckets, filtered, searched, sorted and paged by offset.

The ListBucketsRequest body has the same keys and rules as the namespace listing's (body paging wins over the
query's, default page size 10, equality and `$regex` filters, `sort`/`sorts`), so the filters and the sort are
the namespace listing's own; `search` looks at the bucket's id, name and description.
"""

from collections.abc import Mapping, Sequence
from typing import Final

from .buckets import SimBucket
from .namespace_listing import DocumentQuery
from .paging import cursor_pagination_json
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
    request = DocumentQuery.parse(body, query, BUCKET_BODY_KEYS)
    by_id = {bucket.bucket_id: bucket for bucket in buckets}
    docs = request.select([bucket_json(bucket) for bucket in buckets], "bucket_id", _SEARCHED)
    return {
        "results": request.page(docs),
        "total_count": len(docs),
        "pagination": cursor_pagination_json(request.paging, len(docs), None),
        "stats": _stats([by_id[str(doc["bucket_id"])] for doc in docs]),
    }


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
