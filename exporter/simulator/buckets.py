"""Buckets as the API lists them: a namespace's three buckets, with figures derived from their batches.

Each batch brings its own objects into its bucket, so a bucket holds the objects of its batches; the batch
statistics are the API's BatchStatistics (active = not finished, completed includes COMPLETED_WITH_ERRORS).
Names come from the bucket's position, not from the RNG, so adding buckets changed no existing draw.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .batches import ACTIVE_STATUSES, SimBatch

# Name and average object size of a namespace's first, second and third bucket.
BUCKET_PROFILES: Final = (
    ("media-uploads", 2_400_000),
    ("product-images", 850_000),
    ("support-videos", 48_000_000),
)


@dataclass(frozen=True, slots=True)
class BatchStats:
    total: int
    active: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class SimBucket:
    bucket_id: str
    bucket_name: str
    namespace_id: str
    created_at: float
    object_count: int
    failed_object_count: int
    total_size_bytes: int
    last_upload_at: float | None
    batch_stats: BatchStats


def _profile(index: int) -> tuple[str, int]:
    """Name (unique within the namespace) and average object size of a namespace's `index`-th bucket."""
    return BUCKET_PROFILES[index] if index < len(BUCKET_PROFILES) else (f"bucket-{index + 1}", 1_000_000)


def bucket_views(
    namespace_id: str, bucket_ids: Sequence[str], created_at: float, batches: Sequence[SimBatch]
) -> list[SimBucket]:
    """The buckets of one namespace, in creation order, from the namespace's batches."""
    views = []
    for index, bucket_id in enumerate(bucket_ids):
        own = [batch for batch in batches if batch.bucket_id == bucket_id]
        objects = sum(batch.object_count for batch in own)
        name, average_size = _profile(index)
        views.append(
            SimBucket(
                bucket_id=bucket_id,
                bucket_name=name,
                namespace_id=namespace_id,
                created_at=created_at,
                object_count=objects,
                failed_object_count=sum(batch.failed_object_count for batch in own),
                total_size_bytes=objects * average_size,
                last_upload_at=max((batch.created_at for batch in own), default=None),
                batch_stats=BatchStats(
                    total=len(own),
                    active=sum(batch.status in ACTIVE_STATUSES for batch in own),
                    completed=sum(batch.status in ("COMPLETED", "COMPLETED_WITH_ERRORS") for batch in own),
                    failed=sum(batch.status == "FAILED" for batch in own),
                ),
            )
        )
    return views
