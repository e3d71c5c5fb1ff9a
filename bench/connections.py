"""The HTTP server under a connection flood: /healthz latency, stop time and CPU at the open-file limit.

The real MetricsServer runs in a child process (so that the flood's client side neither competes for its
GIL nor shares its file descriptors). The flood is slowloris-shaped: connections that send nothing, and
connections that send half a request and stop. Then:

- /healthz: the time for a new connection to get its answer (timeout 120 s);
- stop: the time from SIGTERM to the child's exit (the child calls MetricsServer.stop());
- trickle: the half-sent requests get one more byte every 0.5 s (so that none times out) while /healthz is
  probed and the child's CPU use is sampled;
- with --nofile: the child gets a low RLIMIT_NOFILE, so that the flood goes past it (EMFILE).

    PYTHONPATH=. python -u bench/connections.py [--connections 5000] [--nofile 48] [--seconds 5]

Without --nofile the child keeps the limit it inherits. Waits are bounded: /healthz 60 s, the exit 60 s
(then the child is killed, and the report says so).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import resource
import signal
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from prometheus_client import CollectorRegistry

from exporter.server import MetricsServer


def child(pipe: Connection, nofile: int | None) -> None:
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the server's thread inherits the mask
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: True)
    server.start()
    pipe.send(server.port)
    signal.sigwait({signal.SIGTERM})
    server.stop()


def flood(port: int, count: int) -> list[socket.socket]:
    """Half of them silent, half a request line and one header, never finished."""
    sockets = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        sockets.append(s)
        if i % 2:
            with contextlib.suppress(OSError):
                s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    return sockets


def trickle(sockets: list[socket.socket], seconds: float) -> None:
    """Slowloris proper: one more header byte on each connection every 0.5 s, so none times out."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for s in sockets:
            with contextlib.suppress(OSError):  # closed by the server
                s.send(b"a")
        time.sleep(0.5)


def healthz_seconds(port: int) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/healthz")
        status = str(connection.getresponse().status)
        connection.close()
    except OSError as exc:
        status = type(exc).__name__
    return time.perf_counter() - start, status


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prober(port: int, stop: Event, results: Connection) -> None:
    """/healthz after /healthz on new connections, in a process of its own (sharing no GIL with the flood)."""
    probes = []
    while not stop.is_set():
        probes.append(healthz_seconds(port))
    results.send(probes)


class Probing:
    def __init__(self, port: int) -> None:
        self._stop = multiprocessing.Event()
        self._results, results = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=prober, args=(port, self._stop, results))
        self._process.start()

    def report(self) -> str:
        self._stop.set()
        probes: list[tuple[float, str]] = self._results.recv()
        self._process.join()
        failed = sum(status != "200" for _, status in probes)
        worst = max(took for took, _ in probes)
        return f"/healthz {len(probes)} probes, {failed} failed, slowest {worst:.3f} s"


def run(connections: int, nofile: int | None, seconds: float) -> None:
    parent, child_end = multiprocessing.Pipe()
    process = multiprocessing.Process(target=child, args=(child_end, nofile))
    process.start()
    port = parent.recv()
    assert process.pid is not None
    probing = Probing(port)
    start = time.perf_counter()
    sockets = flood(port, connections)
    print(f"  {connections} connections opened in {time.perf_counter() - start:.2f} s; {probing.report()}")
    took, status = healthz_seconds(port)
    print(f"  /healthz after it, with the flood held open: {status} in {took:.3f} s")
    cpu = cpu_seconds(process.pid)
    probing = Probing(port)
    start = time.perf_counter()
    trickle(sockets[1::2], seconds)
    elapsed = time.perf_counter() - start
    share = (cpu_seconds(process.pid) - cpu) / elapsed
    print(
        f"  {elapsed:.1f} s of the half-sent requests trickling a byte every 0.5 s: "
        f"server CPU {share:.0%} of a core; {probing.report()}"
    )
    start = time.perf_counter()
    os.kill(process.pid, signal.SIGTERM)
    process.join(60)
    if process.exitcode is None:
        process.kill()
        print("  SIGTERM to exit: not within 60 s (killed)")
    else:
        print(f"  SIGTERM to exit: {time.perf_counter() - start:.2f} s")
    for s in sockets:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--nofile", type=int, help="the child's RLIMIT_NOFILE (48: below the cap, so EMFILE)")
    parser.add_argument("--seconds", type=float, default=5.0, help="trickle time")
    args = parser.parse_args()
    limit = f" at RLIMIT_NOFILE={args.nofile}" if args.nofile else ""
    print(f"flood of {args.connections} slow connections{limit}:")
    run(args.connections, args.nofile, args.seconds)


if __name__ == "__main__":
    main()
