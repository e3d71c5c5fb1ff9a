"""What the benches' bare asyncio HTTP servers share (bench/pages.py, bench/memory.py): reading a request."""

from __future__ import annotations

import asyncio


async def read_request(reader: asyncio.StreamReader) -> None:
    """One request, its body (by Content-Length) read and dropped, so that the next one starts clean."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
        0,
    )
    await reader.readexactly(length)
