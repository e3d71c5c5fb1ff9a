"""Property-based: whatever the sequence of listings, the state keeps its promises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.api import Task
from exporter.state import NamespaceState, observe
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
