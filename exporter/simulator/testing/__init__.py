"""What only tests and benchmarks use around the simulated API: a clock that moves when told, and a server
that records requests and injects faults (faults.py).

The demo never imports this package, and the wheel leaves it out (pyproject.toml): the demo's server carries
no fault or recording machinery. It lives beside the simulator rather than under tests/ so that bench/ scripts
use it from a checkout without tests/ on their path, and mypy checks it as strictly as the package.
"""

from .clock import FakeClock
from .server import RecordedRequest, SimulatorTestServer

__all__ = ["FakeClock", "RecordedRequest", "SimulatorTestServer"]
