"""The pure core: how listings turn into gauges, counters and durations."""

from __future__ import annotations

import pytest
from support import completion

from exporter.api import Task
from exporter.state import (
    NamespaceState,
    Observation,
    StaleState,
    Tracked,
    is_code,
    label_value,
    observe,
    restore,
)
from exporter.vocabulary import ZERO_FILLED_STATUSES

BUCKETS = (10.0, 60.0, 3600.0)


def task(
    task_id: str,
    status: str,
    task_type: str = "thumbnail",
    created: float | None = None,
    finished: float | None = None,
) -> Task:
    return Task(task_id, status, task_type, created=created, completed=finished)


def fresh() -> NamespaceState:
    return NamespaceState(buckets=BUCKETS)


def test_baseline_counts_nothing_already_terminal() -> None:
    state = observe(fresh(), [task("a", "COMPLETED"), task("b", "FAILED"), task("c", "PENDING")], now=100.0)
    assert state.transitions == {}
    assert state.counts == {
        ("COMPLETED", "thumbnail"): 1,
        ("FAILED", "thumbnail"): 1,
        ("PENDING", "thumbnail"): 1,
    }
    assert state.groups == ("thumbnail",)


def test_transition_counted_once_across_polls() -> None:
    state = observe(fresh(), [task("a", "PENDING")], now=100.0)
    state = observe(state, [task("a", "PROCESSING")], now=130.0)
    state = observe(state, [task("a", "FAILED")], now=160.0)
    state = observe(state, [task("a", "FAILED")], now=190.0)
    assert state.transitions == {("FAILED", "thumbnail"): 1}
    histogram = completion(state, ("FAILED", "thumbnail"))
    # No payload timestamps: from first sight (100) to the poll that saw it terminal (160).
    assert histogram.count == 1
    assert histogram.total == 60.0


def test_task_born_and_finished_between_polls_counts_with_upper_bound() -> None:
    state = observe(fresh(), [], now=100.0)
    state = observe(state, [task("new", "COMPLETED")], now=130.0)
    assert state.transitions == {("COMPLETED", "thumbnail"): 1}
    assert completion(state, ("COMPLETED", "thumbnail")).total == 30.0


def test_payload_timestamps_win_over_observation() -> None:
    state = observe(fresh(), [task("a", "PENDING", created=50.0)], now=100.0)
    state = observe(state, [task("a", "COMPLETED", created=50.0, finished=70.0)], now=130.0)
    histogram = completion(state, ("COMPLETED", "thumbnail"))
    assert histogram.total == 20.0
    rows = histogram.cumulative()
    assert [(le, count) for le, count, _ in rows] == [("10.0", 0), ("60.0", 1), ("3600.0", 1), ("+Inf", 1)]
    exemplar = rows[1][2]
    assert exemplar is not None
    assert exemplar.task_id == "a"
    assert exemplar.value == 20.0


def test_status_regression_never_uncounts_nor_recounts() -> None:
    state = observe(fresh(), [task("a", "PROCESSING")], now=0.0)
    state = observe(state, [task("a", "COMPLETED")], now=30.0)
    state = observe(state, [task("a", "PROCESSING")], now=60.0)
    state = observe(state, [task("a", "COMPLETED")], now=90.0)
    assert state.transitions == {("COMPLETED", "thumbnail"): 1}
    assert state.counts == {("COMPLETED", "thumbnail"): 1}


def test_vanished_finished_task_that_returns_is_not_counted_again() -> None:
    state = observe(fresh(), [task("a", "PENDING")], now=0.0)
    state = observe(state, [task("a", "FAILED")], now=30.0)
    state = observe(state, [], now=60.0)
    assert state.tasks == {}
    state = observe(state, [task("a", "FAILED")], now=90.0)
    assert state.transitions == {("FAILED", "thumbnail"): 1}


def test_vanished_active_task_is_forgotten_not_counted() -> None:
    state = observe(fresh(), [task("a", "PENDING")], now=0.0)
    state = observe(state, [], now=30.0)
    assert state.transitions == {}
    assert state.tasks == {}
    assert state.gone == {}


def test_unknown_status_and_type_are_kept_sanitised() -> None:
    state = observe(fresh(), [task("a", "RETRYING", task_type="brand new/type\n")], now=0.0)
    assert "RETRYING" in state.statuses
    assert state.statuses[: len(ZERO_FILLED_STATUSES)] == ZERO_FILLED_STATUSES
    assert state.groups == ("brand_new_type",)


def test_label_value_is_bounded() -> None:
    assert len(label_value("x" * 500)) == 64
    assert label_value("") == "none"
    assert label_value('a"b{c}') == "a_b_c_"


def test_oldest_active_uses_creation_time() -> None:
    state = observe(
        fresh(),
        [
            task("a", "PENDING", created=10.0),
            task("b", "PENDING", created=40.0),
            task("c", "COMPLETED", created=0.0),
        ],
        now=100.0,
    )
    assert state.oldest_active == {("PENDING", "thumbnail"): 10.0}


def test_a_superseded_state_keeps_its_numbers_and_gives_its_table_to_the_newest() -> None:
    first = observe(fresh(), [task("a", "PENDING")], now=0.0)
    numbers = (dict(first.transitions), dict(first.counts), first.tracked, first.active)
    second = observe(first, [task("a", "FAILED"), task("b", "PENDING"), task("c", "COMPLETED")], now=30.0)
    assert (dict(first.transitions), dict(first.counts), first.tracked, first.active) == numbers
    assert not first.current
    assert first.newest is second
    assert second.current
    assert second.newest is second
    assert set(second.tasks) == {"a", "b", "c"}
    with pytest.raises(StaleState):
        first.tasks  # noqa: B018 - the property is what is tested
    with pytest.raises(StaleState):
        Observation(first, 60.0)


def test_a_listing_applied_twice_is_refused() -> None:
    first = observe(fresh(), [task("a", "PENDING")], now=0.0)
    one, two = Observation(first, 30.0), Observation(first, 30.0)
    one.add([task("a", "FAILED")])
    two.add([task("a", "FAILED")])
    assert one.result().transitions == {("FAILED", "thumbnail"): 1}
    with pytest.raises(StaleState):
        two.result()


def test_an_abandoned_listing_leaves_the_state_as_it_was() -> None:
    """A complete listing stamps the finished tasks it lists again in place. Abandoned, it leaves those
    stamps: the next listing must still see what it does not list as gone, and count all else as before."""
    listing = [task("a", "COMPLETED"), task("b", "COMPLETED"), task("c", "PENDING"), task("d", "PENDING")]
    state = observe(fresh(), listing, now=0.0)
    abandoned = Observation(state, 30.0)
    abandoned.add([task("a", "COMPLETED"), task("b", "COMPLETED"), task("c", "FAILED")])
    assert state.current
    assert dict(state.counts) == {("COMPLETED", "thumbnail"): 2, ("PENDING", "thumbnail"): 2}
    assert sorted(row[0] for row in state.rows()) == ["a", "b", "c", "d"]
    unchanged = state.tasks["c"]  # what changed was only collected
    assert isinstance(unchanged, Tracked)
    assert unchanged.key == ("PENDING", "thumbnail")
    # a is gone now, c finished: had the abandoned listing's stamp of a counted as this listing's, a
    # would be kept; had its sight of c been kept, c's transition would be lost.
    state = observe(state, [task("b", "COMPLETED"), task("c", "FAILED"), task("d", "PENDING")], now=60.0)
    assert set(state.tasks) == {"b", "c", "d"}
    assert set(state.gone) == {"a"}
    assert state.transitions == {("FAILED", "thumbnail"): 1}
    assert dict(state.counts) == {
        ("COMPLETED", "thumbnail"): 1,
        ("FAILED", "thumbnail"): 1,
        ("PENDING", "thumbnail"): 1,
    }


def test_tracking_cap_keeps_the_newest_and_still_counts_all_in_gauges() -> None:
    newest_first = [task(f"t{i}", "PROCESSING", created=1000.0 - i) for i in range(10)]
    state = observe(fresh(), newest_first, now=1000.0, max_tracked=4)
    assert list(state.tasks) == ["t0", "t1", "t2", "t3"]
    assert state.untracked == 6
    assert state.counts == {("PROCESSING", "thumbnail"): 10}
    assert state.oldest_active == {("PROCESSING", "thumbnail"): 991.0}
    finished = [task(f"t{i}", "FAILED", created=1000.0 - i) for i in range(10)]
    state = observe(state, finished, now=1030.0, max_tracked=4)
    # Only the tracked tasks' transitions are seen; the rest are past the horizon.
    assert state.transitions == {("FAILED", "thumbnail"): 4}
    state = observe(state, finished, now=1060.0, max_tracked=4)
    assert state.transitions == {("FAILED", "thumbnail"): 4}
    assert len(state.tasks) + len(state.gone) <= 8


def test_finished_tasks_are_small_ints_and_rows_give_them_back() -> None:
    state = observe(fresh(), [task("a", "PENDING", created=5.0), task("b", "COMPLETED")], now=100.0)
    state = observe(state, [task("a", "PENDING", created=5.0), task("b", "COMPLETED")], now=130.0)
    assert type(state.tasks["b"]) is int  # no object per finished task
    assert sorted(state.rows()) == [
        ("a", ("PENDING", "thumbnail"), 100.0, 5.0, False),
        ("b", ("COMPLETED", "thumbnail"), 130.0, None, True),
    ]


def test_a_task_listed_twice_in_one_listing_counts_once_as_first_seen() -> None:
    state = observe(fresh(), [task("a", "PENDING"), task("b", "PENDING")], now=0.0)
    pages = [[task("a", "FAILED"), task("b", "PENDING")], [task("b", "FAILED"), task("a", "PENDING")]]
    observation = Observation(state, 30.0)
    assert [observation.add(page) for page in pages] == [2, 0]
    state = observation.result()
    assert state.transitions == {("FAILED", "thumbnail"): 1}
    assert state.counts == {("FAILED", "thumbnail"): 1, ("PENDING", "thumbnail"): 1}
    assert state.active == {"b"}


def test_a_listing_that_misses_some_tasks_forgets_them() -> None:
    state = observe(fresh(), [task("a", "PENDING"), task("b", "COMPLETED"), task("c", "COMPLETED")], now=0.0)
    state = observe(state, [task("c", "COMPLETED")], now=30.0)
    assert set(state.tasks) == {"c"}
    assert set(state.gone) == {"b"}
    assert state.active == frozenset()
    state = observe(state, [task("c", "COMPLETED"), task("b", "COMPLETED")], now=60.0)
    assert state.transitions == {}
    assert state.counts == {("COMPLETED", "thumbnail"): 2}


def distinct_code_objects(state: NamespaceState) -> dict[int, set[int]]:
    """The id() of each code object in the table, by code value. (All are alive, held by the table,
    so two with one id() are one object.)"""
    objects: dict[int, set[int]] = {}
    for value in state.tasks.values():
        if is_code(value):
            objects.setdefault(value, set()).add(id(value))
    return objects


def test_restored_codes_share_one_int_per_key_as_listed_ones_do() -> None:
    # 150 keys: codes up to 299, past the 256 CPython caches, so the sharing is the state's own doing.
    groups = tuple(f"type{i}" for i in range(150))
    rows = [(f"{group}-{n}", ("COMPLETED", group), 100.0, None, True) for group in groups for n in range(3)]
    restored = restore(
        buckets=BUCKETS,
        polled_at=100.0,
        tasks=iter(rows),
        gone={},
        groups=groups,
        statuses=ZERO_FILLED_STATUSES,
        transitions={},
        completions={},
        tallies={},
    )
    assert restored.generation == 0
    assert sorted(restored.rows()) == sorted(rows)
    objects = distinct_code_objects(restored)
    assert len(objects) == 150
    assert max(objects) > 256
    assert all(len(ids) == 1 for ids in objects.values())
    listing = [task(item_id, "COMPLETED", key[1]) for item_id, key, *_ in rows]
    listed = observe(restored, listing, now=130.0)
    assert listed.generation == 1  # each code read as the generation it was given
    assert listed.transitions == {}
    objects = distinct_code_objects(listed)
    assert len(objects) == 150
    assert all(len(ids) == 1 for ids in objects.values())
