"""Label folding between the task state and the exposition: a cap on a label's values, or dropping it.

The state keeps every group it saw; the exposition may show fewer. Folding happens here, on the way out,
so the state and its counters never lose anything when a setting changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from exporter.histogram import Histogram, merged
from exporter.state import Key, NamespaceState

OTHER = "_other"

Fold = Callable[[NamespaceState], Callable[[str], str]]
"""Given a namespace's state, how to rename each of its groups on the way out."""


@dataclass(frozen=True)
class View:
    """A NamespaceState's numbers with its groups renamed by a fold; same shapes as the state's."""

    groups: tuple[str, ...]
    statuses: tuple[str, ...]
    counts: dict[Key, int]
    transitions: dict[Key, int]
    completions: dict[Key, Histogram]
    oldest_active: dict[Key, float]
    tallies: dict[tuple[str, ...], int]
    buckets: tuple[float, ...]

    def completion(self, key: Key) -> Histogram:
        return self.completions.get(key) or Histogram.empty(self.buckets)


def capped(limit: int, within: Fold | None = None) -> Fold:
    """Keep the first `limit` groups seen in each namespace (of those `within` shows, when given); fold
    the rest into `_other`. The state keeps its groups in order of first sight and never forgets one, so
    the groups kept are the same from one scrape to the next; the others add up in `_other`, never lost."""

    def fold_for(state: NamespaceState) -> Callable[[str], str]:
        shown = within(state) if within is not None else None
        candidates = state.groups if shown is None else (g for g in state.groups if shown(g) != OTHER)
        kept = set(islice(candidates, limit))
        return lambda group: group if group in kept else OTHER

    return fold_for


def task_type_filter(allow: str | None, deny: str | None) -> Fold:
    """Show the groups `allow` fully matches (all when None) and `deny` does not; fold the rest into
    `_other`, so their tasks and transitions still add up in every total."""
    allowed = re.compile(allow) if allow is not None else None
    denied = re.compile(deny) if deny is not None else None

    # A few dozen task types, asked once per series: remember the answers (bounded, as the API's
    # enum may grow).
    @lru_cache(maxsize=4096)
    def fold(group: str) -> str:
        if allowed is not None and not allowed.fullmatch(group):
            return OTHER
        if denied is not None and denied.fullmatch(group):
            return OTHER
        return group

    return lambda state: fold


def view(state: NamespaceState, fold: Callable[[str], str]) -> View:
    groups = dict.fromkeys(fold(group) for group in state.groups)
    counts: dict[Key, int] = {}
    transitions: dict[Key, int] = {}
    oldest: dict[Key, float] = {}
    histograms: dict[Key, list[Histogram]] = {}
    tallies: dict[tuple[str, ...], int] = {}
    for (status, group), n in state.counts.items():
        key = (status, fold(group))
        counts[key] = counts.get(key, 0) + n
    for (status, group), n in state.transitions.items():
        key = (status, fold(group))
        transitions[key] = transitions.get(key, 0) + n
    for (status, group), started in state.oldest_active.items():
        key = (status, fold(group))
        oldest[key] = min(started, oldest.get(key, started))
    for (status, group), histogram in state.completions.items():
        histograms.setdefault((status, fold(group)), []).append(histogram)
    for (group, *rest), n in state.tallies.items():
        tally = (fold(group), *rest)
        tallies[tally] = tallies.get(tally, 0) + n
    return View(
        groups=tuple(groups),
        statuses=state.statuses,
        counts=counts,
        transitions=transitions,
        completions={key: merged(parts) for key, parts in histograms.items()},
        oldest_active=oldest,
        tallies=tallies,
        buckets=state.buckets,
    )
