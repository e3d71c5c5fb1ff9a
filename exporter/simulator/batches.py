"""Batches: a bucket's objects run through 1-3 tiers of collections; their lifecycle and ground truth.

A batch is created DRAFT, submitted (PENDING, tier 0 scheduled), then runs tier after tier (PROCESSING or
IN_PROGRESS; tier 0 reads the bucket, later tiers the previous tier's collections) and ends COMPLETED,
COMPLETED_WITH_ERRORS (some objects failed), FAILED (with a failure category) or, rarely, CANCELED. Each step
is scheduled at an exact instant when the previous one happens; after a change made from outside (create,
set_status) the next step is drawn at the next `advance`, from the start of its window, so nothing happens
before the window a test asked for, as with tasks. Batches never expire: the real API keeps them in MongoDB.

`BatchBook` is not thread-safe on its own: the World calls it under its lock and tells it the time.
"""

import dataclasses
import hashlib
import math
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from .enums import TERMINAL_STATUSES

RUNNING_STATUSES: Final = ("PROCESSING", "IN_PROGRESS")
# The statuses the lifecycle moves on; any other non-terminal status (e.g. ARCHIVED) stays put.
ACTIVE_STATUSES: Final = frozenset({"DRAFT", "PENDING", *RUNNING_STATUSES})
MAX_TIERS: Final = 3
MAX_OBJECTS: Final = 50_000
HEARTBEAT_S: Final = 10.0  # the API's BatchJobPoller refreshes progress and last_activity_at about this often
MEAN_DRAFT_S: Final = 20.0  # until the user submits
MEAN_PENDING_S: Final = 45.0  # waiting for a processing slot
TIER_BASE_S: Final = 30.0  # job start-up; then each object adds TIER_PER_OBJECT_S
TIER_PER_OBJECT_S: Final = 0.4
PROCESSING_SHARE: Final = 0.7  # running batches read PROCESSING, the others IN_PROGRESS

# Each FailureCategory: how often it ends a failed batch (weight), and the failure_reason the API gives.
FAILURE_REASONS: Final[Mapping[str, tuple[int, str]]] = {
    "pipeline": (30, "Feature extractor error: unsupported media type"),
    "infrastructure": (25, "Ray job failed: worker node preempted (spot)"),
    "timeout": (15, "Processing stalled: no progress for 30 minutes"),
    "validation": (10, "Submission rejected: objects do not match the bucket schema"),
    "orphaned": (8, "RayJob resource disappeared while the batch was processing"),
    "mvs_durability": (5, "Vector store write not durable: documents missing after the write"),
    "unknown": (7, "Batch failed for an unknown reason"),
}

Key = tuple[str, str, str]


class Workload(Protocol):
    """What the book needs of a namespace (SimNamespace has it), without importing the world."""

    @property
    def namespace_id(self) -> str: ...

    @property
    def bucket_ids(self) -> tuple[str, ...]: ...

    @property
    def batch_rate_per_s(self) -> float: ...

    @property
    def batch_failure_ratio(self) -> float: ...


@dataclass(frozen=True, slots=True)
class SimTier:
    """One tier of a batch (the SDK's TierTaskInfo): its collections, its task and its timestamps."""

    tier_num: int
    status: str
    collection_ids: tuple[str, ...]
    task_id: str | None = None
    started_at: float | None = None
    completed_at: float | None = None

    @property
    def source_type(self) -> str:
        """Tier 0 reads the bucket's objects, later tiers the documents of the tier before."""
        return "bucket" if self.tier_num == 0 else "collection"

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return round((self.completed_at - self.started_at) * 1000, 3)


@dataclass(frozen=True, slots=True)
class SimBatch:
    """One batch as the API stores it. Frozen: the book replaces a batch on change, so snapshots stay valid.

    `processed` is the progress of the current tier's job; once a batch completes it is the objects that made
    it (object_count - failed_object_count).
    """

    batch_id: str
    namespace_id: str
    bucket_id: str
    status: str
    object_count: int
    dag_tiers: tuple[tuple[str, ...], ...]
    created_at: float
    updated_at: float
    tier_tasks: tuple[SimTier, ...] = ()
    processed: int = 0
    failed_object_count: int = 0
    failure_category: str | None = None
    last_activity_at: float | None = None

    @property
    def total_tiers(self) -> int:
        return len(self.dag_tiers)

    @property
    def started(self) -> bool:
        """Whether any tier ran: the API shows progress and current_tier only then."""
        return any(tier.started_at is not None for tier in self.tier_tasks)

    @property
    def current_tier(self) -> int | None:
        """The last tier that started (the last one of all once the batch is done), None before."""
        started = [tier.tier_num for tier in self.tier_tasks if tier.started_at is not None]
        return started[-1] if started else None

    @property
    def object_ids(self) -> list[str]:
        """The ids of the bucket objects the batch processes, derived from its id (they are not stored)."""
        return [f"obj_{self.batch_id[5:]}{n:06d}" for n in range(self.object_count)]

    @property
    def collection_ids(self) -> tuple[str, ...]:
        return tuple(collection for tier in self.dag_tiers for collection in tier)

    @property
    def failure_reason(self) -> str | None:
        if self.status != "FAILED" or self.failure_category is None:
            return None
        return FAILURE_REASONS.get(self.failure_category, FAILURE_REASONS["unknown"])[1]


def pipeline(bucket_id: str) -> tuple[tuple[str, ...], ...]:
    """The bucket's collections, tier by tier; fixed per bucket and derived from its id (no RNG draw)."""
    digests = (hashlib.sha256(f"{bucket_id}:{tier}".encode()).hexdigest() for tier in range(MAX_TIERS))
    return tuple((f"col_{digest[:12]}",) for digest in digests)


class BatchBook:
    """Every batch of the organisation, its scheduled next step, and what really happened."""

    def __init__(self, rng: random.Random, *, partial_ratio: float = 0.1, cancel_ratio: float = 0.01) -> None:
        """`partial_ratio` of the batches that get through every tier end COMPLETED_WITH_ERRORS;
        `cancel_ratio` of all batches end CANCELED. The failure ratio is each namespace's."""
        self._rng = rng
        self._partial_ratio = partial_ratio
        self._cancel_ratio = cancel_ratio
        self._batches: dict[str, SimBatch] = {}
        self._due: dict[str, float | None] = {}  # next step of each active batch; None: draw at next advance
        self._doomed: set[str] = set()
        self._counted: set[str] = set()
        self.transitions: Counter[Key] = Counter()
        self.objects: Counter[Key] = Counter()
        self.failures: Counter[Key] = Counter()

    # Reading

    def get(self, batch_id: str) -> SimBatch | None:
        return self._batches.get(batch_id)

    def all(self, namespace_id: str | None = None) -> list[SimBatch]:
        """In creation order."""
        if namespace_id is None:
            return list(self._batches.values())
        return [batch for batch in self._batches.values() if batch.namespace_id == namespace_id]

    # Changes from outside

    def create(
        self, namespace: Workload, bucket_id: str | None, objects: int, status: str, when: float
    ) -> str:
        if bucket_id is None:
            bucket_id = self._rng.choice(namespace.bucket_ids)
        elif bucket_id not in namespace.bucket_ids:
            raise KeyError(f"unknown bucket {bucket_id!r} in namespace {namespace.namespace_id}")
        if objects < 1:
            raise ValueError(f"a batch holds at least one object, not {objects}")
        batch_id = f"btch_{self._rng.getrandbits(48):012x}"
        tiers = self._rng.randint(1, MAX_TIERS)
        self._batches[batch_id] = SimBatch(
            batch_id=batch_id,
            namespace_id=namespace.namespace_id,
            bucket_id=bucket_id,
            status="DRAFT",
            object_count=objects,
            dag_tiers=pipeline(bucket_id)[:tiers],
            created_at=when,
            updated_at=when,
        )
        self._due[batch_id] = None
        if status != "DRAFT":
            self.set_status(batch_id, status, when)
        return batch_id

    def set_status(
        self,
        batch_id: str,
        status: str,
        when: float,
        failed_objects: int | None = None,
        failure_category: str | None = None,
    ) -> None:
        """Move a batch to any status, as an operator or a buggy backend might; its next step comes later."""
        batch = self._batches[batch_id]
        terminal = status in TERMINAL_STATUSES
        if not terminal and (failed_objects is not None or failure_category is not None):
            raise ValueError("failed_objects and failure_category only go with a terminal status")
        if failed_objects is not None and not 0 <= failed_objects <= batch.object_count:
            raise ValueError(f"failed_objects must be within 0..{batch.object_count}")
        self._doomed.discard(batch_id)
        if terminal:
            if status == "FAILED" and failure_category is None:
                failure_category = "unknown"  # what the API derives from a reason it cannot classify
            self._finish(batch, status, when, failed_objects, failure_category)
            return
        if status in RUNNING_STATUSES:
            self._run(batch, status, when)
        elif status == "PENDING":
            self._submit(batch, when)
        else:
            self._batches[batch_id] = dataclasses.replace(batch, status=status, updated_at=when)
        if status in ACTIVE_STATUSES:
            self._due[batch_id] = None
        else:
            self._due.pop(batch_id, None)

    def remove(self, batch_id: str) -> None:
        del self._batches[batch_id]
        self._due.pop(batch_id, None)
        self._doomed.discard(batch_id)
        self._counted.discard(batch_id)

    def doom(self, batch_ids: Iterable[str]) -> None:
        """These batches turn FAILED at the next advance."""
        self._doomed.update(batch_ids)

    # Time

    def advance(self, namespaces: Iterable[Workload], start: float, now: float) -> None:
        """Simulate the window (start, now]: doomed batches fail, new ones arrive, every active one steps."""
        workloads = list(namespaces)
        for batch_id in sorted(self._doomed):
            self.set_status(batch_id, "FAILED", now, failure_category=self._category())
        for namespace in workloads:
            self._spawn(namespace, start, now)
        failure_ratio = {namespace.namespace_id: namespace.batch_failure_ratio for namespace in workloads}
        for batch_id in list(self._due):
            batch = self._batches[batch_id]
            due = self._due[batch_id]
            if due is None:
                due = self._due[batch_id] = self._next_step_at(batch, max(start, batch.updated_at))
            ratio = failure_ratio.get(batch.namespace_id, 0.0)
            while due is not None and due <= now:
                self._step(self._batches[batch_id], due, ratio)
                due = self._due.get(batch_id)
            if due is not None:
                self._beat(self._batches[batch_id], due, now)

    # Internals

    def _spawn(self, namespace: Workload, start: float, now: float) -> None:
        """Poisson arrivals; sizes are log-normal (median about 90 objects), as uploads come in bursts."""
        rate = namespace.batch_rate_per_s
        if rate <= 0:
            return
        when = start + self._rng.expovariate(rate)
        while when <= now:
            objects = min(MAX_OBJECTS, max(1, int(self._rng.lognormvariate(4.5, 1.2))))
            batch_id = self.create(namespace, None, objects, "DRAFT", when)
            self._due[batch_id] = self._next_step_at(self._batches[batch_id], when)
            when += self._rng.expovariate(rate)

    def _next_step_at(self, batch: SimBatch, since: float) -> float:
        if batch.status == "DRAFT":
            return since + self._rng.expovariate(1 / MEAN_DRAFT_S)
        if batch.status == "PENDING":
            return since + self._rng.expovariate(1 / MEAN_PENDING_S)
        tier_s = TIER_BASE_S + TIER_PER_OBJECT_S * batch.object_count
        return since + tier_s * self._rng.uniform(0.5, 1.5)

    def _step(self, batch: SimBatch, when: float, failure_ratio: float) -> None:
        """The scheduled step of an active batch at `when`, then the schedule of the one after."""
        if batch.status == "DRAFT":
            self._submit(batch, when)
        elif batch.status == "PENDING":
            status = "PROCESSING" if self._rng.random() < PROCESSING_SHARE else "IN_PROGRESS"
            self._run(batch, status, when)
        else:
            self._end_tier(batch, when, failure_ratio)
        after = self._batches[batch.batch_id]
        if after.status in ACTIVE_STATUSES:
            self._due[batch.batch_id] = self._next_step_at(after, when)

    def _submit(self, batch: SimBatch, when: float) -> None:
        tiers = batch.tier_tasks or (SimTier(0, "PENDING", batch.dag_tiers[0]),)
        self._batches[batch.batch_id] = dataclasses.replace(
            batch, status="PENDING", tier_tasks=tiers, updated_at=when
        )

    def _run(self, batch: SimBatch, status: str, when: float) -> None:
        """Label the running tier with `status`; if none runs, start tier 0 or restart the last tier."""
        tiers = list(batch.tier_tasks)
        last = tiers[-1] if tiers else None
        if last is not None and last.started_at is not None and last.completed_at is None:
            tiers[-1] = dataclasses.replace(last, status=status)
            self._batches[batch.batch_id] = dataclasses.replace(
                batch, status=status, tier_tasks=tuple(tiers), updated_at=when
            )
            return
        self._start_tier(batch, tiers[:-1], last.tier_num if last is not None else 0, status, when)

    def _start_tier(
        self, batch: SimBatch, before: list[SimTier], tier_num: int, status: str, when: float
    ) -> None:
        task_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        tier = SimTier(tier_num, status, batch.dag_tiers[tier_num], task_id, started_at=when)
        self._batches[batch.batch_id] = dataclasses.replace(
            batch,
            status=status,
            tier_tasks=(*before, tier),
            processed=0,
            updated_at=when,
            last_activity_at=when,
        )

    def _end_tier(self, batch: SimBatch, when: float, failure_ratio: float) -> None:
        """A tier's job ends: the batch fails, is canceled, moves to the next tier, or completes.

        The per-tier odds make a whole batch fail with `failure_ratio`, whatever its number of tiers.
        """
        tiers = batch.total_tiers
        fail = 1 - (1 - failure_ratio) ** (1 / tiers)
        cancel = self._cancel_ratio / tiers
        draw = self._rng.random()
        current = batch.tier_tasks[-1]
        if draw < fail:
            # A job fails part-way: the objects it had not processed are the batch's failed objects.
            reached = dataclasses.replace(batch, processed=int(batch.object_count * self._rng.random()))
            self._finish(reached, "FAILED", when, None, self._category())
        elif draw < fail + cancel:
            self._finish(batch, "CANCELED", when, None, None)
        elif current.tier_num + 1 < tiers:
            finished = dataclasses.replace(current, status="COMPLETED", completed_at=when)
            self._start_tier(
                batch, [*batch.tier_tasks[:-1], finished], current.tier_num + 1, current.status, when
            )
        else:
            partial = batch.object_count > 1 and self._rng.random() < self._partial_ratio
            self._finish(batch, "COMPLETED_WITH_ERRORS" if partial else "COMPLETED", when, None, None)

    def _finish(
        self, batch: SimBatch, status: str, when: float, failed: int | None, category: str | None
    ) -> None:
        """End a batch in a terminal status; the first terminal status of each batch is counted once."""
        if failed is None:
            failed = self._failed_objects(batch, status)
        tiers = list(batch.tier_tasks)
        if tiers and tiers[-1].status not in TERMINAL_STATUSES:
            ran = tiers[-1].started_at is not None
            tiers[-1] = dataclasses.replace(tiers[-1], status=status, completed_at=when if ran else None)
        completed = status in ("COMPLETED", "COMPLETED_WITH_ERRORS")
        self._batches[batch.batch_id] = dataclasses.replace(
            batch,
            status=status,
            tier_tasks=tuple(tiers),
            processed=batch.object_count - failed if completed else batch.processed,
            failed_object_count=failed,
            failure_category=category,
            updated_at=when,
            last_activity_at=when if batch.started else batch.last_activity_at,
        )
        self._due.pop(batch.batch_id, None)
        if batch.batch_id in self._counted:
            return
        self._counted.add(batch.batch_id)
        where = (batch.namespace_id, batch.bucket_id)
        self.transitions[(*where, status)] += 1
        self.objects[(*where, "processed")] += batch.object_count - failed
        self.objects[(*where, "failed")] += failed
        if category is not None:
            self.failures[(*where, category)] += 1

    def _failed_objects(self, batch: SimBatch, status: str) -> int:
        if status == "FAILED":
            return batch.object_count - batch.processed
        if status == "COMPLETED_WITH_ERRORS":
            return self._rng.randint(1, max(1, batch.object_count // 5))
        return 0

    def _category(self) -> str:
        categories = list(FAILURE_REASONS)
        weights = [weight for weight, _ in FAILURE_REASONS.values()]
        return self._rng.choices(categories, weights)[0]

    def _beat(self, batch: SimBatch, due: float, now: float) -> None:
        """Progress of a running tier as of its last heartbeat before `now`, assuming a steady pace."""
        tier = batch.tier_tasks[-1] if batch.tier_tasks else None
        if batch.status not in RUNNING_STATUSES or tier is None or tier.started_at is None:
            return
        began = tier.started_at
        at = began + math.floor((now - began) / HEARTBEAT_S) * HEARTBEAT_S
        if batch.last_activity_at is not None and at <= batch.last_activity_at:
            return
        share = (at - began) / (due - began) if due > began else 1.0
        processed = min(batch.object_count, int(batch.object_count * share))
        self._batches[batch.batch_id] = dataclasses.replace(batch, processed=processed, last_activity_at=at)
