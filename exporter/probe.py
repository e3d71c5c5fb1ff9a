"""`--check-config`'s look at the API behaviours the documentation leaves open, one line per namespace.

The same checks as the poller's (exporter/checks.py), each made once with a handful of tasks, so that a
person learns before the first poll how the exporter will poll: e.g. `X-Namespace honoured: yes;
filters: honoured; task timestamps: absent (incremental by sort order)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from exporter.api import (
    NEWEST_FIRST,
    OLDEST_FIRST,
    ApiError,
    ApiHTTPError,
    Batch,
    EndOfListing,
    MixpeekClient,
    Task,
)
from exporter.checks import (
    CheckFailed,
    NamespaceIsolation,
    active_only,
    asked_only,
    expected_id,
    header_value,
    newest_first,
    sorted_both_ways,
)
from exporter.poller import ACTIVE_TASKS

SAMPLE = NamespaceIsolation.SAMPLE


async def probe(
    client: MixpeekClient,
    namespace: str | None,
    *,
    ids: Mapping[str, str],
    isolation: NamespaceIsolation,
    namespaces: int,
    batches: bool,
) -> str:
    """What the API's answers for one namespace say (None: the organisation-wide listing), e.g.
    `X-Namespace honoured: yes; filters: honoured; ...`. `isolation` is shared by the namespaces of one
    check, to see a task listed under two of them. Raises ApiError when the newest tasks cannot be listed
    at all: that is the namespace's failure, not a behaviour."""
    header = None if namespace is None else header_value(namespace, ids)  # as the poller sends it
    newest = await client.first_tasks(header, NEWEST_FIRST, SAMPLE)
    parts = []
    if namespace is not None:
        parts.append(f"X-Namespace honoured: {_header(isolation, namespace, ids, newest, namespaces)}")
    parts.append(f"filters: {await _filters(client, header)}")
    parts.append(f"task_id lookup: {await _lookup(client, header, newest)}")
    parts.append(f"sort: {await _sort(client, header, newest)}")
    stamped = any(task.created_at is not None for task in newest)
    timestamps = "present" if stamped else "absent (incremental by sort order)"
    parts.append(f"task timestamps: {timestamps if newest else 'untested (no tasks)'}")
    if batches and header is not None:
        parts.append(f"batches: {await _batches(client, header)}")
    return "; ".join(parts)


def _header(
    isolation: NamespaceIsolation, namespace: str, ids: Mapping[str, str], newest: list[Task], others: int
) -> str:
    try:
        isolation.see(namespace, expected_id(namespace, ids), newest, first_page=True)
    except CheckFailed as failure:
        return f"no ({failure.evidence}; auto scope lists the organisation once)"
    if others < 2 and not any(task.namespace_id for task in newest):
        return "untested (one namespace, and no task names its namespace)"
    return "yes"


async def _filters(client: MixpeekClient, namespace: str | None) -> str:
    try:
        active_only(await client.first_tasks(namespace, NEWEST_FIRST, SAMPLE, ACTIVE_TASKS))
    except ApiHTTPError as exc:
        if not exc.refused:
            raise
        return f"refused ({exc}; full listings)"
    except CheckFailed as failure:
        return f"ignored ({failure.evidence}; full listings)"
    return "honoured"


async def _lookup(client: MixpeekClient, namespace: str | None, newest: list[Task]) -> str:
    asked = [task.item_id for task in newest[:2]]
    if not asked:
        return "untested (no tasks)"
    try:
        returned = asked_only(await client.lookup_tasks(namespace, asked), frozenset(asked))
    except ApiHTTPError as exc:
        if not exc.refused:
            raise
        return f"refused ({exc}; one GET per id)"
    except CheckFailed as failure:
        return f"wrong ({failure.evidence}; one GET per id)"
    if len(returned) < len(asked):
        return f"incomplete ({len(returned)} of {len(asked)} ids returned; one GET per id)"
    return "honoured"


async def _sort(client: MixpeekClient, namespace: str | None, newest: list[Task]) -> str:
    if len(newest) < 2:
        return "untested (fewer than 2 tasks)"
    try:
        newest_first(newest)
        sorted_both_ways(newest[0], next(iter(await client.first_tasks(namespace, OLDEST_FIRST)), None), 2)
    except CheckFailed as failure:
        return f"ignored ({failure.evidence}; full listings)"
    return "honoured"


async def _batches(client: MixpeekClient, namespace: str) -> str:
    def first_page(_: list[Batch]) -> int:
        raise EndOfListing

    try:
        await client.walk_batches(namespace, first_page)
    except ApiHTTPError as exc:
        if exc.status_code != 404:
            raise
        return "POST /v1/batches/list answers 404 (per-bucket listings)"
    except ApiError as exc:
        return f"failed ({exc})"
    return "POST /v1/batches/list"
