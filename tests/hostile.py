"""Tiny hostile HTTP servers on loopback, in the test's own event loop, and a response-rewriting transport.

A `HostileServer` reads one request per connection and answers with a scripted `Reply`, a coroutine that
writes raw bytes: a body that trickles, never ends, or inflates to far more than it weighs on the wire.
It counts the body bytes it managed to hand to the socket, so a test can tell the client stopped reading.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Send = Callable[[bytes], Awaitable[None]]
Reply = Callable[[Send], Awaitable[None]]
"""Writes one response through `send`; returns when done (the connection is then closed)."""

PAGE_HEAD = b'{"results": []'
"""An empty, valid page: padded with whitespace up to any size, it is still a page the API could send."""


class HostileServer:
    """`async with HostileServer(reply) as server:` serves `reply` at `server.url` until the block ends."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._done = asyncio.Event()
        self.url = ""
        self.sent = 0
        """Bytes written to the sockets so far, headers included."""

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Hang up on every client; each reply then ends at its next send (none is cancelled)."""
        assert self._server is not None
        self._closing = True
        self._server.close()
        self._done.clear()
        for writer in list(self._writers):
            writer.close()
        if self._writers:
            await self._done.wait()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

        async def send(data: bytes) -> None:
            if self._closing:
                raise ConnectionAbortedError("the server is shutting down")
            writer.write(data)
            await writer.drain()
            self.sent += len(data)

        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            await self._reply(send)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what a capped or timed-out client does
        finally:
            self._writers.discard(writer)
            writer.close()
            if not self._writers:
                self._done.set()


def head(status: int = 200, **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def trickle(every: float) -> Reply:
    """Headers at once, then one byte of a 1 MB body every `every` seconds: each read is quick, the whole
    never ends."""

    async def reply(send: Send) -> None:
        await send(head(Content_Length=1_000_000) + PAGE_HEAD)
        while True:
            await asyncio.sleep(every)
            await send(b" ")

    return reply


def chunked_page(total: int, chunk: int = 64 * 1024) -> Reply:
    """A valid page of `total` bytes (whitespace padding) in chunks, with no Content-Length."""

    async def reply(send: Send) -> None:
        await send(head(Transfer_Encoding="chunked"))
        await send(b"%x\r\n%s\r\n" % (len(PAGE_HEAD), PAGE_HEAD))
        padding = b" " * chunk
        for _ in range(total // chunk):
            await send(b"%x\r\n%s\r\n" % (chunk, padding))
        await send(b"1\r\n}\r\n0\r\n\r\n")

    return reply


def gzip_page(unpacked: int) -> Reply:
    """A valid page that weighs a few KB on the wire and `unpacked` bytes once gunzipped: a gzip bomb."""
    body = gzip.compress(PAGE_HEAD + b" " * unpacked + b"}", compresslevel=9)

    async def reply(send: Send) -> None:
        await send(head(Content_Encoding="gzip", Content_Length=len(body)) + body)

    return reply


class RewriteJson(httpx.AsyncBaseTransport):
    """Passes requests to the network and lets `edit` change the JSON of the 200 answers to one path."""

    def __init__(self, path: str, edit: Callable[[dict[str, Any]], None]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._path = path
        self._edit = edit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path != self._path:
            return response
        raw = await response.aread()
        await response.aclose()
        if response.status_code != 200:
            return httpx.Response(response.status_code, headers=response.headers, content=raw)
        body = json.loads(raw)
        self._edit(body)
        return httpx.Response(200, json=body)

    async def aclose(self) -> None:
        await self._inner.aclose()
