"""Instructions per task of a full listing, counted by callgrind: a CPU figure the load does not move.

    python bench/instructions.py                  # 20k tasks, the first poll and two full re-listings
    python bench/instructions.py --tasks 50k --polls 3

The simulated API of bench/scale.py (one namespace, the documented API, gzip on the wire) runs in a child
process, not instrumented. The exporter, built as bench/scale.py builds it, runs under
`valgrind --tool=callgrind` three times: with no poll, with the first poll, and with the first poll and
`--polls` full ones (reconcile every poll). The differences of their instruction totals leave out the
interpreter's start, the imports and the exit: printed are the first poll's instructions per task (every
task new) and a full re-listing's (every task listed again, unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from scale import Options, bench_settings, built_exporter, parse_args, scenario, serve_world

_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def options() -> Options:
    """bench/scale.py's options for a world that does not change between polls, every poll a full listing."""
    _, _, options, _ = parse_args(
        ["--steady-polls", "0", "--reconcile-every", "1", "--churn", "0", "--no-hammer"]
    )
    return options


async def poll(url: str, names: list[str], polls: int) -> None:
    """The exporter's side: `polls` polls, each one checked to have succeeded."""
    settings = bench_settings(url, names, options())
    async with built_exporter(settings, url) as (_, poller, _):
        for _ in range(polls):
            await poller.poll_once()
            failing = [h.failing for h in poller.snapshot.health.values() if not h.up]
            if failing:
                raise SystemExit(f"a poll failed: {failing[0]}")


def instructions(url: str, names: list[str], polls: int) -> int:
    """The instructions of a whole exporter process making `polls` polls, under callgrind."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--client",
            url,
            "--names",
            ",".join(names),
            "--polls",
            str(polls),
        ]
        subprocess.run(command, check=True, capture_output=True, env=os.environ)  # noqa: S603 - our own argv
        match = _TOTALS.search(out.read_bytes())
        if match is None:
            raise SystemExit(f"no totals in {out}")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=scenario, default=scenario("20k"), help="tasks, e.g. 20k (default)")
    parser.add_argument("--polls", type=int, default=2, help="full re-listings measured (default 2)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # one instrumented exporter process
        asyncio.run(poll(args.client, args.names.split(","), args.polls))
        return
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    api = context.Process(target=serve_world, args=(args.tasks, "default", options(), child_end), daemon=True)
    api.start()
    try:
        url, names, _ = control.recv()
        none, first, more = (instructions(url, names, polls) for polls in (0, 1, 1 + args.polls))
    finally:
        control.send("stop")
        api.join(30)
    tasks = args.tasks.tasks
    print(f"| {args.tasks.name} tasks | instructions per task |")
    print("|---|---:|")
    print(f"| first poll (every task new) | {(first - none) / tasks:,.0f} |")
    again = (more - first) / args.polls / tasks
    print(f"| full re-listing (every task unchanged), mean of {args.polls} | {again:,.0f} |")


if __name__ == "__main__":
    main()
