"""The health reducer alone: pure transitions of a namespace's poll health, and the log lines they merit."""

from __future__ import annotations

import logging

from exporter.health import (
    Notice,
    batches_failed,
    batches_succeeded,
    empty,
    poll_failed,
    poll_succeeded,
)


def test_a_first_success_is_up_and_says_nothing() -> None:
    change = poll_succeeded(None, now=100.0, duration=0.2, full=True)
    assert change.health.up
    assert change.health.last_success == 100.0
    assert change.health.last_full == 100.0
    assert change.health.poll_durations.count == 1
    assert change.notice is None


def test_an_incremental_success_keeps_the_time_of_the_last_full_listing() -> None:
    full = poll_succeeded(None, now=100.0, duration=0.2, full=True).health
    change = poll_succeeded(full, now=130.0, duration=0.1, full=False)
    assert (change.health.last_success, change.health.last_full) == (130.0, 100.0)
    assert change.health.poll_durations.count == 2


def test_failures_count_by_reason_keep_the_last_success_and_say_each_time() -> None:
    up = poll_succeeded(None, now=100.0, duration=0.2, full=True).health
    first = poll_failed(up, "timeout")
    second = poll_failed(first.health, "timeout")
    assert not second.health.up
    assert second.health.last_success == 100.0
    assert dict(second.health.errors) == {"timeout": 2}
    assert second.health.failing == "timeout"
    assert first.notice == second.notice == Notice(logging.WARNING, "poll failed")


def test_a_rejected_key_is_an_error_once_then_debug_until_it_changes() -> None:
    notices = []
    health = empty()
    for reason in ("unauthorized", "unauthorized", "timeout", "unauthorized"):
        change = poll_failed(health, reason)
        notices.append(change.notice)
        health = change.health
    assert notices == [
        Notice(logging.ERROR, "poll failed: API key rejected"),
        Notice(logging.DEBUG, "poll failed: API key still rejected"),
        Notice(logging.WARNING, "poll failed"),
        Notice(logging.ERROR, "poll failed: API key rejected"),
    ]


def test_a_success_after_failures_says_it_recovered_and_from_what() -> None:
    failing = poll_failed(None, "rate_limited").health
    change = poll_succeeded(failing, now=200.0, duration=1.0, full=False)
    assert change.health.up
    assert change.health.failing is None
    assert dict(change.health.errors) == {"rate_limited": 1}  # a counter: never reset
    assert (change.notice, change.after) == (Notice(logging.INFO, "poll recovered"), "rate_limited")


def test_batch_failures_say_only_when_the_reason_changes() -> None:
    health = None
    said = []
    for reason in ("http_5xx", "http_5xx", "timeout", "timeout"):
        change = batches_failed(health, reason)
        said.append(change.notice is not None)
        health = change.health
    assert said == [True, False, True, False]
    assert health is not None
    assert dict(health.errors) == {"http_5xx": 2, "timeout": 2}


def test_a_batch_success_recovers_but_knows_no_full_listing() -> None:
    failing = batches_failed(None, "not_found").health
    change = batches_succeeded(failing, now=50.0, duration=0.5)
    assert change.health.up
    assert change.health.last_full is None
    assert (change.notice, change.after) == (Notice(logging.INFO, "batch poll recovered"), "not_found")


def test_nothing_given_is_changed() -> None:
    before = poll_failed(None, "timeout").health
    poll_succeeded(before, now=1.0, duration=0.1, full=True)
    poll_failed(before, "http_5xx")
    assert dict(before.errors) == {"timeout": 1}
    assert before.failing == "timeout"
    assert not before.up
