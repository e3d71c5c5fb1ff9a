"""Where a poll's time goes, by component: from py-spy's samples of the whole process, or from a cProfile
profile of the poller's thread.

bench/scale.py's `--sample` prints the first for its last poll: py-spy (PyPI `py-spy`, a tool of the
bench, not a dependency of the exporter) samples every thread of the process, its C frames too, at a
cost that does not depend on what the code calls, and each busy sample is charged to the innermost
frame of its stack that belongs to a component (a dict's `get` inside the fold is the fold's). It is the
honest split of the CPU.

bench/scale.py's `--profile` prints the second, with the costliest functions by name. Each function's
own time (tottime) is charged to the first component whose markers its file or name holds (a function
of none, to its callers); the time asyncio's selector spends waiting for the API's answers is shown
apart, since it is not the exporter's work. cProfile adds a cost to every call, so it inflates the
components made of many small Python calls (httpx, the fold) against those in C (msgspec, zlib-ng), and
it times by the wall clock (a CPU clock would cost a system call per event here), so a poll preempted
by the API's process shows as busy.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

WAITING = "waiting for sockets, locks or the GIL (not CPU)"
REST = "everything else (called from no component above)"
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (WAITING, ("'select.epoll'",)),
    ("msgspec decode", ("msgspec",)),
    ("zlib-ng inflate", ("zlib_ng",)),
    ("socket calls", ("_socket.socket", "socketmodule.c")),
    ("httpx, httpcore, h11, anyio", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    ("asyncio event loop", ("/asyncio/", "/selectors.py")),
    ("task state fold (exporter/state.py)", ("/exporter/state.py",)),
    ("API checks (exporter/checks.py)", ("/exporter/checks.py",)),
    ("API client (exporter/api.py)", ("/exporter/api.py",)),
    ("poller (exporter/poller.py)", ("/exporter/poller.py",)),
    (
        "rendering /metrics (exporter/exposition.py, metrics.py)",
        ("/exporter/exposition.py", "/exporter/metrics.py"),
    ),
    ("rest of the exporter", ("/exporter/",)),
)


def component(filename: str, function: str) -> str:
    where = f"{filename}:{function}"
    return next((name for name, markers in COMPONENTS if any(m in where for m in markers)), REST)


Seconds = defaultdict[str, float]
"""Seconds per component."""


def by_component(stats: pstats.Stats) -> Seconds:
    """Seconds of own time per component. A function of no component of its own (a dict's `get`,
    contextlib's) is charged to its callers, each for the time its calls took: the fold's lookups are
    the fold's, httpcore's context managers httpcore's."""
    seconds: Seconds = defaultdict(float)
    for (filename, _, function), (_, _, own, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = component(filename, function)
        if name != REST or not callers:
            seconds[name] += own
            continue
        for (caller_file, _, caller), (_, _, from_there, _) in callers.items():
            seconds[component(caller_file, caller)] += from_there
    return seconds


SAMPLES_PER_S = 100
IDLE = ("epoll_wait", "PyThread_acquire_lock_timed", "take_gil", "sock_accept", "select_select", "poll_poll")
"""C frames of a thread that waits (for a socket, a lock, the GIL): py-spy's own test of idleness,
the thread's state, misses them when it pauses the process to read C stacks."""


class Sampler:
    """py-spy recording this process from its making to `stop`, C frames included."""

    def __init__(self) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--sample needs py-spy: pip install py-spy")
        self._output = Path(tempfile.mkdtemp()) / "samples.txt"
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            [
                *(spy, "record", "--pid", str(os.getpid())),
                *("--rate", str(SAMPLES_PER_S), "--format", "raw", "--output", str(self._output)),
                *("--native", "--full-filenames"),  # --native pauses the process per sample: 1-2 %
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._process.stdout is not None
        said = self._process.stdout.readline()
        if "Sampling process" not in said:
            raise RuntimeError(f"py-spy: {said.strip() or self._process.wait()}")

    def stop(self) -> Seconds:
        self._process.send_signal(signal.SIGINT)
        self._process.communicate(timeout=60)
        seconds: Seconds = defaultdict(float)
        for line in self._output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if any(wait in stack for wait in IDLE):
                name = WAITING
            else:
                name = next((c for frame in reversed(frames) if (c := component(frame, "")) != REST), REST)
            seconds[name] += int(count) / SAMPLES_PER_S
        with contextlib.suppress(OSError):
            self._output.unlink()
            self._output.parent.rmdir()
        return seconds


def report(seconds: Seconds, tasks: int, requests: int, cpu: float, how: str) -> str:
    """A markdown table: each component's time per task listed and per API request, and its share of
    the time that was not spent waiting."""
    busy = sum(s for name, s in seconds.items() if name != WAITING)
    lines = [
        f"The last poll, {how}: {tasks:,} tasks, {requests:,} API requests, the process's CPU {cpu:.2f} s, "
        f"busy {busy:.2f} s.",
        "",
        "| component | µs / task | ms / request | share of busy |",
        "|---|---:|---:|---:|",
    ]
    order = [name for name, _ in COMPONENTS if name != WAITING] + [REST]
    for name in [*order, WAITING] if seconds[WAITING] else order:
        own = seconds[name]
        share = f"{own / busy:.1%}" if name != WAITING and busy else ""
        lines.append(f"| {name} | {own / tasks * 1e6:.2f} | {own / max(1, requests) * 1e3:.2f} | {share} |")
    lines.append(f"| busy, in all | {busy / tasks * 1e6:.2f} | {busy / max(1, requests) * 1e3:.2f} | 100% |")
    return "\n".join(lines)
