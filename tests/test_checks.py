"""Evidence alone: asking whether a behaviour is trusted changes nothing; forgetting is a separate step."""

from __future__ import annotations

from exporter.checks import Check, CheckFailed, Evidence
from exporter.simulator.testing import FakeClock


def test_a_failed_check_stays_distrusted_until_an_expired_failure_is_forgotten(clock: FakeClock) -> None:
    evidence = Evidence(60, clock=clock)
    evidence.fail(CheckFailed(Check.ID_LOOKUP, "refused"))
    clock.advance(61)
    asked = [evidence.trusted(Check.ID_LOOKUP) for _ in range(3)]  # the query forgets nothing
    assert asked == [False, False, False]
    evidence.forget_expired()
    assert evidence.trusted(Check.ID_LOOKUP)
    evidence.fail(CheckFailed(Check.ID_LOOKUP, "refused again"))
    assert not evidence.trusted(Check.ID_LOOKUP)
    assert evidence.failures[Check.ID_LOOKUP] == 2


def test_a_failure_younger_than_the_interval_or_without_one_is_kept(clock: FakeClock) -> None:
    timed, forever = Evidence(60, clock=clock), Evidence(None, clock=clock)
    for evidence in (timed, forever):
        evidence.fail(CheckFailed(Check.SORT_ORDER, "unsorted"))
    clock.advance(59)
    timed.forget_expired()
    clock.advance(10_000)
    forever.forget_expired()
    assert timed.distrusted([Check.FILTER_MATCH, Check.SORT_ORDER]) is Check.SORT_ORDER
    assert not forever.trusted(Check.SORT_ORDER)
