"""Tasks, namespaces, batches and buckets as the API's JSON: the SDK's TaskResponse, NamespaceModel,
BatchModel and BucketResponse shapes.

Unset optional fields are sent as null, as FastAPI does by default, so clients meet the nulls they will meet
for real. What a task shows beyond the documented TaskResponse (timestamps, namespace ids) is the profile's
choice: the documented model has no timestamps, and marks namespace_id as carried by batch tasks only.
"""

from typing import Final

from .batches import RUNNING_STATUSES, SimBatch
from .buckets import SimBucket
from .profile import DOCUMENTED, ApiProfile
from .timestamps import iso
from .world import SimNamespace, SimTask


def task_json(task: SimTask, profile: ApiProfile = DOCUMENTED) -> dict[str, object]:
    """One TaskResponse; `error` flattens `additional_data.error` for FAILED tasks only, as documented.

    The world stores every task's namespace_id and timestamps; the profile says which the payload shows.
    """
    error = task.additional_data.get("error") if task.status == "FAILED" else None
    additional = dict(task.additional_data)
    if not profile.shows_namespace_id(task.task_type):
        additional.pop("namespace_id", None)
    body: dict[str, object] = {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "status": task.status,
        "inputs": list(task.inputs),
        "outputs": None,
        "additional_data": additional,
        "error": None if error is None else str(error),
        "cancellation": None,
        "queue_position": None,
        "estimated_wait_minutes": None,
    }
    if profile.timestamps:
        body["created_at"] = iso(task.created_at)
        body["updated_at"] = iso(task.updated_at)
        if task.completed_at is not None:
            body["completed_at"] = iso(task.completed_at)
    return body


def namespace_json(namespace: SimNamespace) -> dict[str, object]:
    """One NamespaceModel with the fields a monitoring client can use; the rest of the model is config."""
    created = iso(namespace.created_at)
    return {
        "object": "namespace",
        "namespace_id": namespace.namespace_id,
        "namespace_name": namespace.namespace_name,
        "namespace_type": "standard",
        "description": None,
        "feature_extractors": [],
        "payload_indexes": None,
        "document_count": None,
        "bucket_count": len(namespace.bucket_ids),
        "collection_count": None,
        "object_count": None,
        "auto_create_indexes": False,
        "namespace_ready": True,
        "created_at": created,
        "updated_at": created,
    }


# BatchModel fields the simulator has nothing to say about: sent as null, as FastAPI sends unset fields.
_NULL_BATCH_FIELDS: Final = (
    "batch_name",
    "queue_context",
    "dedup_strategy",
    "effective_dedup_strategy",
    "submitted_by_key_id",
    "submitted_by_key_prefix",
    "submitted_by_is_internal",
    "dedup_audit",
    "error_summary",
    "failed_objects",
    "partial_objects",
    "partial_object_count",
    "unaccounted_object_count",
    "manifest_key",
    "loaded_object_ids",
    "internal_metadata",
    "documents_written",
    "documents_replaced",
    "documents_deleted",
    "pages_dropped",
    "pages_dropped_reasons",
    "segments_dropped",
    "segments_dropped_reasons",
    "status_diagnostics",
    "documents_resolvable_error",
    "cost",
    "last_retry_at",
    "retry_reason",
    "quota_block_first_seen_at",
    "webhook_url",
    "estimated_completion",
)
_NULL_TIER_FIELDS: Final = (
    "error_summary",
    "performance",
    "ray_job_id",
    "ray_job_started_at",
    "ray_job_completed_at",
    "requires_gpu",
    "worker_groups",
    "celery_task_id",
    "source_documents_fetched",
    "documents_after_source_filter",
    "documents_missing_input_fields",
    "documents_submitted_to_engine",
    "documents_written",
    "documents_replaced",
    "documents_deleted",
    "documents_before_processing",
    "ray_job_status",
    "ray_job_logs",
    "ray_job_logs_captured_at",
    "submission_params",
    "infrastructure_events",
    "audit",
    "audit_override_reason",
)
# BatchModel.lifecycle: where the batch is in its life, in one word.
_LIFECYCLE: Final = {
    "DRAFT": "accepted",
    "PENDING": "queued",
    "PROCESSING": "extracting",
    "IN_PROGRESS": "extracting",
    "COMPLETED": "indexed",
    "COMPLETED_WITH_ERRORS": "indexed",
    "FAILED": "failed",
    "CANCELED": "canceled",
}
_MAX_RESUBMITS: Final = 3


def batch_json(batch: SimBatch) -> dict[str, object]:
    """One BatchModel. Progress shows once a tier has run (the SDK: none while DRAFT or PENDING)."""
    reason = batch.failure_reason
    running = batch.status in RUNNING_STATUSES
    body: dict[str, object] = dict(
        batch_id=batch.batch_id,
        bucket_id=batch.bucket_id,
        namespace_id=batch.namespace_id,
        status=batch.status,
        object_ids=batch.object_ids,
        collection_ids=list(batch.collection_ids),
        error=reason,
        failure_reason=reason,
        failure_category=batch.failure_category,
        failed_object_count=batch.failed_object_count,
        type="BUCKET",
        metadata={},  # never null in the spec
        task_id=batch.tier_tasks[0].task_id if batch.tier_tasks else None,
        tier_tasks=[_tier_json(batch, i) for i in range(len(batch.tier_tasks))],
        current_tier=batch.current_tier,
        total_tiers=batch.total_tiers,
        dag_tiers=[list(tier) for tier in batch.dag_tiers],
        created_at=iso(batch.created_at),
        progress=_progress_json(batch) if batch.started else None,
        documents_resolvable=batch.status in ("COMPLETED", "COMPLETED_WITH_ERRORS"),
        health="healthy" if running else None,
        last_activity_at=None if batch.last_activity_at is None else iso(batch.last_activity_at),
        retry_count=0,
        max_retries=3,
        node_death_resubmit_count=0,
        deploy_resubmit_count=0,
        updated_at=iso(batch.updated_at),
        status_message=_status_message(batch),
        max_node_death_resubmits=_MAX_RESUBMITS,
        max_deploy_resubmits=_MAX_RESUBMITS,
        lifecycle=_LIFECYCLE.get(batch.status),
        lifecycle_reason=reason or ("waiting for a processing slot" if batch.status == "PENDING" else None),
    )
    body.update(dict.fromkeys(_NULL_BATCH_FIELDS))
    return body


def _tier_json(batch: SimBatch, index: int) -> dict[str, object]:
    """One TierTaskInfo; tiers after the first read the collections of the tier before."""
    tier = batch.tier_tasks[index]
    before = batch.tier_tasks[index - 1] if index else None
    running = tier.status in RUNNING_STATUSES
    body: dict[str, object] = dict(
        tier_num=tier.tier_num,
        task_id=tier.task_id,
        status=tier.status,
        collection_ids=list(tier.collection_ids),
        extractor_jobs=[],  # never null in the spec
        errors=[],
        source_type=tier.source_type,
        source_collection_ids=None if before is None else list(before.collection_ids),
        parent_task_id=None if before is None else before.task_id,
        started_at=None if tier.started_at is None else iso(tier.started_at),
        completed_at=None if tier.completed_at is None else iso(tier.completed_at),
        duration_ms=tier.duration_ms,
        last_activity_at=iso(batch.last_activity_at) if running and batch.last_activity_at else None,
    )
    body.update(dict.fromkeys(_NULL_TIER_FIELDS))
    return body


def _progress_json(batch: SimBatch) -> dict[str, object]:
    """The BatchProgress fields a monitor reads; the engine's stage details stay null."""
    total = batch.object_count
    return {
        "processed": batch.processed,
        "total": total,
        "percent": round(100 * batch.processed / total, 2),
        "items_per_second": None,
        "eta_seconds": None,
        "batch_count": 0,
        "errors": batch.failed_object_count,
        "first_error": None,
        "extraction_first_error": None,
        "documents_skipped": 0,
        "objects_extracted": batch.processed,
        "objects_skipped": 0,
        "objects_failed": batch.failed_object_count,
        "current_stage": None,
        "phases": None,
        "active_step": None,
        "overshoot_percent": None,
        "queue_position": None,
        "queue_reason": None,
        "stage_history": None,  # the list path strips it, as the API does
        "documents_written": None,
        "chunk_stats": None,
        "status_warnings": None,
    }


def _status_message(batch: SimBatch) -> str | None:
    """The API's computed one-liner, e.g. 'Processing 724/50,000 objects (1.4%)'."""
    total = batch.object_count
    if batch.status in RUNNING_STATUSES:
        return f"Processing {batch.processed:,}/{total:,} objects ({100 * batch.processed / total:.1f}%)"
    messages = {
        "DRAFT": "Draft: not submitted yet",
        "PENDING": "Queued",
        "COMPLETED": f"Completed: {total:,} objects",
        "COMPLETED_WITH_ERRORS": f"Completed: {batch.failed_object_count:,} of {total:,} objects failed",
        "FAILED": f"Failed: {batch.failure_reason}",
        "CANCELED": "Canceled",
    }
    return messages.get(batch.status)


def bucket_json(bucket: SimBucket) -> dict[str, object]:
    """One BucketResponse with the figures a monitoring client reads; schema and storage config stay null."""
    created = iso(bucket.created_at)
    stats = bucket.batch_stats
    return {
        "bucket_id": bucket.bucket_id,
        "bucket_name": bucket.bucket_name,
        "description": None,
        "bucket_schema": None,
        "unique_key": None,
        "metadata": {},  # an object, never null, in the spec
        "storage_class": None,
        "destination": None,
        "ingest_filter": None,
        "object_count": bucket.object_count,
        "failed_object_count": bucket.failed_object_count,
        "total_size_bytes": bucket.total_size_bytes,
        "created_at": created,
        "updated_at": created,
        "last_upload_at": None if bucket.last_upload_at is None else iso(bucket.last_upload_at),
        "stats_updated_at": None,
        "status": "ACTIVE",
        "is_locked": False,
        "batch_stats": {
            "total": stats.total,
            "active": stats.active,
            "completed": stats.completed,
            "failed": stats.failed,
        },
        "storage_stats": None,
        "source_adapter": None,
    }
