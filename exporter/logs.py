"""structlog set-up: JSON lines for machines, console for people, and the API key scrubbed from both."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"


def redactor(secrets: Callable[[], Iterable[str]]) -> structlog.typing.Processor:
    """Replace every API key this process has held wherever it appears in an event, however it got there."""

    def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for secret in secrets():
            for key, item in event.items():
                if isinstance(item, str) and secret in item:
                    event[key] = item.replace(secret, REDACTED)
        return event

    return scrub


def configure_logging(fmt: str | None, level: str, secrets: Callable[[], Iterable[str]]) -> None:
    json_lines = fmt == "json" or (fmt is None and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # httpx logs every request at INFO; the poll summary line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
