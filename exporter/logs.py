"""structlog set-up: JSON lines for machines, console for people, and the API key scrubbed from both."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, also in its JSON-escaped form. Empty secrets are skipped: replacing
    "" would put the marker between every character."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def redactor(
    renderer: structlog.typing.Processor, secrets: Callable[[], Iterable[str]]
) -> structlog.typing.Processor:
    """Render, then scrub every API key this process has held from the finished line: wherever it came from
    (a value, a nested one, a traceback), it is text by then."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        line = renderer(logger, name, event)
        assert isinstance(line, str), "both renderers make text"
        return redact(line, secrets())

    return render


def configure_logging(fmt: str | None, level: str, secrets: Callable[[], Iterable[str]]) -> None:
    json_lines = fmt == "json" or (fmt is None and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    # A JSON line carries a traceback as one string; the console renderer prints its own.
    tracebacks = [structlog.processors.format_exc_info] if json_lines else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            redactor(renderer, secrets),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # httpx logs every request at INFO; the poll summary line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
