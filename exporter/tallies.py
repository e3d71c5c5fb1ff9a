"""What a finished batch adds to its counters beyond the transition, as named keys.

An item's `tallies` are (key, amount) pairs; the state sums them per (group, *key) and keeps those keys as
plain string tuples (so state files stay as they are). These NamedTuples are such tuples, with names:
api.py builds them, metrics.py looks them up with the same types.
"""

from __future__ import annotations

from typing import Literal, NamedTuple


class ObjectsKey(NamedTuple):
    """Objects of a finished batch with one outcome (processed, failed)."""

    outcome: str


class FailureKey(NamedTuple):
    """A finished batch's failure category. `tag` keeps it apart from an outcome in the state's flat keys
    (and in state files already written): ("category", "timeout"), never ("timeout",)."""

    tag: Literal["category"]
    category: str

    @classmethod
    def of(cls, category: str) -> FailureKey:
        return cls("category", category)


class Tally(NamedTuple):
    """A count an item adds when its transition is counted."""

    key: ObjectsKey | FailureKey
    amount: int
