"""What a basic auth check costs: an unknown user, a known user with a wrong password, a remembered success.

An unknown user must cost what a wrong password costs (a bcrypt against a dummy hash of the same cost), or
the time of a 401 tells which users exist. A remembered success must cost next to nothing, since Prometheus
sends the same credentials every scrape.

    PYTHONPATH=. python bench/basicauth.py [--cost 10] [--rounds 20]

Prints the median and the spread (min..max) of each case, in milliseconds.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable
from functools import partial

import bcrypt
from pydantic import SecretStr

from exporter.basicauth import BasicAuth


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def timed(check: Callable[[], bool], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        check()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cost", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=args.cost)).decode()
    auth = BasicAuth({"prometheus": SecretStr(hashed)})
    auth.allows(header("prometheus", "s3cret"))  # remembered from here on
    cases = {
        "unknown user": header("mallory", "s3cret"),
        "wrong password": header("prometheus", "wrong"),
        "remembered success": header("prometheus", "s3cret"),
    }
    print(f"bcrypt cost {args.cost}, {args.rounds} rounds each")
    for name, value in cases.items():
        times = timed(partial(auth.allows, value), args.rounds)
        print(f"{name:>20}: median {statistics.median(times):8.3f} ms ({min(times):.3f}..{max(times):.3f})")


if __name__ == "__main__":
    main()
