"""A faithful fake of the Mixpeek API's task, namespace, bucket and batch routes: the exporter's demo mode and
test double.

`World` holds the truth (namespaces, tasks, buckets, batches, what really happened), `SimulatorServer` serves
it over HTTP with the real API's rules and, where the documentation leaves a behaviour open, an `ApiProfile`'s
answer (the documented API by default), and `start_demo` runs a lively one on real time. What only tests use
(a fake clock, recorded requests, faults) is in the `testing` subpackage, which the demo never imports.
"""

from .batches import SimBatch, SimTier
from .buckets import SimBucket
from .demo import DemoSimulator, start_demo
from .enums import FAILURE_CATEGORIES, TASK_STATUSES, TASK_TYPES, TERMINAL_STATUSES
from .profile import DOCUMENTED, ApiProfile, NamespaceIds
from .server import DEFAULT_API_KEY, SimulatorServer
from .world import SimNamespace, SimTask, World

__all__ = [
    "DEFAULT_API_KEY",
    "DOCUMENTED",
    "FAILURE_CATEGORIES",
    "TASK_STATUSES",
    "TASK_TYPES",
    "TERMINAL_STATUSES",
    "ApiProfile",
    "DemoSimulator",
    "NamespaceIds",
    "SimBatch",
    "SimBucket",
    "SimNamespace",
    "SimTask",
    "SimTier",
    "SimulatorServer",
    "World",
    "start_demo",
]
