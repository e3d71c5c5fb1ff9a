"""The poll loops never stop silently: an exception nobody expected, at any stage, is logged with its
traceback once per kind, counted, the last good numbers stay, and the next poll goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY
from prometheus_client.metrics_core import Metric
from structlog.typing import EventDict
from support import Exporter

from exporter import api as api_module
from exporter import poller as poller_module
from exporter import state as state_module
from exporter.server import MetricsServer
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.statefile import StateFile

MakeExporter = Callable[..., Exporter]


class Once:
    """Replaces a function so that its next call raises `error`; later calls go through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, error: BaseException) -> None:
        self.original = getattr(owner, name)
        self.error: BaseException | None = error
        self.calls = 0

        def replacement(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            return self.original(*args, **kwargs)

        monkeypatch.setattr(owner, name, replacement)


def internal_errors(exporter: Exporter, stage: str) -> float:
    return exporter.value("mixpeek_exporter_internal_errors_total", stage=stage)


@pytest.fixture
def seeded(world: World, clock: FakeClock) -> None:
    for status in ("PROCESSING", "COMPLETED", "FAILED"):
        world.create_task("prod", "thumbnail", status)
        clock.advance(1)


@pytest.mark.parametrize(
    ("stage", "owner", "name"),
    [
        ("poll", api_module, "_validated"),  # decoding a page
        ("state", state_module.Observation, "result"),  # folding a listing into the state
        ("state", poller_module, "poll_succeeded"),  # after the listing took the task table over
    ],
    ids=["decoding", "state", "after the state"],
)
async def test_an_unexpected_error_in_a_poll_is_logged_counted_and_the_next_poll_goes_on(
    monkeypatch: pytest.MonkeyPatch,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    seeded: None,
    logs: list[EventDict],
    world: World,
    stage: str,
    owner: Any,
    name: str,
) -> None:
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()
    before = exporter.value(
        "mixpeek_tasks", mixpeek_namespace="prod", status="PROCESSING", task_type="thumbnail"
    )
    broken = Once(monkeypatch, owner, name, RecursionError("maximum recursion depth exceeded"))
    world.create_task("prod", "thumbnail", "PROCESSING")
    await exporter.poll()
    assert broken.calls >= 1
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 0
    assert (
        exporter.value("mixpeek_exporter_poll_errors_total", mixpeek_namespace="prod", reason="internal") == 1
    )
    assert internal_errors(exporter, stage) == 1
    assert (
        exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="PROCESSING", task_type="thumbnail")
        == before
    )
    logged = [event for event in logs if event["event"].startswith("unexpected error")]
    assert logged[0]["exc_info"] is not None
    assert logged[0]["stage"] == stage
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert (
        exporter.value("mixpeek_tasks", mixpeek_namespace="prod", status="PROCESSING", task_type="thumbnail")
        == 2
    )


async def test_the_same_kind_of_error_is_logged_with_its_traceback_once_then_counted(
    monkeypatch: pytest.MonkeyPatch,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    seeded: None,
    logs: list[EventDict],
) -> None:
    exporter = make_exporter(api, namespaces=("prod",))

    def always(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(state_module.Observation, "result", always)
    for _ in range(3):
        await exporter.poll()
    assert internal_errors(exporter, "state") == 3
    tracebacks = [event for event in logs if event["event"] == "unexpected error; the poll loop goes on"]
    assert len(tracebacks) == 1


async def test_a_failing_batch_listing_costs_only_the_batch_metrics(
    monkeypatch: pytest.MonkeyPatch, api: SimulatorTestServer, make_exporter: MakeExporter, seeded: None
) -> None:
    exporter = make_exporter(api, namespaces=("prod",), batches=True)
    Once(monkeypatch, exporter.client, "walk_batches", KeyError("surprise"))
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert exporter.value("mixpeek_batches_up", mixpeek_namespace="prod") == 0
    assert (
        exporter.value(
            "mixpeek_exporter_batch_poll_errors_total", mixpeek_namespace="prod", reason="internal"
        )
        == 1
    )
    assert internal_errors(exporter, "batches") == 1
    await exporter.poll()
    assert exporter.value("mixpeek_batches_up", mixpeek_namespace="prod") == 1


async def test_an_unexpected_error_in_discovery_keeps_the_poller_going(
    monkeypatch: pytest.MonkeyPatch, api: SimulatorTestServer, make_exporter: MakeExporter, seeded: None
) -> None:
    exporter = make_exporter(api)  # discovers its namespaces
    Once(monkeypatch, exporter.client, "list_namespaces", RecursionError("nested error body"))
    await exporter.poll()
    assert internal_errors(exporter, "discovery") == 1
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1


async def test_a_namespace_name_that_cannot_go_in_a_header_is_polled_by_its_id(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    world = World(clock=clock, seed=3)
    world.add_namespace("équipe-données")
    world.create_task("équipe-données", "thumbnail", "PROCESSING")
    with SimulatorTestServer(world, api_key=API_KEY) as server:
        exporter = make_exporter(server)
        await exporter.poll()
        headers = {r.headers.get("x-namespace") for r in server.requests if r.path == "/v1/tasks/list"}
    namespace = world.namespace("équipe-données")
    assert namespace is not None
    assert headers == {namespace.namespace_id}
    labels = {"mixpeek_namespace": "équipe-données", "status": "PROCESSING", "task_type": "thumbnail"}
    assert exporter.value("mixpeek_tasks", **labels) == 1


class Fatal(BaseException):
    """Something that gets past every `except Exception`."""


async def test_a_poll_loop_that_dies_all_the_same_fails_liveness(
    monkeypatch: pytest.MonkeyPatch, api: SimulatorTestServer, make_exporter: MakeExporter, seeded: None
) -> None:
    """Nothing a poll does should end its loop; if something does all the same, alive() turns false so
    that /healthz fails and Kubernetes restarts the pod."""
    exporter = make_exporter(api, namespaces=("prod",))
    poller = exporter.poller
    assert poller.alive()

    async def dies(namespace: str) -> None:
        raise Fatal

    monkeypatch.setattr(poller, "poll_namespace", dies)
    runner = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(10):
            while poller.alive():
                poller._rescoped.set()  # wake the supervisor now instead of after an interval
                await asyncio.sleep(0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert not poller.alive()


async def test_a_namespace_that_hangs_gives_up_its_slot_at_the_poll_deadline(
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    seeded: None,
) -> None:
    """One slot, two namespaces, the first one's listing never ends: at the poll deadline it fails with
    reason timeout and the other namespace is polled."""
    world.create_task("staging", "thumbnail", "PROCESSING")
    exporter = make_exporter(api, namespaces=("prod", "staging"), concurrency=1, poll_timeout=0.2)
    walk = exporter.client.walk_tasks
    never = asyncio.Event()

    async def hangs(namespace: str | None, *args: Any, **kwargs: Any) -> int:
        if namespace == "prod":
            await never.wait()
        return await walk(namespace, *args, **kwargs)

    monkeypatch.setattr(exporter.client, "walk_tasks", hangs)
    async with asyncio.timeout(10):
        await exporter.poll()
    assert (
        exporter.value("mixpeek_exporter_poll_errors_total", mixpeek_namespace="prod", reason="timeout") == 1
    )
    assert exporter.value("mixpeek_up", mixpeek_namespace="staging") == 1


async def test_a_failing_render_is_logged_with_its_traceback_and_counted(
    api: SimulatorTestServer, make_exporter: MakeExporter, seeded: None, logs: list[EventDict]
) -> None:
    """The server hears of a /metrics render that failed (it answers 500) and hands it to the poller's
    loop, as `exporter.cli` wires it."""
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()

    class Broken:
        def collect(self) -> Iterator[Metric]:
            raise RuntimeError("a render bug")

    loop = asyncio.get_running_loop()
    server = MetricsServer(
        "127.0.0.1",
        0,
        Broken(),
        lambda: True,
        on_error=lambda exc: loop.call_soon_threadsafe(exporter.poller.internal_error, "render", exc),
    )
    server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/metrics")).status_code == 500
            assert (await http.get("/metrics")).status_code == 500
    finally:
        server.stop()
    await asyncio.sleep(0)  # the loop runs what the server thread handed it
    assert internal_errors(exporter, "render") == 2
    tracebacks = [e for e in logs if e["event"] == "unexpected error; the poll loop goes on"]
    assert len(tracebacks) == 1
    assert tracebacks[0]["stage"] == "render"


async def test_an_unexpected_error_saving_the_state_file_is_logged_and_the_polls_go_on(
    monkeypatch: pytest.MonkeyPatch,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    seeded: None,
    tmp_path: Path,
    logs: list[EventDict],
) -> None:
    exporter = make_exporter(api, namespaces=("prod",), state_file=tmp_path / "state")
    Once(monkeypatch, StateFile, "save", KeyError("a bug in the encoder"))
    await exporter.poll()
    assert exporter.value("mixpeek_exporter_state_file_writes_total", result="error") == 1
    assert any(e["event"].startswith("state file not saved") and e.get("exc_info") for e in logs)
    await exporter.poll()
    assert exporter.value("mixpeek_exporter_state_file_writes_total", result="ok") == 1
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
