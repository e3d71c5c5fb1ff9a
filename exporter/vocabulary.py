"""The API's enumerations the exporter relies on, as in the official SDK (mixpeek 1.3.783, API 0.82).

The exporter and its simulated API both read them from here. The lists keep growing upstream: the exporter
exports values it has never seen as they come (statuses, task types) or folds them (failure categories).
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

# The statuses a task goes through, as the reference pages describe tasks and their polling guidance
# names them: zero-filled, so a dashboard or an alert sees 0 rather than no data. The enum's other values
# are exported only when something has them: UNKNOWN, SKIPPED, DRAFT and INTERRUPTED (possible for a task,
# rare, and not terminal as documented), ACTIVE, ARCHIVED, SUSPENDED and DEACTIVATED (lifecycle statuses of
# buckets, collections and namespaces, not of tasks). docs/metrics.md: Vocabulary.
ZERO_FILLED_STATUSES: Final = ("PENDING", "QUEUED", "IN_PROGRESS", "PROCESSING", *TERMINAL_STATUSES)

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
