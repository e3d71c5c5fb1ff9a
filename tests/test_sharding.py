"""Sharding and namespace filtering: N replicas together export exactly what one exporter does, each namespace
from exactly one of them; allow/deny patterns; the StatefulSet pod ordinal; a hash that never changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import API_KEY
from support import Exporter, ExporterProcess, Series, select

from exporter.cli import main
from exporter.config import ConfigError, load_settings
from exporter.sharding import NamespaceFilter, pod_ordinal, shard_of
from exporter.simulator import ApiProfile, NamespaceIds, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

MakeExporter = Callable[..., Exporter]
NAMESPACES = tuple(f"team-{i:02d}" for i in range(50))
# Wall-clock poll durations differ between any two exporters; every other namespaced series must agree.
WALL_CLOCK = "mixpeek_exporter_poll_duration_seconds"


def busy_world(clock: FakeClock) -> World:
    """Fifty namespaces whose tasks and batches keep moving while the clock advances."""
    world = World(
        clock=clock, seed=13, spawn_rate_per_s=0.01, batch_rate_per_s=0.004, batch_failure_ratio=0.3
    )
    for name in NAMESPACES:
        world.add_namespace(name)
    return world


def advance(clock: FakeClock, world: World, seconds: float) -> None:
    clock.advance(seconds)
    world.advance(seconds)


def per_namespace(exporter: Exporter) -> Series:
    """The samples that carry a `namespace` label: tasks, batches and the exporter's per-namespace health.

    Straight from the collector: these are tens of thousands of samples, which the text exposition takes ten
    times as long to write and parse back (what it renders is tested elsewhere).
    """
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in exporter.registry.collect()
        for sample in family.samples
        if "mixpeek_namespace" in sample.labels and not sample.name.startswith(WALL_CLOCK)
    }


def summed(series: Series, name: str) -> float:
    return sum(value for (sample, _), value in series.items() if sample == name)


def namespaces_in(series: Series) -> set[str]:
    return {value for _, labels in series for key, value in labels if key == "mixpeek_namespace"}


def sharded(make: MakeExporter, server: SimulatorTestServer, total: int, **options: Any) -> list[Exporter]:
    return [
        make(server, namespace_filter=NamespaceFilter(shard, total), batches=True, **options)
        for shard in range(total)
    ]


def assert_union_is(expected: Series, shards: list[Exporter], label: Callable[[str], str]) -> None:
    """Every shard exports only its own namespaces, and together they export exactly `expected`, what one
    exporter of every namespace does."""
    union: Series = {}
    for index, exporter in enumerate(shards):
        scraped = per_namespace(exporter)
        owned = {label(ns) for ns in NAMESPACES if shard_of(label(ns), len(shards)) == index}
        assert namespaces_in(scraped) == owned, f"shard {index} of {len(shards)}"
        assert not union.keys() & scraped.keys(), "a series exported by two shards"
        union.update(scraped)
    assert union == expected


@pytest.fixture
def world(clock: FakeClock) -> World:
    return busy_world(clock)


@pytest.fixture
def api(world: World) -> Iterator[SimulatorTestServer]:
    with SimulatorTestServer(world, api_key=API_KEY) as server:
        yield server


# N replicas = one exporter


@pytest.mark.slow
@pytest.mark.parametrize("discovery", [False, True], ids=["configured", "discovered"])
async def test_the_shards_together_export_what_one_exporter_does(
    discovery: bool, clock: FakeClock, world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    options: dict[str, Any] = {} if discovery else {"namespaces": NAMESPACES}
    whole = make_exporter(api, batches=True, **options)
    sharding = {total: sharded(make_exporter, api, total, **options) for total in (2, 3, 5)}
    everyone = [whole, *(exporter for shards in sharding.values() for exporter in shards)]
    advance(clock, world, 1800)  # history: the first poll's baseline
    for _ in range(3):
        await asyncio.gather(*(exporter.poll() for exporter in everyone))
        series = per_namespace(whole)
        for shards in sharding.values():
            assert_union_is(series, shards, label=str)
        advance(clock, world, 300)  # tasks and batches move between polls
    # The last comparison covered counted transitions of tasks and batches, not just gauges at zero.
    assert summed(series, "mixpeek_task_terminal_transitions_total") > 0
    assert summed(series, "mixpeek_batch_terminal_transitions_total") > 0
    assert len(namespaces_in(series)) == len(NAMESPACES)
    assert all(exporter.poller.ready() for exporter in everyone)


@pytest.mark.slow
async def test_organization_scope_keeps_only_the_owned_namespaces(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    profile = ApiProfile(header_honoured=False, namespace_ids=NamespaceIds.ALL)
    with SimulatorTestServer(world, api_key=API_KEY, profile=profile) as org_api:
        whole = make_exporter(org_api, organization=True, batches=True)
        shards = sharded(make_exporter, org_api, 3, organization=True)
        advance(clock, world, 1800)
        for _ in range(3):
            await asyncio.gather(*(exporter.poll() for exporter in (whole, *shards)))
            # Organisation scope labels by the name discovery gives each namespace id: that is what is hashed.
            series = per_namespace(whole)
            assert_union_is(series, shards, label=str)
            advance(clock, world, 300)
    assert summed(series, "mixpeek_task_terminal_transitions_total") > 0
    assert summed(series, "mixpeek_batch_terminal_transitions_total") > 0


async def test_a_failing_organization_listing_marks_only_owned_namespaces_down(
    world: World, make_exporter: MakeExporter
) -> None:
    ids = tuple(ns.namespace_id for ns in world.namespaces())[:6]
    own = NamespaceFilter(1, 3)
    with SimulatorTestServer(world, api_key=API_KEY, profile=ApiProfile(header_honoured=False)) as org_api:
        exporter = make_exporter(
            org_api, key="sk_revoked", organization=True, namespaces=ids, namespace_filter=own
        )
        await exporter.poll()
    down = {
        dict(labels)["mixpeek_namespace"]: value
        for labels, value in select(exporter.scrape(), "mixpeek_up").items()
    }
    assert down == {ns: 0 for ns in ids if own.owns(ns)}
    assert down  # the pinned hash gives shard 1 some of these six


async def test_a_replica_owning_none_of_the_configured_namespaces_polls_nothing_and_is_ready(
    api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    configured = ("team-00", "team-01")
    other = next(s for s in range(5) if all(shard_of(ns, 5) != s for ns in configured))
    exporter = make_exporter(api, namespaces=configured, namespace_filter=NamespaceFilter(other, 5))
    await exporter.poll()
    assert exporter.poller.targets == ()
    assert per_namespace(exporter) == {}
    assert api.requests == []
    assert exporter.poller.ready()


# Allow and deny


@pytest.mark.parametrize("discovery", [False, True], ids=["configured", "discovered"])
async def test_allow_and_deny_patterns_must_match_the_whole_name(
    discovery: bool, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    options: dict[str, Any] = {} if discovery else {"namespaces": NAMESPACES}
    only = NamespaceFilter(allow=r"team-0\d", deny="team-0[5-9]")
    exporter = make_exporter(api, namespace_filter=only, **options)
    await exporter.poll()
    polled = {f"team-0{i}" for i in range(5)}
    assert namespaces_in(per_namespace(exporter)) == polled
    assert {dict(labels)["mixpeek_namespace"] for labels in select(exporter.scrape(), "mixpeek_up")} == polled


def test_patterns_are_full_matches_and_combine_with_the_shard() -> None:
    assert NamespaceFilter(allow="prod").owns("prod")
    assert not NamespaceFilter(allow="prod").owns("prod-eu")  # not a search: the whole name
    assert not NamespaceFilter(allow="prod").owns("preprod")
    assert NamespaceFilter(deny="prod").owns("prod-eu")
    assert not NamespaceFilter(allow="prod.*", deny=".*-eu").owns("prod-eu")
    shard = shard_of("prod", 3)
    assert NamespaceFilter(shard, 3, allow="prod").owns("prod")
    assert not NamespaceFilter((shard + 1) % 3, 3, allow="prod").owns("prod")


# The hash


def test_the_assignment_never_changes() -> None:
    """Pinned: replicas of different versions must agree on every namespace's shard. If this fails, the hash
    changed: that moves namespaces between shards (new baselines) and breaks mixed-version rollouts."""
    pinned = {  # name: its shard of 1, 2, 3, 5 and 16
        "prod": (0, 1, 1, 3, 3),
        "staging": (0, 0, 2, 2, 2),
        "search": (0, 0, 2, 2, 14),
        "images": (0, 1, 1, 4, 14),
        "analytics": (0, 1, 2, 3, 11),
        "team-02": (0, 0, 0, 4, 9),
        "ns_5f2c9a1b7e3d": (0, 1, 1, 1, 1),
    }
    assert {name: tuple(shard_of(name, n) for n in (1, 2, 3, 5, 16)) for name in pinned} == pinned


def test_one_more_shard_moves_only_the_namespaces_it_takes() -> None:
    for total in range(1, 10):
        for name in NAMESPACES:
            assert shard_of(name, total + 1) in (shard_of(name, total), total)


def test_every_shard_gets_a_fair_share() -> None:
    names = [f"ns-{i}" for i in range(3000)]
    for total in (2, 3, 5, 8):
        counts = [sum(1 for name in names if shard_of(name, total) == s) for s in range(total)]
        assert min(counts) > 0.8 * len(names) / total


# Settings: --shard, --total-shards, the pod ordinal


@pytest.mark.parametrize(
    ("pod", "ordinal"),
    [
        ("mixpeek-exporter-0", 0),
        ("mx-mixpeek-exporter-12", 12),
        ("exporter-7", 7),
        ("mixpeek-exporter-7d9f8c5b6-x2x4q", None),  # a Deployment's pod: no ordinal
        ("mixpeek-exporter", None),
        ("mixpeek-exporter-", None),
        ("exporter-1a", None),
    ],
)
def test_pod_ordinal(pod: str, ordinal: int | None) -> None:
    assert pod_ordinal(pod) == ordinal


def test_the_pod_ordinal_is_the_shard_unless_one_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXPEEK_DEMO", "true")
    monkeypatch.setenv("MIXPEEK_POD_NAME", "mixpeek-exporter-2")
    monkeypatch.setenv("MIXPEEK_TOTAL_SHARDS", "3")
    assert load_settings().shard == 2
    assert load_settings(shard="0").shard == 0  # a flag wins
    monkeypatch.setenv("MIXPEEK_SHARD", "1")
    assert load_settings().shard == 1  # so does the env var
    monkeypatch.delenv("MIXPEEK_POD_NAME")
    monkeypatch.delenv("MIXPEEK_SHARD")
    assert load_settings().shard == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"pod_name": "mx-3", "total_shards": "3"},
            "MIXPEEK_POD_NAME: the ordinal 3 of pod mx-3 is out of range for MIXPEEK_TOTAL_SHARDS=3",
        ),
        ({"pod_name": "mixpeek-exporter-7d9f8-x2x4q"}, "MIXPEEK_POD_NAME: must end in -<ordinal>"),
        ({"shard": "3", "total_shards": "3"}, "MIXPEEK_TOTAL_SHARDS: shard 3 is out of range for 3 shards"),
        ({"shard": "-1"}, "MIXPEEK_SHARD: Input should be greater than or equal to 0"),
        ({"total_shards": "0"}, "MIXPEEK_TOTAL_SHARDS: Input should be greater than or equal to 1"),
        ({"namespace_allow": "team-("}, "MIXPEEK_NAMESPACE_ALLOW: not a regular expression"),
        ({"namespace_deny": "*"}, "MIXPEEK_NAMESPACE_DENY: not a regular expression"),
    ],
)
def test_a_bad_sharding_setting_is_one_line_naming_it(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as failure:
        load_settings(**settings)
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


def test_a_bad_pod_name_stops_the_exporter_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pod-name", "mixpeek-exporter-5", "--total-shards", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "MIXPEEK_POD_NAME" in err
    assert "Traceback" not in err


# The command line


def check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The exit code and each line up to its first `;` (what follows `ok;` is the API's behaviour)."""
    code = main(["--check-config", "--log-format", "json", *argv])
    return code, [line.split(";")[0] for line in capsys.readouterr().out.splitlines()]


def test_check_config_checks_only_this_replicas_namespaces(
    api: SimulatorTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--api-url", api.url, "--api-key", API_KEY]
    mine = [ns for ns in NAMESPACES[:4] if shard_of(ns, 2) == 1]
    code, lines = check(
        [*target, "--namespaces", ",".join(NAMESPACES[:4]), "--shard", "1", "--total-shards", "2"], capsys
    )
    assert code == 0
    assert lines[0].startswith(
        f"{4 - len(mine)} of 4 namespaces left out: other shards' (this is shard 1 of 2, counting from 0)"
    )
    assert lines[1:] == [f"{ns}: ok" for ns in mine]
    code, lines = check([*target, "--namespace-allow", "team-0[0-2]", "--namespace-deny", "team-01"], capsys)
    assert (code, lines[0], lines[2:]) == (
        0,
        "namespace discovery: ok, 50 namespaces",
        ["team-00: ok", "team-02: ok"],
    )
    assert lines[1].startswith("48 of 50 namespaces left out")


def test_serving_logs_the_shard_taken_from_the_pod_name() -> None:
    """The real program, as the StatefulSet runs it: the pod name from the downward API, no --shard."""
    exporter = ExporterProcess(
        "--demo", env={"MIXPEEK_POD_NAME": "mixpeek-exporter-2", "MIXPEEK_TOTAL_SHARDS": "3"}
    )
    try:
        exporter.wait_serving()
        (serving,) = [event for event in exporter.events if event.get("event") == "serving"]
        assert (serving["shard"], serving["total_shards"]) == (2, 3)
    finally:
        exporter.terminate()
