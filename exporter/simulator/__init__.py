"""A faithful fake of the Mixpeek API's task and namespace routes: the exporter's demo mode and test double.

`World` holds the truth (namespaces, tasks, what really happened), `SimulatorServer` serves it over HTTP with
the real API's rules, `start_demo` runs a lively one on real time, and `FakeClock` lets tests move time.
"""

from .clock import FakeClock
from .demo import DemoSimulator, start_demo
from .enums import TASK_STATUSES, TASK_TYPES, TERMINAL_STATUSES
from .server import DEFAULT_API_KEY, RecordedRequest, SimulatorServer
from .world import SimNamespace, SimTask, World

__all__ = [
    "DEFAULT_API_KEY",
    "TASK_STATUSES",
    "TASK_TYPES",
    "TERMINAL_STATUSES",
    "DemoSimulator",
    "FakeClock",
    "RecordedRequest",
    "SimNamespace",
    "SimTask",
    "SimulatorServer",
    "World",
    "start_demo",
]
