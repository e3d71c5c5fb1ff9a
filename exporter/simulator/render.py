"""Tasks and namespaces as the API's JSON: the SDK's TaskResponse and NamespaceModel shapes.

Unset optional fields are sent as null, as FastAPI does by default, so clients meet the nulls they will meet
for real. Timestamps on tasks are optional: the documented model has none, real payloads carry them.
"""

from .timestamps import iso
from .world import SimNamespace, SimTask


def task_json(task: SimTask, include_timestamps: bool) -> dict[str, object]:
    """One TaskResponse; `error` flattens `additional_data.error` for FAILED tasks only, as documented."""
    error = task.additional_data.get("error") if task.status == "FAILED" else None
    body: dict[str, object] = {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "status": task.status,
        "inputs": list(task.inputs),
        "outputs": None,
        "additional_data": dict(task.additional_data),
        "error": None if error is None else str(error),
        "cancellation": None,
        "queue_position": None,
        "estimated_wait_minutes": None,
    }
    if include_timestamps:
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
