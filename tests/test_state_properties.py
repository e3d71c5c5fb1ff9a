"""Property-based: whatever the sequence of listings, the state keeps its promises."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import statefile
from exporter.api import Task
from exporter.state import Key, NamespaceState, Observation, observe
from exporter.vocabulary import TERMINAL_STATUSES

STATUSES = ("PENDING", "PROCESSING", *TERMINAL_STATUSES, "RETRYING")
listing = st.dictionaries(
    st.sampled_from([f"t{i}" for i in range(12)]), st.sampled_from(STATUSES), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(st.lists(listing, min_size=1, max_size=12))
def test_counters_only_grow_and_count_each_task_at_most_once(history: list[dict[str, str]]) -> None:
    state = NamespaceState(buckets=(1.0, 10.0))
    previous_total = 0
    became_terminal_after_baseline: set[str] = set()
    for poll, tasks in enumerate(history):
        listing_ = [Task(task_id, status, "thumbnail") for task_id, status in tasks.items()]
        before = state
        state = observe(state, listing_, now=poll * 30.0)
        total = sum(state.transitions.values())
        assert total >= previous_total
        for key, value in before.transitions.items():
            assert state.transitions[key] >= value
        if poll:
            became_terminal_after_baseline |= {t for t, s in tasks.items() if s in TERMINAL_STATUSES}
        assert total <= len(became_terminal_after_baseline)
        assert sum(state.counts.values()) == len(tasks)
        assert sum(h.count for h in state.completions.values()) == total
        previous_total = total
    always_terminal = set.intersection(
        *({t for t, s in tasks.items() if s in TERMINAL_STATUSES} for tasks in history)
    )
    if always_terminal and len(history) > 1:
        # Present and terminal in every listing since the baseline: history, never news.
        baseline_only = NamespaceState(buckets=(1.0,))
        for poll, tasks in enumerate(history):
            baseline_only = observe(
                baseline_only,
                [Task(t, s, "thumbnail") for t, s in tasks.items() if t in always_terminal],
                now=poll * 30.0,
            )
        assert sum(baseline_only.transitions.values()) == 0


# The table held against a model: plain dicts and sets, written from the rules the state promises rather
# than from how it keeps them (codes, parities, sweeps). Steps: complete listings, partial ones (the
# changes an incremental poll lists, and the ids it found vanished), and a save and restore.
IDS = [f"t{i}" for i in range(8)]
GROUPS = ("thumbnail", "transcode")
BUCKETS = (1.0, 10.0)
IDENTITY = {"api_key": "0" * 16, "url": "http://api.test", "scope": "namespace"}
listed_items = st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from(STATUSES), st.sampled_from(GROUPS)))
page_size = st.integers(min_value=1, max_value=4)
step: st.SearchStrategy[tuple[str, list[tuple[str, str, str]], int, Sequence[str]]] = st.one_of(
    st.tuples(st.just("complete"), listed_items, page_size, st.just(())),
    st.tuples(st.just("partial"), listed_items, page_size, st.lists(st.sampled_from(IDS))),
    st.tuples(st.just("restore"), st.just([]), st.just(1), st.just(())),
)


@dataclass
class Model:
    """What the state should remember, as plain dicts."""

    tracked: dict[str, Key] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    """Tracked tasks never to be counted again: terminal now, or at some time while tracked."""
    gone: dict[str, float] = field(default_factory=dict)
    counts: Counter[Key] = field(default_factory=Counter)
    transitions: Counter[Key] = field(default_factory=Counter)
    untracked: int = 0
    baseline: bool = True

    def list(self, items: list[tuple[str, Key]], now: float, cap: int, vanished: set[str] | None) -> None:
        """A complete listing (`vanished` None) or a partial one: the first `cap` distinct tasks are
        tracked; in a complete listing, the others still count in the gauges."""
        listed: dict[str, Key] = {}
        for item_id, key in items:
            listed.setdefault(item_id, key)  # a task listed twice is as first listed
        kept = dict(list(listed.items())[:cap])
        for item_id, key in kept.items():
            terminal = key[0] in TERMINAL_STATUSES
            if item_id in self.tracked:
                was_finished = item_id in self.finished
            else:
                was_finished = item_id in self.gone or (self.baseline and terminal)
            if terminal and not was_finished:
                self.transitions[key] += 1
            if terminal or was_finished:
                self.finished.add(item_id)
            else:
                self.finished.discard(item_id)
        if vanished is None:
            left = self.tracked.keys() - listed.keys()
            self.tracked = kept
            self.counts = Counter(listed.values())
            self.untracked = len(listed) - len(kept)
        else:
            left = (vanished - listed.keys()) & self.tracked.keys()
            replaced = left | (kept.keys() & self.tracked.keys())
            self.counts.subtract(self.tracked[item_id] for item_id in replaced)
            self.counts.update(kept.values())
            self.tracked = {i: key for i, key in self.tracked.items() if i not in left} | kept
        self.gone = {i: when for i, when in self.gone.items() if i not in self.tracked}
        self.gone.update((item_id, now) for item_id in left if item_id in self.finished)
        self.finished &= self.tracked.keys()
        self.baseline = False

    def restored(self) -> None:
        """Until the next poll, the gauges are those of the tracked tasks alone."""
        self.counts = Counter(self.tracked.values())
        self.untracked = 0


def check(state: NamespaceState, model: Model, cap: int) -> None:
    """The state against the model; the state's `gone` is checked to be a choice the rules allow (the
    most recently gone, at most `cap`), and the model takes it, ties and all."""
    rows = {item_id: (key, finished) for item_id, key, _, _, finished in state.rows()}
    assert {item_id: key for item_id, (key, _) in rows.items()} == model.tracked
    assert {item_id for item_id, (_, finished) in rows.items() if finished} == model.finished
    assert state.active == {i for i, key in model.tracked.items() if key[0] not in TERMINAL_STATUSES}
    assert +Counter(state.counts) == +model.counts
    assert state.untracked == model.untracked
    assert +Counter(state.transitions) == +model.transitions
    assert sum(h.count for h in state.completions.values()) == sum(model.transitions.values())
    assert state.gone.items() <= model.gone.items()
    assert len(state.gone) == min(len(model.gone), cap)
    dropped = model.gone.keys() - state.gone.keys()
    assert all(model.gone[i] <= when for i in dropped for when in state.gone.values())
    model.gone = dict(state.gone)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, min_size=1, max_size=10), st.integers(min_value=1, max_value=10))
def test_the_table_keeps_what_a_plain_model_says(
    steps: list[tuple[str, list[tuple[str, str, str]], int, Sequence[str]]], cap: int
) -> None:
    state, model = NamespaceState(buckets=BUCKETS), Model()
    for poll, (kind, raw, size, vanished) in enumerate(steps):
        now = 1000.0 + poll * 30.0
        if kind == "restore":
            lines = list(statefile.encode({"ns": state}, {}, IDENTITY))
            state = statefile.decode(lines, IDENTITY, BUCKETS)[0].get("ns", NamespaceState(buckets=BUCKETS))
            if not model.baseline:
                model.restored()
        else:
            partial = kind == "partial" and not model.baseline  # as the poller: a baseline lists everything
            items = [Task(item_id, status, group) for item_id, status, group in raw]
            observation = Observation(state, now, cap, partial=partial)
            for start in range(0, len(items), size):
                observation.add(items[start : start + size])
            if partial:
                observation.vanish(vanished)
            state = observation.result()
            keyed = [(item.item_id, (item.status, item.group)) for item in items]
            model.list(keyed, now, cap, set(vanished) if partial else None)
        check(state, model, cap)
