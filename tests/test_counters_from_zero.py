"""Counters with a bounded label set are served from 0 after the first poll, so that rate() and increase() see
the first error: a series that appears at 1 is read by Prometheus as no increase at all, which is how
MixpeekApiRateLimited used to miss the first 429."""

from __future__ import annotations

from collections.abc import Callable

from support import Exporter, select

from exporter.api import ENDPOINTS, TASKS_LIST, ApiError, ApiHTTPError, Reason
from exporter.metrics import POLL_ERROR_REASONS, ZERO_FILLED_CODES
from exporter.simulator import World
from exporter.simulator.testing import SimulatorTestServer
from exporter.simulator.testing.faults import RateLimited, Requests

MakeExporter = Callable[..., Exporter]
POLL_ERRORS = "mixpeek_exporter_poll_errors_total"
BATCH_POLL_ERRORS = "mixpeek_exporter_batch_poll_errors_total"
REQUESTS = "mixpeek_exporter_api_requests_total"


def test_every_reason_a_poll_can_fail_with_is_served_from_zero() -> None:
    """The zero-filled list is complete: any HTTP status, any ApiError, and the poller's own reason."""
    reasons = {ApiHTTPError(status, "x").reason for status in range(100, 600)}
    reasons |= {kind.reason for kind in _subclasses(ApiError) if isinstance(kind.reason, str)}
    assert reasons | {Reason.INTERNAL} <= set(POLL_ERROR_REASONS)


def _subclasses(cls: type[ApiError]) -> set[type[ApiError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


async def test_the_first_429_is_an_increase_from_zero(
    world: World, api: SimulatorTestServer, make_exporter: MakeExporter
) -> None:
    world.create_task("prod", "thumbnail")
    exporter = make_exporter(api, namespaces=("prod", "staging"), batches=True)
    await exporter.poll()
    series = exporter.scrape()
    for name in (POLL_ERRORS, BATCH_POLL_ERRORS):
        for namespace in ("prod", "staging"):
            found = select(series, name, mixpeek_namespace=namespace)
            assert {dict(k)["reason"]: v for k, v in found.items()} == dict.fromkeys(POLL_ERROR_REASONS, 0)
    served = {(dict(k)["endpoint"], dict(k)["code"]) for k in select(series, REQUESTS)}
    assert served >= {(endpoint, code) for endpoint in ENDPOINTS for code in ZERO_FILLED_CODES}
    assert exporter.value(REQUESTS, endpoint=TASKS_LIST, code="429") == 0

    api.inject(RateLimited(retry_after=1, retryable=False), namespace="prod", requests=Requests.nth(1))
    await exporter.poll()
    assert exporter.value(POLL_ERRORS, mixpeek_namespace="prod", reason="rate_limited") == 1
    assert exporter.value(POLL_ERRORS, mixpeek_namespace="staging", reason="rate_limited") == 0
    assert exporter.value(REQUESTS, endpoint=TASKS_LIST, code="429") == 1


def test_the_reason_label_values_are_a_contract() -> None:
    """Dashboards and alert rules match these values, derived from api.Reason: a renamed or reordered member
    must fail here, and they are served as plain strings."""
    assert POLL_ERROR_REASONS == (
        "error",
        "timeout",
        "connection_error",
        "invalid_response",
        "pagination_limit",
        "unauthorized",
        "rate_limited",
        "not_found",
        "unexpected_status",
        "http_4xx",
        "http_5xx",
        "internal",
    )
    assert all(type(reason) is str for reason in POLL_ERROR_REASONS)
