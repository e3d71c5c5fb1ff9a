"""The API's enumerations, copied from the official SDK (mixpeek 1.3.783, API 0.82).

The server validates request bodies against these exactly as the real API's pydantic models do (an unknown
value is a 422), while the world accepts any string so tests can model enumeration drift. They are the
simulator's own copy, not the exporter's vocabulary: the oracle must not share a mistake with the code under
test (tests/test_sdk_conformance.py checks them against the SDK's models).
"""

from typing import Final

# Documented as terminal: once a task or batch reaches one of these it never changes again.
TERMINAL_STATUSES: Final = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED")

# TaskStatusEnum, the statuses of tasks and batches alike.
TASK_STATUSES: Final = (
    "PENDING",
    "QUEUED",
    "IN_PROGRESS",
    "PROCESSING",
    *TERMINAL_STATUSES,
    "INTERRUPTED",
    "UNKNOWN",
    "SKIPPED",
    "DRAFT",
    "ACTIVE",
    "ARCHIVED",
    "SUSPENDED",
    "DEACTIVATED",
)

# FailureCategory of a failed batch.
FAILURE_CATEGORIES: Final = (
    "timeout",
    "infrastructure",
    "orphaned",
    "pipeline",
    "mvs_durability",
    "validation",
    "unknown",
)

TASK_TYPES: Final = (
    "api_namespaces_create",
    "api_namespaces_delete",
    "api_namespaces_snapshot_create",
    "api_namespaces_snapshot_restore",
    "api_namespaces_migrations_run",
    "api_buckets_objects_create",
    "api_buckets_delete",
    "api_buckets_batches_process",
    "api_buckets_batches_submit",
    "api_buckets_uploads_create",
    "api_buckets_uploads_confirm",
    "api_buckets_uploads_batch_confirm",
    "api_collections_documents_create",
    "api_collections_documents_bulk_update",
    "api_collections_documents_bulk_delete",
    "api_collections_reembed",
    "api_collections_extraction_artifacts",
    "api_taxonomies_create",
    "api_taxonomies_execute",
    "api_taxonomies_materialize",
    "api_evaluations_run",
    "api_evaluations_dataset_create",
    "api_retrievers_publish",
    "api_manifest_apply",
    "api_retrievers_execute",
    "api_collections_export",
    "api_collections_trigger",
    "engine_feature_extractor_run",
    "engine_inference_run",
    "engine_object_processing",
    "engine_cluster_build",
    "thumbnail",
    "video_segment",
    "audio_segment",
    "converted_video",
    "materialize",
    "plugin_custom",
    "model_custom",
)

# Task types whose additional_data carries bucket_id and batch_id (SDK TaskResponse docs).
BATCH_TASK_TYPES: Final = frozenset({"api_buckets_batches_process", "api_buckets_batches_submit"})
# The one task type whose additional_data.namespace_id the SDK marks REQUIRED.
BATCH_PROCESS_TASK_TYPE: Final = "api_buckets_batches_process"

FILTER_OPERATORS: Final = (
    "eq",
    "ne",
    "gt",
    "lt",
    "gte",
    "lte",
    "in",
    "nin",
    "contains",
    "starts_with",
    "ends_with",
    "regex",
    "exists",
    "is_null",
    "text",
    "phrase",
    "words",
    "geo_radius",
    "geo_bounding_box",
    "geo_polygon",
)

SORT_DIRECTIONS: Final = ("asc", "desc")
