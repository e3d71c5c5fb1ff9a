"""Batch metrics through the simulated API over HTTP: exact values against the world's ground truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from support import Exporter, select

from exporter.metrics import drop_group
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.views import OTHER, capped

MakeExporter = Callable[..., Exporter]


def since(
    now: Counter[tuple[str, str, str]], baseline: Counter[tuple[str, str, str]], ns_id: str
) -> dict[tuple[str, str], int]:
    """Ground truth accumulated since the baseline, for one namespace: {(bucket, third key): n}."""
    return {
        (b, k): n - baseline[(i, b, k)]
        for (i, b, k), n in now.items()
        if i == ns_id and n - baseline[(i, b, k)]
    }


def scraped(exporter: Exporter, name: str, third: str) -> dict[tuple[str, str], int]:
    found = select(exporter.scrape(), name, mixpeek_namespace="prod")
    return {(dict(k)["bucket_id"], dict(k)[third]): int(v) for k, v in found.items() if v}


async def test_batch_counters_match_ground_truth_over_a_lively_history(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    world = World(clock=clock, seed=3, batch_rate_per_s=0.02, batch_failure_ratio=0.3)
    ns_id = world.add_namespace("prod")
    for _ in range(6):
        world.create_batch("prod", status="PENDING")
    with SimulatorTestServer(world) as api:
        exporter = make_exporter(api, key=api.api_key, namespaces=("prod",), batches=True, page_size=5)
        await exporter.poll()
        base = (world.batch_transitions, world.batch_objects, world.batch_failures)
        for _ in range(40):
            clock.advance(60)
            world.advance(60)
            await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    transitions = since(world.batch_transitions, base[0], ns_id)
    assert sum(transitions.values()) > 10
    assert any(status == "FAILED" for _, status in transitions)
    assert scraped(exporter, "mixpeek_batch_terminal_transitions_total", "status") == transitions
    assert scraped(exporter, "mixpeek_batch_objects_total", "outcome") == since(
        world.batch_objects, base[1], ns_id
    )
    failures = since(world.batch_failures, base[2], ns_id)
    assert failures
    assert scraped(exporter, "mixpeek_batch_failures_total", "failure_category") == failures
    live = Counter((b.bucket_id, b.status) for b in world.batches("prod"))
    assert scraped(exporter, "mixpeek_batches", "status") == dict(live)
    completions = select(
        exporter.scrape(), "mixpeek_batch_completion_seconds_count", mixpeek_namespace="prod"
    )
    assert sum(completions.values()) == sum(transitions.values())


async def test_paging_past_ten_thousand_batches(clock: FakeClock, make_exporter: MakeExporter) -> None:
    world = World(clock=clock, seed=1)
    world.add_namespace("prod")
    for _ in range(10_500):
        world.create_batch("prod", status="COMPLETED", objects=1)
    with SimulatorTestServer(world) as api:
        exporter = make_exporter(api, key=api.api_key, namespaces=("prod",), batches=True)
        await exporter.poll()
    assert (
        sum(
            select(
                exporter.scrape(), "mixpeek_batches", mixpeek_namespace="prod", status="COMPLETED"
            ).values()
        )
        == 10_500
    )
    assert (
        exporter.value("mixpeek_exporter_api_requests_total", endpoint="/v1/batches/list", code="200") == 11
    )


async def test_offset_only_api_past_ten_thousand_batches_fails_rather_than_undercounts(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    world = World(clock=clock, seed=1)
    world.add_namespace("prod")
    for _ in range(11_500):
        world.create_batch("prod", status="COMPLETED", objects=1)
    with SimulatorTestServer(world, cursor_pagination=False) as api:
        exporter = make_exporter(api, key=api.api_key, namespaces=("prod",), batches=True)
        await exporter.poll()
    assert (
        exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    )  # a batch listing never costs the tasks
    assert exporter.value("mixpeek_batches_up", mixpeek_namespace="prod") == 0
    assert (
        exporter.value(
            "mixpeek_exporter_batch_poll_errors_total", mixpeek_namespace="prod", reason="pagination_limit"
        )
        == 1
    )


async def test_bucket_label_can_be_dropped_or_capped(clock: FakeClock, make_exporter: MakeExporter) -> None:
    world = World(clock=clock, seed=2)
    world.add_namespace("prod")
    buckets = [b.bucket_id for b in world.buckets("prod")]
    running = []
    for bucket in buckets:
        running.append(world.create_batch("prod", bucket_id=bucket, status="PROCESSING"))
        clock.advance(1)
    with SimulatorTestServer(world) as api:
        aggregated = make_exporter(
            api, key=api.api_key, namespaces=("prod",), batches=True, bucket_fold=drop_group
        )
        folded = make_exporter(
            api, key=api.api_key, namespaces=("prod",), batches=True, bucket_fold=capped(1)
        )
        for exporter in (aggregated, folded):
            await exporter.poll()
        for batch_id in running:
            world.set_batch_status(batch_id, "FAILED", failed_objects=10, failure_category="pipeline")
        clock.advance(60)
        for exporter in (aggregated, folded):
            await exporter.poll()
    # One series per namespace: an empty bucket_id, which Prometheus stores as no label at all.
    every = {"mixpeek_namespace": "prod", "bucket_id": ""}
    assert aggregated.value("mixpeek_batch_terminal_transitions_total", **every, status="FAILED") == 3
    assert aggregated.value("mixpeek_batch_objects_total", **every, outcome="failed") == 30
    labels = {
        dict(k)["bucket_id"] for k in select(folded.scrape(), "mixpeek_batches", mixpeek_namespace="prod")
    }
    # The first bucket seen keeps its label: the newest batch's, since listings come newest first.
    assert labels == {buckets[-1], OTHER}
    assert (
        folded.value(
            "mixpeek_batch_failures_total",
            mixpeek_namespace="prod",
            bucket_id=OTHER,
            failure_category="pipeline",
        )
        == 2
    )
