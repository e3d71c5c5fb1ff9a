"""Where a poll's time goes, by component: from py-spy's samples of the whole process, or from a cProfile
profile of the poller's thread.

bench/scale.py's `--sample` prints the first for its last poll: py-spy (PyPI `py-spy`, a tool of the
bench, not a dependency of the exporter) samples every thread of the process, its C frames too, at a
cost that does not depend on what the code calls, and each busy sample is charged to the innermost
frame of its stack that belongs to a component (a dict's `get` inside the fold is the fold's; a cyclic
collection is the collector's). It is the honest split of the CPU. Both print each component's share
of the busy time and that share of the poll's measured CPU.

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
GC = "garbage collection (cycles; py-spy only)"
EVENT_LOOP = "asyncio event loop"
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (WAITING, ("'select.epoll'",)),
    ("msgspec decode", ("msgspec",)),
    ("zlib-ng inflate", ("zlib_ng",)),
    ("socket calls", ("_socket.socket", "socketmodule.c")),
    ("httpx, httpcore, h11, anyio", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    (EVENT_LOOP, ("/asyncio/", "/selectors.py")),
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
COLLECTING = ("gc_collect_main", "gc_collect_generations", "collect_with_callback")
"""C frames of CPython's cyclic garbage collector: charged to it, not to the code whose allocation set
it off."""


class Sampler:
    """py-spy recording this process while in the `with` block, C frames included; then `seconds`."""

    def __init__(self) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--sample needs py-spy: pip install py-spy")
        self._spy = spy
        self._output = Path(tempfile.mkdtemp()) / "samples.txt"
        self._process: subprocess.Popen[str] | None = None
        self.seconds: Seconds = defaultdict(float)

    def __enter__(self) -> Sampler:
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            [
                *(self._spy, "record", "--pid", str(os.getpid())),
                *("--rate", str(SAMPLES_PER_S), "--format", "raw", "--output", str(self._output)),
                *("--native", "--full-filenames"),  # --native pauses the process per sample: 1-2 %
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._process.stdout is not None
        said = self._process.stdout.readline()  # it samples before it says so
        if "Sampling process" not in said:
            self._process.kill()
            raise RuntimeError(
                f"py-spy: {said.strip() or self._process.wait()} (it needs to ptrace this process: root, "
                "or kernel.yama.ptrace_scope 0)"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)
        try:
            said, _ = self._process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise
        print(" ".join(line for line in said.splitlines() if "Samples:" in line), file=sys.stderr)
        for line in self._output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            self.seconds[_sampled(stack)] += int(count) / SAMPLES_PER_S
        with contextlib.suppress(OSError):
            self._output.unlink()
            self._output.parent.rmdir()


def _sampled(stack: str) -> str:
    """The component of one sample: the innermost frame's that has one. The event loop is the way into
    every coroutine, so it is the sample's component only when no Python frame inward of it went
    unnamed (bench code, a stdlib helper called from a callback): those are the rest's."""
    if any(wait in stack for wait in IDLE):
        return WAITING
    if any(frame in stack for frame in COLLECTING):
        return GC
    unnamed_python = False
    for frame in reversed(stack.split(";")):
        name = component(frame, "")
        if name == EVENT_LOOP and unnamed_python:
            return REST
        if name != REST:
            return name
        unnamed_python = unnamed_python or ".py:" in frame
    return REST


def report(seconds: Seconds, tasks: int | None, requests: int, cpu: float, how: str) -> str:
    """A markdown table: each component's share of the busy time, and that share of the poll's CPU per
    task listed (None: the poll was not a listing of them all) and per API request. Shares, not the
    sampled seconds: py-spy falls behind its rate when it reads C stacks, and a thread that waits for a
    core looks busy to it and to cProfile's wall clock alike."""
    busy = sum(s for name, s in seconds.items() if name != WAITING)
    listed = f"{tasks:,} tasks" if tasks else "not a full listing"
    lines = [
        f"The last poll, {how}: {listed}, {requests:,} API requests, the process's CPU {cpu:.2f} s; "
        f"busy {busy:.2f} s, waiting {seconds.get(WAITING, 0.0):.2f} s (thread-seconds seen).",
        "",
        "| component | share of busy | µs of CPU / task | ms of CPU / request |",
        "|---|---:|---:|---:|",
    ]
    order = [name for name, _ in COMPONENTS if name != WAITING] + [GC, REST]
    for name in order:
        if name == GC and not seconds.get(name):
            continue
        lines.append(_row(name, seconds.get(name, 0.0) / busy if busy else 0.0, cpu, tasks, requests))
    lines.append(_row("in all", 1.0, cpu, tasks, requests))
    return "\n".join(lines)


def _row(name: str, share: float, cpu: float, tasks: int | None, requests: int) -> str:
    per_task = f"{share * cpu / tasks * 1e6:.2f}" if tasks else ""
    return f"| {name} | {share:.1%} | {per_task} | {share * cpu / max(1, requests) * 1e3:.2f} |"
