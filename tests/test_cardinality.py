"""Cardinality controls against the simulated API: task types folded into _other, the completion
histogram without task_type, the per-metric series cap; and docs/metrics.md's series formula against a
scrape."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.typing import EventDict
from support import Exporter, Series, parse_exposition, select, series_count

from exporter.cli import build_exposition
from exporter.config import load_settings
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.views import OTHER, task_type_filter
from exporter.vocabulary import TERMINAL_STATUSES

MakeExporter = Callable[..., Exporter]
COMPLETION = "mixpeek_task_completion_seconds"
DROPPED = "mixpeek_exporter_series_dropped_total"
KINDS = {"thumbnail": 3, "engine_cluster_build": 2, "engine_feature_extract": 1, "api_taxonomies_execute": 4}


def by_type(series: Series, name: str, **labels: str) -> dict[str, float]:
    """{task_type: value} of the samples of `name` with `labels` (one per task type)."""
    found = select(series, name, **labels)
    values = {dict(key)["task_type"]: value for key, value in found.items()}
    assert len(values) == len(found)
    return values


def totals(series: Series, name: str, *keep: str) -> dict[tuple[str, ...], float]:
    """Samples of `name` summed over every label but `keep`."""
    summed: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, labels), value in series.items():
        if sample == name:
            summed[tuple(dict(labels)[label] for label in keep)] += value
    return dict(summed)


async def test_task_types_not_allowed_or_denied_are_exported_as_other(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    ids = {
        kind: [world.create_task("prod", kind, "PROCESSING") for _ in range(n)] for kind, n in KINDS.items()
    }
    fold = task_type_filter(allow="thumbnail|engine_.*", deny="engine_cluster_build")
    folded = make_exporter(api, namespaces=("prod",), task_type_fold=fold)
    whole = make_exporter(api, namespaces=("prod",))
    for exporter in (folded, whole):
        await exporter.poll()
    clock.advance(40)
    for task_id in (ids["thumbnail"][0], ids["engine_cluster_build"][0], *ids["api_taxonomies_execute"][:2]):
        world.set_status(task_id, "FAILED")
    world.set_status(ids["engine_feature_extract"][0], "COMPLETED")
    for exporter in (folded, whole):
        await exporter.poll()

    series = folded.scrape()
    assert by_type(series, "mixpeek_tasks", status="PROCESSING") == {
        "thumbnail": 2,
        "engine_feature_extract": 0,
        OTHER: 1 + 2,  # engine_cluster_build (denied) and api_taxonomies_execute (not allowed)
    }
    assert by_type(series, "mixpeek_task_terminal_transitions_total", status="FAILED") == {
        "thumbnail": 1,
        "engine_feature_extract": 0,
        OTHER: 3,
    }
    assert by_type(series, f"{COMPLETION}_count", status="FAILED") == {
        "thumbnail": 1,
        "engine_feature_extract": 0,
        OTHER: 3,
    }
    assert by_type(series, f"{COMPLETION}_sum", status="FAILED") == {
        "thumbnail": 40.0,
        "engine_feature_extract": 0.0,
        OTHER: 120.0,
    }
    assert by_type(series, "mixpeek_task_oldest_active_age_seconds", status="PROCESSING") == {
        "thumbnail": 40.0,
        OTHER: 40.0,
    }
    unfolded = whole.scrape()
    for name in ("mixpeek_tasks", "mixpeek_task_terminal_transitions_total", f"{COMPLETION}_bucket"):
        assert totals(series, name, "status", "le" if "bucket" in name else "status") == totals(
            unfolded, name, "status", "le" if "bucket" in name else "status"
        ), name


async def test_histogram_without_task_type_is_the_sum_of_the_per_type_histograms(
    clock: FakeClock, make_exporter: MakeExporter
) -> None:
    world = World(clock=clock, seed=5, spawn_rate_per_s=0.3, failure_ratio=0.3)
    world.add_namespace("prod")
    world.add_namespace("staging")
    with SimulatorTestServer(world) as api:
        per_type = make_exporter(api, key=api.api_key, namespaces=("prod", "staging"))
        merged = make_exporter(
            api, key=api.api_key, namespaces=("prod", "staging"), histogram_task_type=False
        )
        for _ in range(12):
            for exporter in (per_type, merged):
                await exporter.poll()
            clock.advance(60)
            world.advance(60)
    by_type, summed = per_type.scrape(), merged.scrape()
    assert {dict(labels)["task_type"] for (name, labels) in summed if name.startswith(COMPLETION)} == {""}
    assert len({dict(labels)["task_type"] for (name, labels) in by_type if name.startswith(COMPLETION)}) > 3
    for suffix, keep in (
        ("_bucket", ("mixpeek_namespace", "status", "le")),
        ("_count", ("mixpeek_namespace", "status")),
    ):
        expected = totals(by_type, COMPLETION + suffix, *keep)
        assert sum(expected.values()) > 0
        assert totals(summed, COMPLETION + suffix, *keep) == expected
    sums = totals(summed, f"{COMPLETION}_sum", "mixpeek_namespace", "status")
    assert sums == pytest.approx(totals(by_type, f"{COMPLETION}_sum", "mixpeek_namespace", "status"))
    # Only the histogram lost its task_type: the other families are those of the per-type exporter.
    assert select(summed, "mixpeek_tasks") == select(by_type, "mixpeek_tasks")


def lines_of(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((name + "{", name + "_bucket{"))]


async def test_the_series_cap_keeps_the_first_series_and_counts_the_rest_once_per_snapshot(
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    logs: list[EventDict],
) -> None:
    for namespace in ("prod", "staging"):
        for kind in ("thumbnail", "engine_cluster_build", "api_taxonomies_execute"):
            world.create_task(namespace, kind, "PROCESSING")
    capped = make_exporter(api, namespaces=("prod", "staging"), max_series=40)
    whole = make_exporter(api, namespaces=("prod", "staging"))
    for exporter in (capped, whole):
        await exporter.poll()

    text = capped.exposition()
    # 2 namespaces x 3 task types x 8 zero-filled statuses: the first 40 in exposition order are kept.
    assert lines_of(text, "mixpeek_tasks") == lines_of(whole.exposition(), "mixpeek_tasks")[:40]
    assert len(lines_of(whole.exposition(), "mixpeek_tasks")) == 48
    dropped = by_metric(capped.scrape())
    assert dropped["mixpeek_tasks"] == 48 - 40
    assert dropped[COMPLETION] == (24 - 2) * 17  # 2 of 24 histograms of 17 samples fit
    assert set(dropped.values()) == {0, 8, 374}  # the 24 counters fit
    # The same snapshot, rendered again here or by the cached exposition, is not counted again.
    served = b"".join(capped.served.respond(None, None).body).decode()
    assert by_metric(capped.scrape())["mixpeek_tasks"] == 8
    assert by_metric(served_series(served))["mixpeek_tasks"] == 8
    clock.advance(30)
    await capped.poll()
    assert by_metric(capped.scrape())["mixpeek_tasks"] == 16
    warnings = [e for e in logs if e["event"] == "series cap reached: dropping series"]
    assert warnings == [
        {
            "event": "series cap reached: dropping series",
            "log_level": "warning",
            "metric": metric,
            "max_series_per_metric": 40,
            "dropped": dropped,
        }
        for metric, dropped in ((COMPLETION, 374), ("mixpeek_tasks", 8))
    ]


async def test_the_cap_counts_each_sample_of_a_histogram_and_keeps_a_label_set_whole(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    for kind in ("thumbnail", "engine_cluster_build", "api_taxonomies_execute"):
        world.create_task("prod", kind, "PROCESSING")
    capped = make_exporter(api, namespaces=("prod",), max_series=3 * 17 + 5)
    await capped.poll()
    series = capped.scrape()
    label_sets = {labels for name, labels in series if name == f"{COMPLETION}_count"}
    assert len(label_sets) == 3  # of 3 task types x 4 terminal statuses, 17 samples each
    # Each kept whole: its 15 buckets, its sum and its count.
    buckets = Counter(
        frozenset(label for label in labels if label[0] != "le")
        for name, labels in series
        if name == f"{COMPLETION}_bucket"
    )
    assert set(buckets) == label_sets
    assert set(buckets.values()) == {15}
    assert {labels for name, labels in series if name == f"{COMPLETION}_sum"} == label_sets
    assert by_metric(series)[COMPLETION] == 9 * 17
    assert by_metric(series)["mixpeek_tasks"] == 0  # its 24 samples fit under 56
    histogram_samples = [n for n, _ in series if n.startswith(COMPLETION)]
    assert len(histogram_samples) == 3 * 17 <= 56


def by_metric(series: Series) -> dict[str, float]:
    return {dict(labels)["metric"]: value for labels, value in select(series, DROPPED).items()}


def served_series(text: str) -> Series:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def family_sizes(text: str) -> Counter[str]:
    """Samples per family, counters under their _total name."""
    return Counter(
        {
            family.name + ("_total" if family.type == "counter" else ""): len(family.samples)
            for family in text_string_to_metric_families(text)
        }
    )


@pytest.mark.parametrize("histogram_task_type", [True, False])
async def test_the_series_formula_counts_a_real_scrape(
    clock: FakeClock, make_exporter: MakeExporter, histogram_task_type: bool
) -> None:
    world = World(clock=clock, seed=9)
    namespaces = ("dev", "prod", "staging")
    kinds = ("thumbnail", "engine_cluster_build", "api_taxonomies_execute", "api_buckets_objects_create")
    statuses = ("PENDING", "QUEUED", "PROCESSING", "COMPLETED", "FAILED")
    for i, namespace in enumerate(namespaces):
        world.add_namespace(namespace)
        for j, kind in enumerate(kinds):
            for status in statuses[: 2 + (i + j) % 4]:  # some types have fewer active statuses
                world.create_task(namespace, kind, status)
        simulated = world.namespace(namespace)
        assert simulated is not None
        for b, bucket in enumerate(simulated.bucket_ids):
            world.create_batch(namespace, bucket, status=("PENDING", "PROCESSING", "COMPLETED")[b])
    with SimulatorTestServer(world) as api:
        exporter = make_exporter(
            api, key=api.api_key, namespaces=namespaces, batches=True, histogram_task_type=histogram_task_type
        )
        await exporter.poll()
    active = {
        (t.namespace_id, t.status, t.task_type) for t in world.tasks() if t.status not in TERMINAL_STATUSES
    }
    active_batches = {
        (b.namespace_id, b.bucket_id, b.status) for b in world.batches() if b.status not in TERMINAL_STATUSES
    }
    expected = series_count(
        len(namespaces),
        len(kinds),
        histogram_task_type=histogram_task_type,
        batch_buckets=3,
        active=len(active),
        active_batches=len(active_batches),
    )
    sizes = family_sizes(exporter.exposition())
    assert {name: sizes[name] for name in expected} == expected
    assert expected["mixpeek_task_completion_seconds"] == 3 * (4 if histogram_task_type else 1) * 4 * 17


def default_exposition(exporter: Exporter, **settings: Any) -> str:
    """What /metrics serves with the default settings (but `settings`), wired as cli.serve wires it."""
    served = build_exposition(load_settings(api_key="sk_cardinality", **settings), exporter.poller)
    return b"".join(served.respond(None, None).body).decode()


def shown_types(series: Series, namespace: str) -> set[str]:
    return {
        dict(labels)["task_type"] for labels in select(series, "mixpeek_tasks", mixpeek_namespace=namespace)
    }


async def test_thousands_of_task_types_stay_bounded_by_default_and_every_count_is_kept(
    clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    types = 2_500
    now = clock()
    watched = world.create_tasks("prod", ((f"type_{i:04d}", "PROCESSING", now - i) for i in range(types)))
    world.create_tasks("prod", ((f"type_{i:04d}", "PROCESSING", now - i) for i in range(0, types, 2)))
    world.create_tasks("staging", ((kind, "PENDING", now) for kind in KINDS))
    exporter = make_exporter(api, namespaces=("prod", "staging"))
    await exporter.poll()
    first_seen = exporter.poller.snapshot.namespaces["prod"].groups[:100]
    clock.advance(60)
    for task_id in watched[::2]:
        world.set_status(task_id, "FAILED")
    for task_id in watched[1::2]:
        world.set_status(task_id, "COMPLETED")
    # Newer task types, listed first (newest first) from now on, must not push out those already shown.
    world.create_tasks("prod", ((f"late_{i:03d}", "PENDING", clock()) for i in range(300)))
    await exporter.poll()

    text = default_exposition(exporter)
    series = parse_exposition(text)
    assert shown_types(series, "prod") == {*first_seen, OTHER}
    assert shown_types(series, "staging") == set(KINDS)  # a namespace under the cap is untouched
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    # At most 100 task types and _other in prod, the 4 of staging, and the exporter's own few dozen.
    prod = series_count(1, types + 300, max_task_types=100)
    assert prod == series_count(1, 101)
    bound = sum(prod.values()) + sum(series_count(1, len(KINDS), max_task_types=100).values()) + 100
    assert len(samples) <= bound < 11_000  # the 2,800 task types unfolded: about 250,000
    assert set(by_metric(series).values()) == {0}  # under the series cap: nothing dropped

    # Every count is in some series: the totals by status are those of the API and of the state.
    listed = Counter(task.status for task in world.tasks("prod"))
    assert nonzero(totals(series, "mixpeek_tasks", "mixpeek_namespace", "status")) == {
        **{("prod", status): n for status, n in listed.items()},
        ("staging", "PENDING"): len(KINDS),
    }
    transitions = totals(series, "mixpeek_task_terminal_transitions_total", "mixpeek_namespace", "status")
    assert nonzero(transitions) == {("prod", "FAILED"): 1_250, ("prod", "COMPLETED"): 1_250}
    expected: Counter[tuple[str, ...]] = Counter()
    for (status, _), histogram in exporter.poller.snapshot.namespaces["prod"].completions.items():
        for le, count, _ in histogram.cumulative():
            expected[("prod", status, le)] += count
    assert expected[("prod", "FAILED", "+Inf")] == 1_250
    assert nonzero(totals(series, f"{COMPLETION}_bucket", "mixpeek_namespace", "status", "le")) == nonzero(
        expected
    )
    kept_failed = [kind for kind in first_seen if int(kind.removeprefix("type_")) % 2 == 0]
    other = select(series, f"{COMPLETION}_count", mixpeek_namespace="prod", status="FAILED", task_type=OTHER)
    assert list(other.values()) == [1_250 - len(kept_failed)]


def nonzero(values: Mapping[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {key: value for key, value in values.items() if value}


async def test_the_task_type_cap_counts_only_the_types_allow_and_deny_show(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    for kind, n in KINDS.items():
        for _ in range(n):
            world.create_task("prod", kind, "PROCESSING")
    exporter = make_exporter(api, namespaces=("prod",))
    await exporter.poll()
    allow = {"task_type_allow": "thumbnail|engine_.*", "task_type_deny": "engine_cluster_build"}
    one = parse_exposition(default_exposition(exporter, max_task_types_per_namespace=1, **allow))
    assert len(shown_types(one, "prod") - {OTHER}) == 1
    assert shown_types(one, "prod") <= {"thumbnail", "engine_feature_extract", OTHER}
    assert sum(select(one, "mixpeek_tasks", status="PROCESSING").values()) == sum(KINDS.values())
    unbounded = parse_exposition(default_exposition(exporter, max_task_types_per_namespace=0))
    assert shown_types(unbounded, "prod") == set(KINDS)
