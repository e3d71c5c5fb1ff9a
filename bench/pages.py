"""CPU the API client spends per 1000-task page, transport and decoding included (the poll's hot path).

    python bench/pages.py                   # 400 pages, plain and gzipped
    python bench/pages.py --pages 1000

A loopback server in another process answers every request with the same 1000-task page of the simulated
API (the documented TaskResponse, about 470 KB; gzipped about 42 KB). The client, built as `exporter.cli`
builds it, reads it `--pages` times, one request at a time over one kept-alive connection; printed is the
client process's CPU per page (user + system), best of three rounds, with httpx's own transport and with
aiohttp's under httpx (PyPI httpx-aiohttp, when installed), and the client's RSS after importing each.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.util
import multiprocessing
import resource
import time
from multiprocessing.connection import Connection

import httpx
from pydantic import SecretStr
from rawhttp import read_request  # bench/rawhttp.py: run as `python bench/...`

from exporter.api import TASKS_LIST
from exporter.cli import Target, _api_client, _http_client
from exporter.config import load_settings
from exporter.simulator import SimulatorServer, World
from exporter.simulator.testing import FakeClock

KEY = "sk_bench_pages"
PAGE = {"limit": 1000}


def a_page() -> bytes:
    """A 1000-task page as the simulated API renders it."""
    world = World(clock=FakeClock(), seed=7)
    world.add_namespace("prod")
    for _ in range(1000):
        world.create_task("prod")
    with SimulatorServer(world, api_key=KEY) as api:
        headers = {"Authorization": f"Bearer {KEY}", "X-Namespace": "prod"}
        return httpx.post(api.url + TASKS_LIST, params={"limit": 1000}, json={}, headers=headers).content


def serve(body: bytes, gzipped: bool, ready: Connection) -> None:
    payload = gzip.compress(body) if gzipped else body
    encoding = b"Content-Encoding: gzip\r\n" if gzipped else b""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n" % (
        encoding,
        len(payload),
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(head + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


async def cpu_per_page(url: str, pages: int, transport: str) -> float:
    settings = load_settings(api_key=KEY, api_url=url, max_retries=0)
    async with _http_client(settings, url) as http:
        if transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415 - optional: this comparison only

            http._transport = AiohttpTransport(limits=httpx.Limits(max_connections=8))
        client = _api_client(settings, http, Target(url, lambda: SecretStr(KEY), demo=False))

        async def page() -> None:  # one request and its page decoded, as every listing reads them
            await client._task_page("prod", PAGE, {})

        await page()  # warm up: the connection, lazy imports
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(pages):
                await page()
            best = min(best, (time.process_time() - started) / pages)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=400, help="pages per round (default 400)")
    args = parser.parse_args()
    body = a_page()
    context = multiprocessing.get_context("spawn")
    print(f"| transport | page | bytes | client CPU ms / page (best of 3 x {args.pages}) | RSS MB |")
    print("|---|---|---:|---:|---:|")
    aiohttp = importlib.util.find_spec("httpx_aiohttp") is not None
    for transport in ("httpx", "aiohttp") if aiohttp else ("httpx",):
        for gzipped in (False, True):
            ready_recv, ready_send = context.Pipe(duplex=False)
            server = context.Process(target=serve, args=(body, gzipped, ready_send), daemon=True)
            server.start()
            port = ready_recv.recv()
            with context.Pool(1) as pool:  # a fresh client process: its RSS is this transport's
                per_page, rss = pool.apply(measure, (f"http://127.0.0.1:{port}", args.pages, transport))
            server.kill()
            wire = len(gzip.compress(body)) if gzipped else len(body)
            print(
                f"| {transport} | {'gzip' if gzipped else 'plain'} | {wire:,} | {per_page * 1000:.2f} "
                f"| {rss:.0f} |"
            )


def measure(url: str, pages: int, transport: str) -> tuple[float, float]:
    """CPU seconds per page, and the process's peak RSS in MB."""
    per_page = asyncio.run(cpu_per_page(url, pages, transport))
    return per_page, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
