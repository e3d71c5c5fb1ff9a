"""How fast can one tasks/list page become task state? The candidates, on the same 1,000-task page.

Prints microseconds per task to inflate a gzipped page (a real API's edge compresses) with zlib and with
zlib-ng, for each way of decoding a page into what the state reads, then for the
decoder the exporter uses, the cost of folding the page into the state (a first sight, and a task seen
unchanged again, which is the common case of a full listing), for a page of active tasks and for the mix
of a busy namespace, where most tasks are finished.

    python bench/decode.py
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from zlib_ng import zlib_ng

from exporter.api import Task, _TaskPage, parse_timestamp
from exporter.config import DEFAULT_BUCKETS
from exporter.simulator import ApiProfile, NamespaceIds, World
from exporter.simulator.render import task_json
from exporter.simulator.testing import FakeClock
from exporter.state import NamespaceState, Observation

ROUNDS = 30


@dataclass(frozen=True, slots=True)
class Converted:
    task_id: str
    status: str
    task_type: str
    created_at: float | None


class PydanticTask(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(min_length=1)
    task_type: str
    status: str
    additional_data: dict[str, Any] | None = None
    created_at: str | float | None = None
    completed_at: str | float | None = None


class PydanticPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    results: list[PydanticTask]


def page_bytes(size: int = 1000, active_every: int = 1) -> bytes:
    """One page of `size` tasks; one in `active_every` is PENDING, the rest COMPLETED."""
    clock = FakeClock()
    world = World(clock=clock, seed=1)
    world.add_namespace("bench")
    for i in range(size):
        status = "PENDING" if i % active_every == 0 else "COMPLETED"
        world.create_task("bench", ("thumbnail", "engine_cluster_build")[i % 2], status)
        clock.advance(0.01)
    shown = ApiProfile(timestamps=True, namespace_ids=NamespaceIds.ALL)  # the exporter decodes created_at
    results = [task_json(task, shown) for task in world.tasks("bench")]
    return json.dumps({"results": results, "pagination": {"next_cursor": None}}).encode()


def pydantic_loads(raw: bytes) -> list[Converted]:
    page = PydanticPage.model_validate(json.loads(raw))
    return [Converted(t.task_id, t.status, t.task_type, parse_timestamp(t.created_at)) for t in page.results]


ADAPTER = TypeAdapter(PydanticPage)


def pydantic_json(raw: bytes) -> list[Converted]:
    page = ADAPTER.validate_json(raw)
    return [Converted(t.task_id, t.status, t.task_type, parse_timestamp(t.created_at)) for t in page.results]


def orjson_dicts(raw: bytes) -> list[Converted]:
    out = []
    for item in orjson.loads(raw)["results"]:
        task_id = item["task_id"]
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("task_id")
        out.append(
            Converted(
                task_id, str(item["status"]), str(item["task_type"]), parse_timestamp(item.get("created_at"))
            )
        )
    return out


def msgspec_struct(raw: bytes) -> list[Task]:
    return msgspec.json.decode(raw, type=_TaskPage).results


def inflated(module: ModuleType, zipped: bytes) -> bytes:
    """The page inflated whole by one fresh decompressor, as the client does per response."""
    page: bytes = module.decompressobj(32 + zlib.MAX_WBITS).decompress(zipped)
    return page


def per_task_us(run: Callable[[], object], tasks: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / tasks * 1e6


def main() -> None:
    raw = page_bytes()
    tasks = len(msgspec_struct(raw))
    print(f"one page: {tasks} tasks, {len(raw) / tasks:.0f} bytes per task; best of {ROUNDS} rounds\n")
    zipped = gzip.compress(raw, 1)
    print(f"| inflating the page gzipped ({len(zipped) / tasks:.0f} bytes per task) | µs per task |")
    print("|---|---|")
    for name, module in (("zlib", zlib), ("zlib-ng (chosen)", zlib_ng)):
        assert inflated(module, zipped) == raw
        per_task = per_task_us(partial(inflated, module, zipped), tasks)
        print(f"| {name} | {per_task:.2f} |")
    print()
    print("| decoding (page bytes -> what the state reads) | µs per task |")
    print("|---|---|")
    candidates: list[tuple[str, Callable[[bytes], object]]] = [
        ("json.loads + pydantic model_validate (the exporter before)", pydantic_loads),
        ("pydantic TypeAdapter.validate_json", pydantic_json),
        ("orjson.loads + hand-checked dicts", orjson_dicts),
        ("msgspec Struct of the read fields (chosen)", msgspec_struct),
    ]
    for name, decode in candidates:
        print(f"| {name} | {per_task_us(partial(decode, raw), tasks):.2f} |")

    print("\n| state update (Observation.add + result) | µs per task |")
    print("|---|---|")
    for mix, active_every in (("all active", 1), ("2.5 % active, as in bench/scale.py", 40)):
        page_raw = page_bytes(active_every=active_every)
        first, again = state_update(msgspec_struct(page_raw))
        decode_us = per_task_us(partial(msgspec_struct, page_raw), tasks)
        print(f"| {mix}: first sight | {first:.2f} |")
        print(f"| {mix}: seen again, unchanged | {again:.2f} |")
        listing = f"{decode_us + first:.2f} / {decode_us + again:.2f}"
        print(f"| {mix}: a full listing, decode + state, first / again | {listing} |")


def state_update(page: list[Task]) -> tuple[float, float]:
    """µs per task to fold the page into a new state, then into the state that already holds it."""
    empty = NamespaceState(buckets=DEFAULT_BUCKETS)

    def first_sight() -> NamespaceState:
        observation = Observation(empty, 0.0)
        observation.add(page)
        return observation.result()

    seen = first_sight()

    def seen_again() -> NamespaceState:
        observation = Observation(seen, 30.0)
        observation.add(page)
        return observation.result()

    return per_task_us(first_sight, len(page)), per_task_us(seen_again, len(page))


if __name__ == "__main__":
    main()
