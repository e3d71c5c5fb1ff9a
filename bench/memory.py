"""Peak memory of the exporter's API client against hostile servers: a gzip bomb and an endless body.

    python bench/memory.py                 # both cases, a few seconds each
    python bench/memory.py --limit 15      # give each request up to 15 s (the default)

Each case runs one listing request, built as `exporter.cli` builds it (default settings, no retries), in
a fresh process, against a loopback server in another process, and prints its outcome, wall time and the
client process's peak RSS. The client process's address space is capped (--max-memory-gb) so that code
without a response cap fails with MemoryError instead of taking the machine down.

- gzip bomb: a valid, empty page padded with 2 GiB of whitespace, gzipped to about 2 MB on the wire.
- endless: a chunked body of whitespace that never ends, as fast as the client reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import time
import zlib
from multiprocessing.connection import Connection

from pydantic import SecretStr
from rawhttp import read_request  # bench/rawhttp.py: run as `python bench/...`

from exporter.api import NEWEST_FIRST
from exporter.cli import Target, _api_client, _http_client
from exporter.config import load_settings

KEY = "sk_bench_hostile"
HEAD = b'{"results": []'
CHUNK = 64 * 1024


def gzip_bomb(unpacked: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(HEAD)]
    block = b" " * (64 * 1024 * 1024)
    for _ in range(unpacked // len(block)):
        parts.append(packer.compress(block))
    parts.append(packer.compress(b"}"))
    parts.append(packer.flush())
    return b"".join(parts)


def serve(case: str, ready: Connection) -> None:
    """The hostile server: answers every request with the case's body until killed."""
    bomb = gzip_bomb(2 * 1024**3) if case == "gzip bomb" else b""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            if case == "gzip bomb":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(bomb)
                )
                writer.write(bomb)
                await writer.drain()
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                writer.write(b"%x\r\n%s\r\n" % (len(HEAD), HEAD))
                chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
                while True:
                    writer.write(chunk)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.send((server.sockets[0].getsockname()[1], len(bomb)))
        await server.serve_forever()

    asyncio.run(main())


def probe(url: str, limit: float, max_memory: int, result: Connection) -> None:
    """One listing request in this fresh process; sends back (outcome, wall seconds, peak RSS MB)."""
    resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))

    async def run() -> str:
        settings = load_settings(api_key=KEY, api_url=url, max_retries=0)
        async with _http_client(settings, url) as http:
            client = _api_client(settings, http, Target(url, lambda: SecretStr(KEY), demo=False))
            try:
                await asyncio.wait_for(client.first_tasks("prod", NEWEST_FIRST), limit)
            except TimeoutError:
                return f"still reading after {limit:g} s"
            except MemoryError:
                return "MemoryError"
            except Exception as exc:  # the outcome is what this bench reports
                return f"{type(exc).__name__}: {str(exc)[:90]}"
            return "read it all as a page"

    started = time.perf_counter()
    outcome = asyncio.run(run())
    wall = time.perf_counter() - started
    result.send((outcome, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(case: str, limit: float, max_memory: int) -> tuple[str, float, float, int]:
    context = multiprocessing.get_context("spawn")
    ready_recv, ready_send = context.Pipe(duplex=False)
    server = context.Process(target=serve, args=(case, ready_send), daemon=True)
    server.start()
    port, wire = ready_recv.recv()
    result_recv, result_send = context.Pipe(duplex=False)
    client = context.Process(target=probe, args=(f"http://127.0.0.1:{port}", limit, max_memory, result_send))
    client.start()
    client.join(limit + 60)
    outcome, wall, rss = result_recv.recv() if result_recv.poll() else (f"died ({client.exitcode})", 0.0, 0.0)
    server.kill()
    return outcome, wall, rss, wire


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=float, default=15.0, help="seconds a request may run (default 15)")
    parser.add_argument(
        "--max-memory-gb", type=float, default=8.0, help="client address-space cap (default 8)"
    )
    args = parser.parse_args()
    print("| case | on the wire | outcome | wall s | peak RSS MB |")
    print("|---|---|---|---:|---:|")
    for case in ("gzip bomb", "endless body"):
        outcome, wall, rss, wire = measure(case, args.limit, int(args.max_memory_gb * 1024**3))
        shown = f"{wire / 1e6:.1f} MB" if wire else "endless"
        print(f"| {case} | {shown} | {outcome} | {wall:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
