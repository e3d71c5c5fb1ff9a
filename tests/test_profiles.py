"""The main proof of correctness: one simulated history, polled under every API profile that matters, in
each scope, compared after every poll with the simulator's ground truth.

The history has births, finishes, tasks born and finished between two polls, a finished task that comes
back to life, an active task that vanishes, expiry at the retention, and a status and a task type nobody
has seen before. The truth is the World's: its live tasks for the gauges, its transition ledger (each task
counted once, as the exporter promises) for the counters. Where a profile makes the per-namespace truth
unknowable (X-Namespace ignored, no namespace ids), the exporter must list the organisation once and put
the tasks it cannot place under one `unknown` namespace: never count one task under two namespaces.

One documented difference is held to its bound rather than ignored: between full listings nobody asks
about finished tasks, so a finished task that expires still shows in its terminal status until the next
full listing. Terminal gauges must then equal the live tasks plus exactly those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import API_KEY
from support import PROFILES, Exporter, Series, select, simulator

from exporter.cli import main
from exporter.config import Scope
from exporter.simulator import ApiProfile, World
from exporter.simulator.enums import TERMINAL_STATUSES
from exporter.simulator.testing import FakeClock

MakeExporter = Callable[..., Exporter]
Key = tuple[str, str, str]
"""(namespace label, status, task_type)"""
NAMESPACES = ("prod", "staging")
CHECKS = ("filter_match", "filter_refused", "id_lookup", "sort_order", "namespace_header", "batches_route")
POLLS = 12
INTERVAL = 15.0


@dataclass(frozen=True)
class Case:
    profile: str
    scope: Scope
    fallbacks: frozenset[str] = frozenset()
    """The checks this profile must fail (and fall back from); every other one stays at 0."""

    @property
    def api(self) -> ApiProfile:
        return PROFILES[self.profile]

    @property
    def organization(self) -> bool:
        return self.scope is Scope.ORGANIZATION or (self.scope is Scope.AUTO and not self.api.header_honoured)


def cases() -> list[pytest.ParameterSet]:
    expected = {
        "documented": set(),
        "timestamps": set(),
        "namespace_ids_all": set(),
        "namespace_ids_none": set(),
        "header_ignored": {"namespace_header"},
        "header_ignored_ids_all": {"namespace_header"},
        "header_ignored_ids_none": {"namespace_header"},
        "filters_ignored": {"filter_match"},
        "in_refused": {"id_lookup"},  # the active set needs only eq
        "nin_refused": set(),
        "gte_refused": set(),
        "sort_ignored": {"sort_order"},
        "batches_list_absent": {"batches_route"},
        # The sort fails its check at the first full listing: no incremental poll ever tries the filters.
        "hostile": {"namespace_header", "sort_order", "batches_route"},
    }
    chosen = [Case(name, Scope.AUTO, frozenset(checks)) for name, checks in expected.items()]
    in_organization = (
        "documented",
        "namespace_ids_all",
        "header_ignored_ids_all",
        "filters_ignored",
        "hostile",
    )
    chosen += [
        Case(name, Scope.ORGANIZATION, frozenset(expected[name]) - {"namespace_header"})
        for name in in_organization
    ]
    chosen += [
        Case(name, Scope.NAMESPACE, frozenset(expected[name]))
        for name in ("documented", "timestamps", "in_refused")
    ]
    return [pytest.param(case, id=f"{case.scope.value}-{case.profile}") for case in chosen]


@dataclass
class Truth:
    """What the World says, as the exporter should show it under one profile and scope."""

    world: World
    case: Case
    baseline: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)
    seen_terminal: dict[str, Key] = field(default_factory=dict)
    """Finished tasks seen at some poll since the last full listing, by id: they may still show."""

    def __post_init__(self) -> None:
        self.names = {ns.namespace_id: ns.namespace_name for ns in self.world.namespaces()}

    def label(self, namespace_id: str, task_type: str) -> str:
        if not self.case.organization or self.case.api.shows_namespace_id(task_type):
            return self.names[namespace_id]
        return "unknown"

    def tasks(self) -> dict[str, Key]:
        return {
            task.task_id: (self.label(task.namespace_id, task.task_type), task.status, task.task_type)
            for task in self.world.tasks()
        }

    def start(self) -> None:
        self.baseline = self.world.transitions

    def transitions(self) -> Counter[Key]:
        counted = Counter[Key]()
        for (namespace_id, status, task_type), n in (self.world.transitions - self.baseline).items():
            counted[(self.label(namespace_id, task_type), status, task_type)] += n
        return counted

    def gauges(self, full: Callable[[str], bool]) -> tuple[Counter[Key], Counter[Key]]:
        """(exact, terminal gauges that may lag): live tasks, and for namespaces not listed in full this
        poll, the finished tasks seen since their last full listing that have gone since."""
        live = self.tasks()
        exact = Counter(live.values())
        lagging = Counter(
            key for task_id, key in self.seen_terminal.items() if task_id not in live and not full(key[0])
        )
        self.seen_terminal = {
            task_id: key
            for task_id, key in self.seen_terminal.items()
            if not full(key[0]) and task_id not in live
        }
        self.seen_terminal.update(
            (task_id, key) for task_id, key in live.items() if key[1] in TERMINAL_STATUSES
        )
        return exact, lagging


def exported(series: Series, name: str) -> Counter[Key]:
    return Counter(
        {
            (labels["mixpeek_namespace"], labels["status"], labels["task_type"]): int(value)
            for labels, value in ((dict(k), v) for k, v in select(series, name).items())
            if value
        }
    )


def step(world: World, clock: FakeClock, number: int) -> None:
    """The history between two polls: the world's own lifecycle, and the events it might never make."""
    clock.advance(INTERVAL)
    world.advance(INTERVAL)
    if number == 3:
        finished = [t.task_id for t in world.tasks("prod") if t.status in TERMINAL_STATUSES]
        world.set_status(finished[0], "PROCESSING")  # a retry revives a finished task
    if number == 5:
        active = [t for t in world.tasks("staging") if t.status not in TERMINAL_STATUSES]
        world.remove_task(min(active, key=lambda t: t.created_at).task_id)  # an active task vanishes
    if number == 7:
        born = world.create_task("prod", "thumbnail", "PENDING")
        world.set_status(born, "FAILED")  # born and failed between two polls
    if number == 8:
        world.create_task("staging", "api_quantum_teleport", "PENDING")  # a type nobody has seen
        world.set_status(world.create_task("prod", "thumbnail", "PENDING"), "PAUSED_BY_OPERATOR")


@pytest.mark.parametrize("case", cases())
async def test_every_profile_exports_the_ground_truth_after_every_poll(
    clock: FakeClock, make_exporter: MakeExporter, case: Case
) -> None:
    world = World(
        clock=clock,
        seed=5,
        spawn_rate_per_s=0.25,
        mean_running_s=30.0,
        failure_ratio=0.2,
        retention_s=240.0,
        batch_rate_per_s=0.02,
    )
    for name in NAMESPACES:
        world.add_namespace(name)
    clock.advance(200)
    world.advance(200)
    truth = Truth(world, case)
    with simulator(world, case.profile, api_key=API_KEY) as api:
        exporter = make_exporter(api, scope=case.scope, page_size=20, reconcile_every=4, batches=True)
        truth.start()
        for number in range(POLLS):
            await exporter.poll()
            series, now = exporter.scrape(), clock()
            full = {
                dict(labels)["mixpeek_namespace"]
                for labels, when in select(
                    series, "mixpeek_exporter_last_full_listing_timestamp_seconds"
                ).items()
                if when == now
            }
            exact, lagging = truth.gauges(full.__contains__)
            where = f"poll {number} ({'full' if full else 'incremental'})"
            assert exported(series, "mixpeek_tasks") == exact + lagging, where
            counted = truth.transitions()
            assert exported(series, "mixpeek_task_terminal_transitions_total") == counted, where
            assert exported(series, "mixpeek_task_completion_seconds_count") == counted, where
            step(world, clock, number)
    series = exporter.scrape()
    failed = {
        dict(labels)["check"]
        for labels, n in select(series, "mixpeek_exporter_api_check_failures_total").items()
        if n
    }
    assert failed == case.fallbacks
    scope = select(series, "mixpeek_exporter_scope")
    assert {dict(labels)["scope"] for labels in scope} == {
        "organization" if case.organization else "namespace"
    }
    assert sum(truth.transitions().values()) > 20  # the history made news to count
    batches = Counter[str]()
    for labels, value in select(series, "mixpeek_batches").items():
        batches[dict(labels)["mixpeek_namespace"]] += int(value)
    assert batches == Counter({name: len(world.batches(name)) for name in NAMESPACES if world.batches(name)})


def test_the_demo_takes_an_api_profile_and_check_config_reports_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--check-config", "--demo", "--demo-api", "header=ignored,sort=ignored,batches_list=absent"])
    lines = capsys.readouterr().out.splitlines()[2:]  # after the demo's and discovery's lines
    assert code == 0
    assert len(lines) == 3
    assert all("X-Namespace honoured: no (" in line for line in lines)
    assert all("sort: ignored (" in line and "task timestamps: absent" in line for line in lines)
    assert all("batches: POST /v1/batches/list answers 404 (per-bucket listings)" in line for line in lines)


def test_a_demo_api_profile_that_does_not_parse_is_a_one_line_config_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--demo", "--demo-api", "sort=sideways"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mixpeek-exporter: invalid configuration: MIXPEEK_DEMO_API: sort='sideways'")
    assert "\n" not in error


async def test_a_fallback_lasts_until_the_reprobe_interval_then_the_behaviour_is_checked_again(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """`task_id in` refused: lookups go one GET per id; after the re-probe interval the lookup is tried
    (and refused) again, and the check counts the second episode."""
    running = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(3)]
    for _ in range(30):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with simulator(world, "in_refused", api_key=API_KEY) as api:
        exporter = make_exporter(
            api, namespaces=("prod",), page_size=10, reconcile_every=100, reprobe_after=60
        )

        async def poll_after_a_finish(task_id: str) -> None:
            world.set_status(task_id, "FAILED")
            clock.advance(30)
            await exporter.poll()

        await exporter.poll()
        await poll_after_a_finish(running[0])  # refused: GET from now on
        await poll_after_a_finish(running[1])  # 30 s later: GET, the lookup is not tried
        lookups = sum(1 for r in api.requests if "task_id" in str(r.body))
        await poll_after_a_finish(running[2])  # 60 s after the refusal: tried, refused again
        lookups_after = sum(1 for r in api.requests if "task_id" in str(r.body))
        gets = sum(1 for r in api.requests if r.method == "GET" and r.path.startswith("/v1/tasks/"))
    assert (lookups, lookups_after) == (1, 2)
    assert gets == 3
    assert exporter.value("mixpeek_exporter_api_check_failures_total", check="id_lookup") == 2
    assert (
        exporter.value(
            "mixpeek_task_terminal_transitions_total",
            mixpeek_namespace="prod",
            status="FAILED",
            task_type="thumbnail",
        )
        == 3
    )


async def test_without_id_lookups_a_poll_lists_everything_when_that_takes_fewer_requests(
    clock: FakeClock, world: World, make_exporter: MakeExporter
) -> None:
    """One GET per task that left the active set costs more than a full listing once enough of them
    leave: then the poll lists everything instead, and stays exact."""
    running = [world.create_task("prod", "thumbnail", "PROCESSING") for _ in range(8)]
    for _ in range(22):
        world.create_task("prod", "thumbnail", "COMPLETED")
        clock.advance(1)
    with simulator(world, "in_refused", api_key=API_KEY) as api:
        exporter = make_exporter(api, namespaces=("prod",), page_size=10, reconcile_every=100)
        await exporter.poll()
        world.set_status(running[0], "FAILED")
        clock.advance(30)
        await exporter.poll()  # the lookup is refused: one GET
        for task_id in running[1:]:
            world.set_status(task_id, "FAILED")  # 7 to look up, a full listing is 4 pages
        clock.advance(30)
        api.clear_requests()
        await exporter.poll()
        gets = [r for r in api.requests if r.method == "GET"]
        pages = [r for r in api.requests if r.path == "/v1/tasks/list" and "filters" not in str(r.body)]
    assert not gets
    assert len(pages) >= 4
    assert (
        exporter.value(
            "mixpeek_task_terminal_transitions_total",
            mixpeek_namespace="prod",
            status="FAILED",
            task_type="thumbnail",
        )
        == 8
    )
    assert (
        exporter.value("mixpeek_exporter_last_full_listing_timestamp_seconds", mixpeek_namespace="prod")
        == clock()
    )
