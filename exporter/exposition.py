"""What /metrics serves: text rendered once per snapshot part and kept, so a scrape mostly copies bytes.

The poller publishes a new immutable Snapshot after each poll of a namespace and keeps the objects of
the namespaces it did not poll. The collector describes each family as parts, one per such object
(`Part` in metrics.py). This keeps the text of each part, in each format asked for, while the current
snapshot holds its object, so a render after a poll renders only what that poll changed.

Who renders: once `start()`ed (as the exporter runs it), a background thread, woken by `changed()` after
each publish, renders every format kept (the text format and OpenMetrics from the start, plain and gzip)
and then swaps the finished bytes in; a scrape serves the last finished bytes at once and never waits for
a render, so it may be one poll (and the render after it) behind. Without `start()` (tests, a bare
collector), the first scrape after a change renders it, under a lock so that concurrent scrapes render it
once, and the scrapes after it render nothing.

Every value of the snapshot is a function of it alone (metrics.py values the ages at the last poll, not
at the scrape), so its text is kept whole. Rendered at every scrape, and last: the `fresh` collectors,
whose values change all the time and are few (production registers, in cli.build_exposition,
prometheus_client's process and platform collectors and, with a web config file, its reload counter),
then OpenMetrics' one `# EOF`.

gzip: one gzip member whose deflate stream is the parts' own streams, each compressed once and ended by a
sync flush (byte-aligned, not final) so that they can follow one another, then the scrape's tail
compressed to a final block. The fixed block's CRC-32 is kept and continued over the tail (as pigz does).
"""

from __future__ import annotations

import gzip
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.metrics import Family, Layout, Part, Row, Snapshot, SnapshotCollector

# Formats (content types) kept per part; clients asking for yet another one get an uncached render.
MAX_FORMATS = 4
# What is rendered ahead from the start: the text format (no Accept header) and OpenMetrics 1.0, as
# Prometheus asks for it.
RENDERED_AHEAD = ("", "application/openmetrics-text;version=1.0.0")
# Magic, deflate, no flags, no modification time, no extra flags, unknown OS (RFC 1952).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
VARY = "Accept, Accept-Encoding"
STOP_WAIT_SECONDS = 1.0

Encoder = Callable[[Collector], bytes]
ChunkKey = tuple[str, str, int, int | None]
"""(family, namespace, id of the part's source, rows kept)"""


Chunk = bytes | memoryview
"""A piece of a reply's body, written as it is."""


@dataclass(frozen=True)
class Response:
    """A /metrics reply; Content-Length is among the headers, the body is ready to write as it is."""

    headers: list[tuple[str, str]]
    body: list[Chunk]


class Exposition:
    """Renders /metrics from a SnapshotCollector (cached) and `fresh` collectors (every scrape).

    Without a collector everything is rendered at each scrape, as prometheus_client's own app does.
    `name[]` query parameters (prometheus_client's filter, a debugging aid) are honoured by an
    uncached render of the samples named.
    """

    def __init__(
        self,
        collector: SnapshotCollector | None = None,
        fresh: Collector | None = None,
        *,
        level: int = 6,
    ) -> None:
        self._collector = collector
        self._fresh = fresh
        self._level = level
        self._lock = threading.Lock()
        self._formats: dict[str, _Format] = {}
        self._chunks: dict[ChunkKey, _Chunk] = {}
        self._render: _Render | None = None
        self._renderer: threading.Thread | None = None
        """The background thread, once started: scrapes then serve the last render, whatever its age."""
        self._changed = threading.Event()
        self._stopped = threading.Event()
        """Set by stop(): ends the thread, and the rest between two renders at once."""

    def start(self, on_error: Callable[[BaseException], object] | None = None) -> None:
        """Render in a background thread from now on: at once, then after each `changed()`. A render that
        fails is handed to `on_error` and the last good bytes stay served."""
        if self._collector is None or self._renderer is not None:
            return
        for accept in RENDERED_AHEAD:
            encoder, content_type = choose_encoder(accept)
            self._format(content_type, encoder)
        self._renderer = threading.Thread(
            target=self._render_loop, args=(self._collector, on_error), name="metrics-render", daemon=True
        )
        self._changed.set()
        self._renderer.start()

    def serves(self, snapshot: Snapshot) -> bool:
        """The bytes a scrape gets now are those of `snapshot` (rendered in the background, they may be a
        poll behind it)."""
        render = self._render
        return render is not None and render.snapshot() is snapshot

    def changed(self) -> None:
        """A new snapshot is out (the poller calls this after each publish): render it in the background.
        Cheap and thread-safe; publishes that come during a render are rendered once, after it."""
        self._changed.set()

    def stop(self) -> None:
        """End the background thread: at once, or after the render under way, waiting for it at most
        STOP_WAIT_SECONDS (a daemon thread: a render of many namespaces does not hold up a shutdown)."""
        self._stopped.set()
        self._changed.set()
        if self._renderer is not None:
            self._renderer.join(STOP_WAIT_SECONDS)

    def _render_loop(
        self, collector: SnapshotCollector, on_error: Callable[[BaseException], object] | None
    ) -> None:
        """Render after each change, then rest as long as that render took: while many namespaces publish
        one after another (200 in a poll), the renders take at most about half of the interpreter's time
        from the polls and the scrapes, and each renders every publish since the one before."""
        while True:
            self._changed.wait()
            if self._stopped.is_set():
                return
            self._changed.clear()
            started = time.monotonic()
            try:
                with self._lock:
                    self._render_all(collector)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(exc)
            self._stopped.wait(time.monotonic() - started)

    def collect(self) -> Iterator[Metric]:
        """Everything, rendered now: what a cached response must equal."""
        if self._collector is not None:
            yield from self._collector.collect()
        if self._fresh is not None:
            yield from self._fresh.collect()

    def respond(self, accept: str | None, accept_encoding: str | None, query: str = "") -> Response:
        """The reply to a scrape with these Accept and Accept-Encoding headers and query string."""
        encoder, content_type = choose_encoder(accept or "")
        zipped = gzip_accepted(accept_encoding or "")
        names = parse_qs(query).get("name[]")
        fmt = self._format(content_type, encoder)
        if names or fmt is None or self._collector is None:
            text = encoder(_Named(self, frozenset(names)) if names else self)
            body: list[Chunk] = [gzip.compress(text, self._level) if zipped else text]
        else:
            body = self._cached(self._collector, fmt, zipped)
        headers = [("Content-Type", content_type), ("Content-Length", str(sum(map(len, body))))]
        if zipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", VARY))
        return Response(headers, body)

    def _format(self, content_type: str, encoder: Encoder) -> _Format | None:
        """The format kept for this content type (made on first use), None past MAX_FORMATS."""
        fmt = self._formats.get(content_type)
        if fmt is None:
            with self._lock:
                fmt = self._formats.get(content_type)
                if fmt is None and len(self._formats) < MAX_FORMATS:
                    fmt = self._formats[content_type] = _Format(content_type, encoder)
        return fmt

    def _cached(self, collector: SnapshotCollector, fmt: _Format, zipped: bool) -> list[Chunk]:
        """The body from the kept text of the snapshot, with the fresh collectors' text rendered now."""
        text = self._served(collector, fmt, zipped)
        if text is None:
            with self._lock:
                text = self._prepare(collector, fmt, zipped)
        if self._fresh is None:
            body = text.zipped if zipped else text.body
            assert body is not None  # made by _prepare
            return [body]
        # The kept text, not copied, then the fresh text: joined, 200 namespaces' 16 MB was copied per
        # scrape (20 at once: 330 MB of peak RSS). The server sends with TCP_NODELAY, so the small piece
        # after the large one is not held back for an ACK.
        tail = fmt.encode(self._fresh.collect()) + fmt.eof
        if not zipped:
            return [memoryview(text.body)[: text.size], tail]
        assert text.deflated is not None  # made by _prepare
        return [text.deflated, _gzip_end(tail, text.crc, text.size, self._level)]

    def _served(self, collector: SnapshotCollector, fmt: _Format, zipped: bool) -> _Text | None:
        """The text kept for this scrape; None when it must be rendered first. Rendering in the
        background, that is the last render whatever its snapshot (None only before the first one, or in
        a format not yet kept); else only the current snapshot's."""
        render = self._render
        if render is None or (self._renderer is None and render.snapshot() is not collector.snapshot()):
            return None
        text = render.texts.get(fmt.content_type)
        if text is None or (zipped and text.zipped is None):
            return None
        return text

    def _prepare(self, collector: SnapshotCollector, fmt: _Format, zipped: bool) -> _Text:
        """Under the lock: the text to serve in `fmt`, rendered now if no other scrape (or the background
        thread) did while this one waited for the lock."""
        text = self._served(collector, fmt, zipped)
        if text is not None:
            return text
        if self._renderer is not None:  # the first render, or a new format: every format from now on
            self._render_all(collector)
            assert self._render is not None  # made by _render_all
            return self._render.texts[fmt.content_type]
        snapshot = collector.snapshot()
        render = self._render
        if render is None or render.snapshot() is not snapshot:
            render = self._render = _Render(snapshot)
        text = render.texts.get(fmt.content_type)
        if text is None:
            self._lay_out(collector, snapshot, render)
            text = render.texts[fmt.content_type] = self._text(render, fmt)
            render.let_go()
        if zipped and text.zipped is None:
            text.deflate(self._level)
        return text

    def _render_all(self, collector: SnapshotCollector) -> None:
        """Under the lock: the current snapshot in every format kept, plain and gzipped, then served as a
        whole (a scrape meanwhile serves the render before)."""
        snapshot = collector.snapshot()
        current = self._render
        formats = list(self._formats.values())
        if current is not None and current.snapshot() is snapshot and current.complete(formats):
            return
        render = _Render(snapshot)
        self._lay_out(collector, snapshot, render)
        for fmt in formats:
            text = render.texts[fmt.content_type] = self._text(render, fmt)
            text.deflate(self._level)
        render.let_go()
        self._render = render

    def _lay_out(self, collector: SnapshotCollector, snapshot: Snapshot, render: _Render) -> None:
        """The snapshot's layout into `render`; the parts' text kept from before when their source is
        the same object."""
        before = self._chunks
        chunks: dict[ChunkKey, _Chunk] = {}

        def chunk(family: Family, part: Part, keep: int | None) -> _Chunk:
            key = (family.name, part.namespace, id(part.source), keep)
            found = chunks.get(key) or before.get(key)
            if found is None or found.source() is not part.source:  # an id reused by a newer object
                found = _Chunk(_reference(part.source))
            chunks[key] = found
            return found

        def size(family: Family, part: Part) -> int:
            found = chunk(family, part, None)
            if found.size is None:
                found.size = len(render.rows(part))
            return found.size

        render.layout = collector.layout(snapshot, size)
        render.chunks = [
            [chunk(family, part, keep) for part, keep in parts] for family, parts in render.layout
        ]
        # Only what this snapshot shows stays: the sources it no longer holds are let go.
        self._chunks = chunks

    def _text(self, render: _Render, fmt: _Format) -> _Text:
        """The laid-out snapshot in `fmt`: each part's text taken from its chunk, rendered only if new."""
        pieces: list[_Piece] = []
        for (family, parts), chunks in zip(render.layout, render.chunks, strict=True):
            pieces.append(fmt.header(family))
            for (part, keep), found in zip(parts, chunks, strict=True):
                piece = found.texts.get(fmt.content_type)
                if piece is None:
                    rows = render.rows(part)[:keep]
                    piece = found.texts[fmt.content_type] = _Piece(fmt.rows(family, rows))
                pieces.append(piece)
        return _Text(pieces, fmt.eof)


class _Format:
    """One content type: its encoder, the text of each family's header, the end of the exposition."""

    def __init__(self, content_type: str, encoder: Encoder) -> None:
        self.content_type = content_type
        self._encoder = encoder
        self.eof = encoder(_Families(()))  # "# EOF\n" in OpenMetrics, nothing in the text format
        self._headers: dict[str, _Piece] = {}

    def encode(self, families: Iterable[Metric]) -> bytes:
        return self._encoder(_Families(families)).removesuffix(self.eof)

    def header(self, family: Family) -> _Piece:
        """# HELP and # TYPE: what the encoder writes for the family without series."""
        if family.name not in self._headers:
            self._headers[family.name] = _Piece(self.encode([family.build(())]))
        return self._headers[family.name]

    def rows(self, family: Family, rows: Sequence[Row]) -> bytes:
        """The series' lines, exactly as the encoder writes them in the whole family."""
        text = self.encode([family.build(rows)])
        header = self.header(family).plain
        if not text.startswith(header):
            raise RuntimeError(f"{family.name}: the encoder's header is not the family's first lines")
        return text[len(header) :]


@dataclass
class _Chunk:
    """One part's text per format, and its number of series."""

    source: Callable[[], object]
    """The part's source, weakly where it can be: its id is this chunk's key, and a namespace's state
    (its whole task table) must not outlive the snapshots that hold it just because it was scraped."""
    size: int | None = None
    texts: dict[str, _Piece] = field(default_factory=dict)


def _reference(source: object) -> Callable[[], object]:
    """A weak reference, or for what cannot have one (small dicts and tuples), the object itself."""
    try:
        return weakref.ref(source)
    except TypeError:
        return lambda: source


class _Piece:
    """Text kept between scrapes, and its deflate stream (made when first asked for gzip)."""

    __slots__ = ("deflated", "plain")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self.deflated: bytes | None = None

    def deflate(self, level: int) -> bytes:
        if self.deflated is None:
            compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
            # A sync flush ends on a byte boundary without a final block: another stream may follow.
            self.deflated = compressor.compress(self.plain) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return self.deflated


class _Text:
    """One snapshot in one format: the whole body, plain and gzipped, and what the fresh collectors'
    text needs to go before the end: the size and CRC-32 of the snapshot's text, its deflate stream."""

    def __init__(self, pieces: list[_Piece], eof: bytes) -> None:
        self._pieces = [piece for piece in pieces if piece.plain]
        self._eof = eof
        self.body = b"".join([*(piece.plain for piece in self._pieces), eof])
        self.size = len(self.body) - len(eof)
        self.crc = 0
        self.deflated: bytes | None = None
        """The gzip header and the pieces' deflate streams, not final."""
        self.zipped: bytes | None = None

    def deflate(self, level: int) -> None:
        self.crc = zlib.crc32(memoryview(self.body)[: self.size])
        self.deflated = GZIP_HEADER + b"".join(piece.deflate(level) for piece in self._pieces)
        self.zipped = self.deflated + _gzip_end(self._eof, self.crc, self.size, level)


def _gzip_end(tail: bytes, crc: int, size: int, level: int) -> bytes:
    """`tail` as the final deflate block, then the trailer: the CRC-32 and size of all the text."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    final = compressor.compress(tail) + compressor.flush()
    return final + struct.pack("<II", zlib.crc32(tail, crc), (size + len(tail)) & 0xFFFFFFFF)


class _Render:
    """One snapshot laid out: its families and parts, the chunk of each part, its text per format."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = weakref.ref(snapshot)
        """Weak: the render is kept until the next one, the snapshot only while it is the current one."""
        self.layout: Layout = []
        self.chunks: list[list[_Chunk]] = []
        self.texts: dict[str, _Text] = {}
        self._rows: dict[int, Sequence[Row]] = {}

    def complete(self, formats: Iterable[_Format]) -> bool:
        """Rendered in each of these formats, plain and gzipped."""
        return all(
            (text := self.texts.get(fmt.content_type)) is not None and text.zipped is not None
            for fmt in formats
        )

    def let_go(self) -> None:
        """Drop the layout once its text is made: its parts reach the namespaces' states."""
        self.layout, self.chunks, self._rows = [], [], {}

    def rows(self, part: Part) -> Sequence[Row]:
        """A part's rows, made once while this snapshot is being rendered."""
        if id(part) not in self._rows:
            self._rows[id(part)] = part.rows()
        return self._rows[id(part)]


class _Families:
    """Given families as a collector: the encoders take a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Named:
    """The samples whose names are given, as prometheus_client's restricted registry filters them."""

    def __init__(self, source: Collector, names: frozenset[str]) -> None:
        self._source = source
        self._names = names

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            samples = [sample for sample in metric.samples if sample.name in self._names]
            if samples:
                kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                kept.samples = samples
                yield kept
