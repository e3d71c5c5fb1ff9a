"""Timestamps in the real API's style: naive ISO 8601 in UTC with microseconds (`2025-10-10T14:53:50.351000`).

Rendering and filtering both go through whole microseconds, so a timestamp a client read from a response and
sends back in a filter compares equal to the task it came from.
"""

import functools
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1)  # naive, like the API's timestamps
_MICROSECOND = timedelta(microseconds=1)


def to_micros(epoch_s: float) -> int:
    """Epoch seconds to whole microseconds, the precision the API shows."""
    return round(epoch_s * 1_000_000)


def iso(epoch_s: float) -> str:
    """Render epoch seconds as the API does: `(_EPOCH + micros).isoformat(timespec="microseconds")`, with the
    date, hour and minute looked up, since a page of a thousand tasks renders three thousand timestamps."""
    seconds, micros = divmod(to_micros(epoch_s), 1_000_000)
    minutes, second = divmod(seconds, 60)
    return f"{_minute(minutes)}:{second:02d}.{micros:06d}"


@functools.lru_cache(maxsize=4096)
def _minute(minutes: int) -> str:
    return (_EPOCH + timedelta(minutes=minutes)).isoformat(timespec="minutes")


def parse_micros(text: str) -> int:
    """Parse an ISO 8601 timestamp (naive means UTC; `Z` or an offset is honoured) to epoch microseconds.

    Raises ValueError when the text is not a timestamp.
    """
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return (parsed - _EPOCH) // _MICROSECOND
