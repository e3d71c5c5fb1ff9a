"""One namespace of N tasks, listed by the real exporter pieces from a simulated API in another process.

Prints requests per poll, wall time and CPU of a full poll, and the exporter process's peak RSS (the
simulated API runs in a child process, so its memory is not counted).

    python bench/poll.py --tasks 50000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import time
from multiprocessing.connection import Connection

import httpx
from pydantic import SecretStr

from exporter.api import MixpeekClient
from exporter.config import DEFAULT_BUCKETS
from exporter.poller import Poller, PollPlan
from exporter.simulator import FakeClock, SimulatorServer, World

KEY = "sk_bench"


def serve(tasks: int, cursor: bool, ready: Connection) -> None:
    clock = FakeClock()
    world = World(clock=clock, seed=1)
    world.add_namespace("bench")
    for i in range(tasks):
        world.create_task(
            "bench", ("thumbnail", "engine_cluster_build")[i % 2], ("PENDING", "COMPLETED")[i % 3 == 0]
        )
        clock.advance(0.001)
    server = SimulatorServer(world, api_key=KEY, cursor_pagination=cursor)
    server.start()
    ready.send(server.url)
    ready.recv()  # until the parent is done
    server.stop()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench(url: str, page_size: int, polls: int) -> list[tuple[int, float, float]]:
    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        client = MixpeekClient(http, lambda: SecretStr(KEY), page_size=page_size)
        poller = Poller(client, PollPlan(("bench",), False, 30.0, 1, DEFAULT_BUCKETS))
        for _ in range(polls):
            before = sum(client.requests.values())
            wall, cpu = time.perf_counter(), time.process_time()
            await poller.poll_namespace("bench")
            rows.append(
                (
                    sum(client.requests.values()) - before,
                    time.perf_counter() - wall,
                    time.process_time() - cpu,
                )
            )
        assert poller.snapshot.health["bench"].up, "the poll failed"
        tracked = len(poller.snapshot.namespaces["bench"].tasks)
    print(f"tracked tasks: {tracked}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=3)
    parser.add_argument(
        "--offset-only", action="store_true", help="an API without cursors (created_at windows)"
    )
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(
        target=serve, args=(args.tasks, not args.offset_only, child), daemon=True
    )
    server.start()
    url = parent.recv()
    start_rss = rss_mb()
    rows = asyncio.run(bench(url, args.page_size, args.polls))
    parent.send("done")
    server.join(10)
    print(f"{'poll':>4} {'requests':>8} {'wall s':>8} {'exporter CPU s':>14} {'CPU us/task':>11}")
    for i, (requests, wall, cpu) in enumerate(rows, 1):
        print(f"{i:>4} {requests:>8} {wall:>8.2f} {cpu:>14.2f} {cpu / args.tasks * 1e6:>11.1f}")
    print(f"exporter peak RSS: {rss_mb():.0f} MB (at start {start_rss:.0f} MB)")


if __name__ == "__main__":
    main()
