"""The simulated organisation: namespaces, tasks and batches; the truth the fake API serves and tests check.

Time has two sources on purpose. Timestamps come from the injected clock, but how much time passed is told
explicitly: `advance(seconds)` simulates the window `(clock() - seconds, clock()]`, so a test advances its
fake clock first, then calls `world.advance` with the same amount. Nothing here sleeps or reads system time.

Every change to the tasks bumps a version, of the world and of the task's namespace, so the listing routes
can cache what they derive from a snapshot (filtered, sorted) until the next change.
"""

import contextlib
import dataclasses
import gc
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from .batches import BatchBook, SimBatch
from .buckets import SimBucket, bucket_views
from .enums import BATCH_TASK_TYPES, TERMINAL_STATUSES

# Tasks live about a day in the real API (Redis TTL), then vanish from listings.
DEFAULT_RETENTION_S: Final = 24 * 3600.0

# What an organisation mostly runs: batch processing dominates, other API and engine tasks follow.
TASK_TYPE_MIX: Final[Mapping[str, int]] = {
    "api_buckets_batches_process": 6,
    "api_buckets_objects_create": 3,
    "api_buckets_uploads_confirm": 2,
    "engine_feature_extractor_run": 2,
    "api_collections_documents_create": 1,
    "api_taxonomies_execute": 1,
    "engine_cluster_build": 1,
    "thumbnail": 1,
}

_ERRORS: Final = (
    "Failed to process batch: Object not found",
    "Ray job failed: worker ran out of memory",
    "Inference timed out after 300 s",
    "Feature extractor error: unsupported media type",
)

_RUNNING: Final = frozenset({"IN_PROGRESS", "PROCESSING"})


@dataclass(frozen=True, slots=True)
class SimNamespace:
    """A namespace and the workload it generates while the world advances."""

    namespace_id: str
    namespace_name: str
    created_at: float
    spawn_rate_per_s: float
    failure_ratio: float
    bucket_ids: tuple[str, ...]
    batch_rate_per_s: float = 0.0
    batch_failure_ratio: float = 0.1


@dataclass(frozen=True, slots=True)
class SimTask:
    """One task as the API stores it. Frozen: the world replaces a task on change, so snapshots stay valid."""

    task_id: str
    namespace_id: str
    task_type: str
    status: str
    created_at: float
    updated_at: float
    completed_at: float | None
    additional_data: Mapping[str, object]
    inputs: tuple[str, ...] = ()


class World:
    """In-memory Mixpeek organisation; every public method is safe to call from any thread."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        *,
        spawn_rate_per_s: float = 0.0,
        failure_ratio: float = 0.1,
        partial_ratio: float = 0.05,
        cancel_ratio: float = 0.02,
        queue_ratio: float = 0.3,
        mean_pending_s: float = 5.0,
        mean_queued_s: float = 20.0,
        mean_running_s: float = 30.0,
        retention_s: float = DEFAULT_RETENTION_S,
        batch_rate_per_s: float = 0.0,
        batch_failure_ratio: float = 0.1,
    ) -> None:
        """Configure the lifecycle.

        `spawn_rate_per_s` is the default arrival rate of new tasks per namespace (0: only the tasks a test
        creates). A running task ends FAILED with `failure_ratio`, COMPLETED_WITH_ERRORS with `partial_ratio`,
        CANCELED with `cancel_ratio`, else COMPLETED; a PENDING task passes through QUEUED with `queue_ratio`.
        Each state lasts an exponentially distributed time with the given mean.
        `batch_rate_per_s` and `batch_failure_ratio` are the defaults of the namespaces' batches (see
        batches.py); batches draw from their own RNG, so they leave the tasks' draws as they were.
        """
        _check_ratios(failure_ratio, partial_ratio, cancel_ratio)
        _check_ratios(queue_ratio)
        _check_ratios(batch_failure_ratio)
        if (
            min(spawn_rate_per_s, retention_s, batch_rate_per_s) < 0
            or min(mean_pending_s, mean_queued_s, mean_running_s) <= 0
        ):
            raise ValueError("rates, durations and retention must be positive")
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not a secret
        self._spawn_rate_per_s = spawn_rate_per_s
        self._failure_ratio = failure_ratio
        self._partial_ratio = partial_ratio
        self._cancel_ratio = cancel_ratio
        self._queue_ratio = queue_ratio
        self._mean_s = {"PENDING": mean_pending_s, "QUEUED": mean_queued_s}
        self._mean_s.update(dict.fromkeys(_RUNNING, mean_running_s))
        self._retention_s = retention_s
        self._lock = threading.Lock()
        self._namespaces: dict[str, SimNamespace] = {}
        self._tasks: dict[str, SimTask] = {}
        self._by_namespace: dict[str, dict[str, SimTask]] = {}  # the same tasks, per namespace id
        self._version = 0
        self._namespace_versions: dict[str, int] = {}
        self._doomed: set[str] = set()
        self._counted: set[str] = set()
        self._transitions: Counter[tuple[str, str, str]] = Counter()
        self._oldest = float("inf")
        self._batch_rate_per_s = batch_rate_per_s
        self._batch_failure_ratio = batch_failure_ratio
        self._batches = BatchBook(random.Random(f"batches:{seed}"))  # noqa: S311 - a simulation

    # Namespaces

    def add_namespace(
        self,
        name: str,
        *,
        spawn_rate_per_s: float | None = None,
        failure_ratio: float | None = None,
        batch_rate_per_s: float | None = None,
        batch_failure_ratio: float | None = None,
    ) -> str:
        """Create a namespace and return its `ns_` id; the rates default to the world's."""
        rate = self._spawn_rate_per_s if spawn_rate_per_s is None else spawn_rate_per_s
        failures = self._failure_ratio if failure_ratio is None else failure_ratio
        batch_rate = self._batch_rate_per_s if batch_rate_per_s is None else batch_rate_per_s
        batch_failures = self._batch_failure_ratio if batch_failure_ratio is None else batch_failure_ratio
        _check_ratios(failures, self._partial_ratio, self._cancel_ratio)
        _check_ratios(batch_failures)
        if min(rate, batch_rate) < 0:
            raise ValueError("spawn_rate_per_s and batch_rate_per_s must not be negative")
        with self._lock:
            if any(ns.namespace_name == name for ns in self._namespaces.values()):
                raise ValueError(f"namespace {name!r} already exists")
            namespace = SimNamespace(
                namespace_id=self._hex_id("ns_"),
                namespace_name=name,
                created_at=self._clock(),
                spawn_rate_per_s=rate,
                failure_ratio=failures,
                bucket_ids=tuple(self._hex_id("bkt_") for _ in range(3)),
                batch_rate_per_s=batch_rate,
                batch_failure_ratio=batch_failures,
            )
            self._namespaces[namespace.namespace_id] = namespace
            self._by_namespace[namespace.namespace_id] = {}
            return namespace.namespace_id

    def namespace(self, ref: str) -> SimNamespace | None:
        """Find a namespace by name or id, as the API's X-Namespace header does."""
        with self._lock:
            return self._find_namespace(ref)

    def namespaces(self) -> list[SimNamespace]:
        """All namespaces, in creation order."""
        with self._lock:
            return list(self._namespaces.values())

    def buckets(self, namespace: str) -> list[SimBucket]:
        """The buckets of a namespace (name or id), with figures from their batches."""
        with self._lock:
            ns = self._namespace_or_raise(namespace)
            return bucket_views(
                ns.namespace_id, ns.bucket_ids, ns.created_at, self._batches.all(ns.namespace_id)
            )

    # Tasks

    def create_task(
        self,
        namespace: str,
        task_type: str = "api_buckets_batches_process",
        status: str = "PENDING",
        created_at: float | None = None,
    ) -> str:
        """Create a task in a namespace (name or id) and return its id; any status or type string is accepted.

        A task created in a terminal status counts in `transitions`: it did enter that status.
        """
        with self._lock:
            when = self._clock() if created_at is None else created_at
            return self._create(self._namespace_or_raise(namespace), task_type, status, when)

    def set_status(self, task_id: str, status: str) -> None:
        """Move a task to any status now, as an operator or a buggy backend might."""
        with self._lock:
            if task_id not in self._tasks:
                raise KeyError(task_id)
            self._set_status(task_id, status, self._clock())

    def remove_task(self, task_id: str) -> None:
        """Make a task vanish, like an expired Redis entry."""
        with self._lock:
            self._drop(self._tasks[task_id])

    def fail_burst(
        self, namespace: str, count: int, task_type: str = "api_buckets_batches_process"
    ) -> list[str]:
        """Create `count` tasks PROCESSING now that all turn FAILED on the next `advance`, for alert tests."""
        with self._lock:
            ns = self._namespace_or_raise(namespace)
            now = self._clock()
            ids = [self._create(ns, task_type, "PROCESSING", now) for _ in range(count)]
            self._doomed.update(ids)
            return ids

    def get_task(self, task_id: str) -> SimTask | None:
        """One task, or None once removed or expired."""
        with self._lock:
            self._expire(self._clock())
            return self._tasks.get(task_id)

    def tasks(self, namespace: str | None = None) -> list[SimTask]:
        """A consistent snapshot of the live tasks, in creation order, of one namespace or all."""
        with self._lock:
            self._expire(self._clock())
            if namespace is None:
                return list(self._tasks.values())
            ns_id = self._namespace_or_raise(namespace).namespace_id
            return list(self._by_namespace[ns_id].values())

    def create_tasks(self, namespace: str, tasks: Iterable[tuple[str, str, float]]) -> list[str]:
        """Create many tasks at once, each `(task_type, status, created_at)`, and return their ids.

        The same tasks as `create_task` makes one by one (ground truth included), in half the time, for
        worlds of millions of tasks; the random draws differ, so the ids are not those of `create_task`.
        """
        terminal_statuses = frozenset(TERMINAL_STATUSES)
        ids: list[str] = []
        transitions: Counter[tuple[str, str]] = Counter()
        with self._lock, _gc_paused():
            ns = self._namespace_or_raise(namespace)
            bits, choice, buckets = self._rng.getrandbits, self._rng.choice, ns.bucket_ids
            ns_id, ns_tasks, all_tasks = ns.namespace_id, self._by_namespace[ns.namespace_id], self._tasks
            oldest = self._oldest
            for task_type, status, when in tasks:
                task_id = _uuid4(bits(128))
                inputs: tuple[str, ...] = ()
                additional: dict[str, object]
                if task_type in BATCH_TASK_TYPES:
                    batch_id, draw = f"btch_{bits(48):012x}", bits(32)
                    additional = {
                        "namespace_id": ns_id,
                        "bucket_id": buckets[draw % len(buckets)],
                        "batch_id": batch_id,
                        "total_tiers": 1 + draw % 3,
                        "object_count": 1 + draw % 5000,
                    }
                    inputs = (batch_id,)
                elif task_type.startswith("engine_"):
                    additional = {"namespace_id": ns_id, "job_id": f"raysubmit_{bits(48):012x}"}
                else:
                    additional = {"namespace_id": ns_id}
                terminal = status in terminal_statuses
                if status == "FAILED":
                    additional["error"] = choice(_ERRORS)
                all_tasks[task_id] = ns_tasks[task_id] = SimTask(
                    task_id,
                    ns_id,
                    task_type,
                    status,
                    when,
                    when,
                    when if terminal else None,
                    additional,
                    inputs,
                )
                if terminal:
                    transitions[(status, task_type)] += 1
                ids.append(task_id)
                oldest = min(oldest, when)
            self._oldest = oldest
            # Created terminal, so they did enter that status: ground truth, counted once.
            self._counted.update(task_id for task_id in ids if all_tasks[task_id].completed_at is not None)
            for (status, task_type), count in transitions.items():
                self._transitions[(ns_id, status, task_type)] += count
            self._touch(ns_id)
        return ids

    def versioned_tasks(self, namespace: str | None = None) -> tuple[int, list[SimTask]]:
        """`tasks(namespace)` and, taken with it, the `version` it is of: a cache of what is derived from
        the tasks (sorted listings) keeps it to know when it is stale."""
        with self._lock:
            self._expire(self._clock())
            if namespace is None:
                return self._version, list(self._tasks.values())
            ns_id = self._namespace_or_raise(namespace).namespace_id
            return self._current_version(ns_id), list(self._by_namespace[ns_id].values())

    def tasks_by_id(self, task_ids: Iterable[str], namespace: str | None = None) -> list[SimTask]:
        """The live tasks among `task_ids` (of one namespace, or all), each once in the order asked: a lookup
        per id, not a scan of the tasks."""
        with self._lock:
            self._expire(self._clock())
            tasks = self._tasks
            if namespace is not None:
                tasks = self._by_namespace[self._namespace_or_raise(namespace).namespace_id]
            found = {task_id: task for task_id in task_ids if (task := tasks.get(task_id)) is not None}
            return list(found.values())

    def version(self, namespace: str | None = None) -> int:
        """A number that changes whenever the tasks of the namespace (name or id; None: any task) change."""
        with self._lock:
            self._expire(self._clock())
            return self._current_version(namespace)

    # Batches

    def create_batch(
        self,
        namespace: str,
        bucket_id: str | None = None,
        objects: int = 100,
        status: str = "DRAFT",
        created_at: float | None = None,
    ) -> str:
        """Create a batch of `objects` objects in a bucket of the namespace (a random one by default).

        Any status string is accepted; a batch created in a terminal status counts in the ground truth.
        """
        with self._lock:
            when = self._clock() if created_at is None else created_at
            return self._batches.create(self._namespace_or_raise(namespace), bucket_id, objects, status, when)

    def set_batch_status(
        self,
        batch_id: str,
        status: str,
        failed_objects: int | None = None,
        failure_category: str | None = None,
    ) -> None:
        """Move a batch to any status now. A terminal status may say how many objects failed and why (a
        FAILED batch without a category gets `unknown`); the lifecycle picks up from there on `advance`."""
        with self._lock:
            self._batches.set_status(batch_id, status, self._clock(), failed_objects, failure_category)

    def remove_batch(self, batch_id: str) -> None:
        """Make a batch vanish (a deleted batch); it stays in the ground truth."""
        with self._lock:
            self._batches.remove(batch_id)

    def fail_batch_burst(self, namespace: str, count: int, bucket_id: str | None = None) -> list[str]:
        """Create `count` batches PROCESSING now that all turn FAILED, with a failure category, on the next
        `advance`, for alert tests."""
        with self._lock:
            ns, now = self._namespace_or_raise(namespace), self._clock()
            ids = [self._batches.create(ns, bucket_id, 100, "PROCESSING", now) for _ in range(count)]
            self._batches.doom(ids)
            return ids

    def get_batch(self, batch_id: str) -> SimBatch | None:
        """One batch, or None once removed."""
        with self._lock:
            return self._batches.get(batch_id)

    def batches(self, namespace: str | None = None) -> list[SimBatch]:
        """A consistent snapshot of the batches, in creation order, of one namespace or all."""
        with self._lock:
            if namespace is None:
                return self._batches.all()
            return self._batches.all(self._namespace_or_raise(namespace).namespace_id)

    # Time

    def advance(self, seconds: float) -> None:
        """Simulate the `seconds` that ended at `clock()`: arrivals, state changes, then expiry.

        Events get exact timestamps inside the window, so a big step (e.g. to build history) is as realistic
        as many small ones.
        """
        if seconds < 0:
            raise ValueError(f"cannot advance by {seconds} s")
        with self._lock:
            now = self._clock()
            start = now - seconds
            for task_id in sorted(self._doomed):
                self._set_status(task_id, "FAILED", now)
            for ns in self._namespaces.values():
                self._spawn(ns, start, now)
            for task in list(self._tasks.values()):
                if task.status not in TERMINAL_STATUSES:
                    self._evolve(task, start, now)
            self._expire(now)
            self._batches.advance(self._namespaces.values(), start, now)

    # Ground truth

    @property
    def transitions(self) -> Counter[tuple[str, str, str]]:
        """How many tasks entered each terminal status, keyed by (namespace_id, status, task_type).

        Each task counts once, when it first becomes terminal, even if it later expires.
        """
        with self._lock:
            return Counter(self._transitions)

    @property
    def batch_transitions(self) -> Counter[tuple[str, str, str]]:
        """Batches that entered each terminal status, keyed by (namespace_id, bucket_id, status); each batch
        counts once, when it first becomes terminal, even if it is later removed."""
        with self._lock:
            return Counter(self._batches.transitions)

    @property
    def batch_objects(self) -> Counter[tuple[str, str, str]]:
        """Objects of finished batches keyed by (namespace_id, bucket_id, outcome), outcome `processed`
        (objects - failed) or `failed`, counted when each batch first becomes terminal."""
        with self._lock:
            return Counter(self._batches.objects)

    @property
    def batch_failures(self) -> Counter[tuple[str, str, str]]:
        """Finished batches that carry a failure category, keyed by (namespace_id, bucket_id, category)."""
        with self._lock:
            return Counter(self._batches.failures)

    def status_counts(self, namespace: str | None = None) -> Counter[str]:
        """Live tasks per current status, of one namespace (name or id) or all."""
        return Counter(task.status for task in self.tasks(namespace))

    # Internals; callers hold the lock.

    def _find_namespace(self, ref: str) -> SimNamespace | None:
        found = self._namespaces.get(ref)
        if found is None:
            found = next((ns for ns in self._namespaces.values() if ns.namespace_name == ref), None)
        return found

    def _namespace_or_raise(self, ref: str) -> SimNamespace:
        found = self._find_namespace(ref)
        if found is None:
            raise KeyError(f"unknown namespace {ref!r}")
        return found

    def _hex_id(self, prefix: str) -> str:
        return f"{prefix}{self._rng.getrandbits(48):012x}"

    def _current_version(self, namespace: str | None) -> int:
        if namespace is None:
            return self._version
        return self._namespace_versions.get(self._namespace_or_raise(namespace).namespace_id, 0)

    def _touch(self, namespace_id: str) -> None:
        """Record a change of the namespace's tasks: cached listings of it, and of the world, are stale."""
        self._version += 1
        self._namespace_versions[namespace_id] = self._version

    def _store(self, task: SimTask) -> None:
        self._tasks[task.task_id] = self._by_namespace[task.namespace_id][task.task_id] = task
        self._touch(task.namespace_id)

    def _drop(self, task: SimTask) -> None:
        del self._tasks[task.task_id]
        del self._by_namespace[task.namespace_id][task.task_id]
        self._touch(task.namespace_id)
        self._forget(task.task_id)

    def _create(self, ns: SimNamespace, task_type: str, status: str, when: float) -> str:
        task_id = _uuid4(self._rng.getrandbits(128))
        additional: dict[str, object] = {"namespace_id": ns.namespace_id}
        inputs: tuple[str, ...] = ()
        if task_type in BATCH_TASK_TYPES:
            batch_id = self._hex_id("btch_")
            additional.update(
                bucket_id=self._rng.choice(ns.bucket_ids),
                batch_id=batch_id,
                total_tiers=self._rng.randint(1, 3),
                object_count=self._rng.randint(1, 5000),
            )
            inputs = (batch_id,)
        elif task_type.startswith("engine_"):
            additional["job_id"] = self._hex_id("raysubmit_")
        self._store(
            SimTask(
                task_id=task_id,
                namespace_id=ns.namespace_id,
                task_type=task_type,
                status="PENDING",
                created_at=when,
                updated_at=when,
                completed_at=None,
                additional_data=additional,
                inputs=inputs,
            )
        )
        self._oldest = min(self._oldest, when)
        if status != "PENDING":
            self._set_status(task_id, status, when)
        return task_id

    def _set_status(self, task_id: str, status: str, when: float) -> None:
        task = self._tasks[task_id]
        terminal = status in TERMINAL_STATUSES
        additional = task.additional_data
        if status == "FAILED" and "error" not in additional:
            additional = {**additional, "error": self._rng.choice(_ERRORS)}
        self._store(
            dataclasses.replace(
                task,
                status=status,
                updated_at=when,
                completed_at=when if terminal else None,
                additional_data=additional,
            )
        )
        self._doomed.discard(task_id)
        if terminal and task_id not in self._counted:
            self._counted.add(task_id)
            self._transitions[(task.namespace_id, status, task.task_type)] += 1

    def _spawn(self, ns: SimNamespace, start: float, now: float) -> None:
        """Poisson arrivals: exponential gaps between creations inside the window."""
        if ns.spawn_rate_per_s <= 0:
            return
        types, weights = list(TASK_TYPE_MIX), list(TASK_TYPE_MIX.values())
        when = start + self._rng.expovariate(ns.spawn_rate_per_s)
        while when <= now:
            self._create(ns, self._rng.choices(types, weights)[0], "PENDING", when)
            when += self._rng.expovariate(ns.spawn_rate_per_s)

    def _evolve(self, task: SimTask, start: float, now: float) -> None:
        """Walk one task through its states; statuses outside the lifecycle (e.g. RETRYING) stay put."""
        when = max(start, task.updated_at)
        status = task.status
        while status in self._mean_s:
            when += self._rng.expovariate(1 / self._mean_s[status])
            if when > now:
                return
            status = self._next_status(task, status)
            self._set_status(task.task_id, status, when)

    def _next_status(self, task: SimTask, status: str) -> str:
        if status == "PENDING" and self._rng.random() < self._queue_ratio:
            return "QUEUED"
        if status not in _RUNNING:
            batchy = task.task_type in BATCH_TASK_TYPES or task.task_type.startswith("engine_")
            return "PROCESSING" if batchy else "IN_PROGRESS"
        draw = self._rng.random()
        failure_ratio = self._namespaces[task.namespace_id].failure_ratio
        for outcome, ratio in (
            ("FAILED", failure_ratio),
            ("COMPLETED_WITH_ERRORS", self._partial_ratio),
            ("CANCELED", self._cancel_ratio),
        ):
            if draw < ratio:
                return outcome
            draw -= ratio
        return "COMPLETED"

    def _expire(self, now: float) -> None:
        cutoff = now - self._retention_s
        if self._oldest >= cutoff:
            return
        for task in [t for t in self._tasks.values() if t.created_at < cutoff]:
            self._drop(task)
        self._oldest = min((t.created_at for t in self._tasks.values()), default=float("inf"))

    def _forget(self, task_id: str) -> None:
        self._doomed.discard(task_id)
        self._counted.discard(task_id)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: a bulk load makes millions of objects that all stay alive, and
    each collection would walk them all again for nothing (a third of the time of a million tasks)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _uuid4(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))`, in a third of the time: the world makes millions of them."""
    bits = (bits & ~(0xC000 << 48) | 0x8000 << 48) & ~(0xF000 << 64) | 4 << 76
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _check_ratios(*ratios: float) -> None:
    if any(r < 0 for r in ratios) or sum(ratios) > 1:
        raise ValueError(f"ratios must be non-negative and sum to at most 1: {ratios}")
