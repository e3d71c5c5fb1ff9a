"""A faithful fake of the Mixpeek API's task, namespace, bucket and batch routes: the exporter's demo mode and
test double.

`World` holds the truth (namespaces, tasks, buckets, batches, what really happened), `SimulatorServer` serves
it over HTTP with the real API's rules, `start_demo` runs a lively one on real time, and `FakeClock` lets
tests move time.
"""

from .batches import SimBatch, SimTier
from .buckets import SimBucket
from .clock import FakeClock
from .demo import DemoSimulator, start_demo
from .enums import FAILURE_CATEGORIES, TASK_STATUSES, TASK_TYPES, TERMINAL_STATUSES
from .server import DEFAULT_API_KEY, RecordedRequest, SimulatorServer
from .world import SimNamespace, SimTask, World

__all__ = [
    "DEFAULT_API_KEY",
    "FAILURE_CATEGORIES",
    "TASK_STATUSES",
    "TASK_TYPES",
    "TERMINAL_STATUSES",
    "DemoSimulator",
    "FakeClock",
    "RecordedRequest",
    "SimBatch",
    "SimBucket",
    "SimNamespace",
    "SimTask",
    "SimTier",
    "SimulatorServer",
    "World",
    "start_demo",
]
