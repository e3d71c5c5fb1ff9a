"""Command line: parse flags over env vars, set up logging, then serve (or check the configuration).

The only place that reads the environment, and the only place that turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import httpx
import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from pydantic import SecretStr

from exporter import __version__
from exporter.api import ACCEPT_ENCODING, ApiError, MixpeekClient, Namespace, Reason, RetryPolicy
from exporter.apikey import ApiKeySource
from exporter.checks import NamespaceIsolation
from exporter.config import ConfigError, Scope, Settings, env_name, load_settings
from exporter.exposition import STOP_WAIT_SECONDS, Exposition
from exporter.logs import configure_logging, redact
from exporter.metrics import Snapshot, SnapshotCollector, drop_group
from exporter.poller import Poller, PollPlan
from exporter.probe import probe
from exporter.ratelimit import RateLimiter
from exporter.server import STOP_SECONDS, MetricsServer
from exporter.sharding import NamespaceFilter
from exporter.statefile import StateFile, identity
from exporter.views import capped, task_type_filter
from exporter.webreload import LiveWebConfig

PROG = "mixpeek-exporter"
# The demo's world moves every second; a newcomer should not wait 30 s to see it.
DEMO_POLL_INTERVAL = 5.0
# From SIGTERM to exit, as docs/deploy.md and the Helm chart promise (their terminationGracePeriodSeconds, 10,
# leaves room): the poll loops' cancellation and the state file's last save share it, and the HTTP server's
# stop (at most server.STOP_SECONDS) and the background renderer's (a render under way, at most
# exposition.STOP_WAIT_SECONDS) come out of it too. A save cut short leaves the previous file: saves are
# atomic (exporter/statefile.py).
SHUTDOWN_SECONDS = 5.0
_STOPS_SECONDS = STOP_SECONDS + STOP_WAIT_SECONDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prometheus exporter for Mixpeek tasks. Every setting is a flag or a MIXPEEK_* env var; "
        "flags win. It needs an API key (MIXPEEK_API_KEY or MIXPEEK_API_KEY_FILE); --demo runs it against a "
        "built-in simulated API instead.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env {env_name(name)}; default: {_shown_default(name)}]"
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, make one listing request per namespace, print a line each, exit 0 or 1",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _shown_default(name: str) -> str:
    field = Settings.model_fields[name]
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value) or "empty"
    return str(getattr(value, "value", value))


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    check = args.pop("check_config")
    try:
        settings = load_settings(**args)
        web = LiveWebConfig.load(settings.web_config_file) if settings.web_config_file else None
        keys = key_source(settings)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level, keys.known if keys else set)
    try:
        if check:
            return asyncio.run(check_config(settings, keys, sys.stdout))
        return asyncio.run(serve(settings, keys, web))
    except OSError as exc:  # e.g. the listen port is taken
        print(f"{PROG}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def key_source(settings: Settings) -> ApiKeySource | None:
    """The configured key, also in demo mode so the log redactor knows it; None when there is none (demo)."""
    if settings.api_key is None and settings.api_key_file is None:
        return None
    try:
        return ApiKeySource(settings.api_key, settings.api_key_file if settings.api_key is None else None)
    except ValueError as exc:  # the key file changed since it was validated
        raise ConfigError(f"{env_name('api_key_file')}: {exc}") from None


@dataclass(frozen=True)
class Target:
    """Where the API is and how to authenticate: the user's, or the built-in demo's."""

    url: str
    key: Callable[[], SecretStr]
    demo: bool


@asynccontextmanager
async def api_target(settings: Settings, keys: ApiKeySource | None) -> AsyncIterator[Target]:
    """The real API with the user's key, or, only when asked (--demo), the built-in simulated one."""
    if not settings.demo:
        assert keys is not None, "Settings require a key unless demo is set"
        yield Target(settings.api_url, keys, demo=False)
        return
    from exporter.simulator import ApiProfile, start_demo  # noqa: PLC0415 - not loaded in production

    demo = start_demo(ApiProfile.parse(settings.demo_api))
    demo_key = SecretStr(demo.api_key)
    try:
        yield Target(demo.url, lambda: demo_key, demo=True)
    finally:
        demo.stop()


def _api_client(
    settings: Settings, http: httpx.AsyncClient, target: Target, *, retries: bool = True
) -> MixpeekClient:
    rate = settings.max_requests_per_second
    return MixpeekClient(
        http,
        target.key,
        page_size=settings.page_size,
        page_concurrency=settings.page_concurrency,
        retry=RetryPolicy(attempts=settings.max_retries + 1 if retries else 1),
        limiter=RateLimiter(rate, burst=max(1, int(rate))) if rate else None,
        max_response_bytes=settings.max_response_bytes,
        deadline=settings.request_timeout,
    )


def _http_client(settings: Settings, url: str) -> httpx.AsyncClient:
    """The pooled client. Its timeout bounds each wait (connect, a read); MixpeekClient bounds each request
    as a whole. It offers only the encodings MixpeekClient inflates within its size cap."""
    return httpx.AsyncClient(
        base_url=url,
        timeout=settings.request_timeout,
        headers={"User-Agent": f"{PROG}/{__version__}", "Accept-Encoding": ACCEPT_ENCODING},
        limits=httpx.Limits(
            max_connections=settings.concurrency * 2, max_keepalive_connections=settings.concurrency
        ),
    )


def build_poller(
    settings: Settings, client: MixpeekClient, interval: float, state_file: StateFile | None = None
) -> Poller:
    plan = PollPlan(
        namespaces=tuple(settings.namespaces),
        scope=settings.scope,
        interval=interval,
        concurrency=settings.concurrency,
        buckets=tuple(settings.histogram_buckets),
        max_tracked=settings.max_tracked_tasks,
        batches=settings.batches,
        reconcile_every=settings.reconcile_every,
        namespace_filter=namespace_filter(settings),
        poll_timeout=settings.poll_timeout,
        reprobe_after=settings.reprobe_interval or None,
    )
    return Poller(client, plan, state_file=state_file)


class Publisher(Protocol):
    """What /metrics reads of the poller (bench/cardinality.py stands in a fixed snapshot)."""

    snapshot: Snapshot

    def on_publish(self, listener: Callable[[], object]) -> None: ...


def build_exposition(settings: Settings, poller: Publisher, web: LiveWebConfig | None = None) -> Exposition:
    """/metrics: the poller's snapshots, folded and capped as configured, rendered once per change (in the
    background once the exposition is started); and read at each scrape, the process's own resources (memory
    is this exporter's scaling limit) and the web config's reload counts."""
    fold = capped(settings.max_buckets_per_namespace) if settings.batch_bucket_label else drop_group
    task_types = task_type_filter(settings.task_type_allow, settings.task_type_deny)
    if settings.max_task_types_per_namespace:
        task_types = capped(settings.max_task_types_per_namespace, task_types)
    collector = SnapshotCollector(
        lambda: poller.snapshot,
        __version__,
        fold,
        task_type_fold=task_types,
        histogram_task_type=settings.histogram_task_type,
        max_series=settings.max_series_per_metric,
        demo=settings.demo,
    )
    fresh = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=fresh)
    PlatformCollector(registry=fresh)
    if web is not None:
        fresh.register(web)
    exposition = Exposition(collector, fresh=fresh)
    poller.on_publish(exposition.changed)
    return exposition


async def serve(settings: Settings, keys: ApiKeySource | None, web: LiveWebConfig | None = None) -> int:
    """Poll and serve /metrics until SIGTERM or SIGINT, then stop within SHUTDOWN_SECONDS."""
    log = structlog.get_logger(PROG)
    async with api_target(settings, keys) as target, _http_client(settings, target.url) as http:
        interval = settings.poll_interval
        if target.demo:
            if "poll_interval" not in settings.model_fields_set:
                interval = DEMO_POLL_INTERVAL
            log.warning(
                "demo mode: polling the built-in simulated API; its data is made up", api_url=target.url
            )
        client = _api_client(settings, http, target)
        state_file = None
        if settings.state_file is not None:
            # The key at start: after a rotation, the next restart starts the counters afresh.
            scope, owner = settings.scope.value, namespace_filter(settings)
            setup = identity(target.key(), target.url, scope, settings.namespaces, owner)
            state_file = StateFile(settings.state_file, setup, tuple(settings.histogram_buckets))
        poller = build_poller(settings, client, interval, state_file)
        host, port = settings.listen_address
        loop = asyncio.get_running_loop()
        exposition = build_exposition(settings, poller, web)

        def render_failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(poller.internal_error, "render", exc)

        exposition.start(render_failed)
        server = MetricsServer(
            host,
            port,
            exposition,
            _latched(lambda: poller.ready() and exposition.serves(poller.snapshot)),
            web,
            max_connections=settings.max_connections,
            live=poller.alive,
            on_error=render_failed,
        )
        server.start()
        log.info(
            "serving",
            listen=f"{host}:{server.port}",
            tls=server.scheme == "https",
            version=__version__,
            scope=settings.scope.value,
            shard=settings.shard,
            total_shards=settings.total_shards,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(poller.run())
        try:
            await stop.wait()
            log.info("stopping")
        finally:
            deadline = loop.time() + SHUTDOWN_SECONDS - _STOPS_SECONDS
            runner.cancel()
            await asyncio.wait([runner], timeout=deadline - loop.time())
            flush = asyncio.create_task(poller.flush())
            await asyncio.wait([flush], timeout=max(0.0, deadline - loop.time()))
            server.stop()
            exposition.stop()
    return 0


def _latched(condition: Callable[[], bool]) -> Callable[[], bool]:
    """/readyz: true from the first time `condition` holds on. Ready means a scrape shows every namespace's
    first poll (the render runs after the poll), and stays so while later renders trail later polls."""
    held = False

    def ready() -> bool:
        nonlocal held
        held = held or condition()
        return held

    return ready


async def check_config(settings: Settings, keys: ApiKeySource | None, out: TextIO) -> int:
    """The first thing to run: namespace discovery (when needed), then a few authenticated requests per
    namespace (exporter/probe.py: listing, filters, sort, lookups, batches), one line each."""
    async with api_target(settings, keys) as target, _http_client(settings, target.url) as http:
        client = _api_client(settings, http, target, retries=False)  # one request each, answers at once
        if target.demo:
            print(f"demo mode: checking the built-in simulated API at {target.url}", file=out)
        found: list[Namespace] = []
        if settings.scope is Scope.ORGANIZATION:
            names: list[str | None] = [None]
        elif settings.namespaces:
            names = owned(settings, settings.namespaces, out)
            with contextlib.suppress(ApiError):  # only to check the ids tasks name, when the key may list
                found = await client.list_namespaces()
        else:
            try:
                found = await client.list_namespaces()
            except ApiError as exc:
                print(f"namespace discovery: {describe(exc, target.key())}", file=out)
                return 1
            print(f"namespace discovery: ok, {len(found)} namespaces", file=out)
            names = owned(settings, [ns.name for ns in found], out)
        ids = {ns.name: ns.namespace_id for ns in found if ns.namespace_id}
        isolation = NamespaceIsolation()
        failures = 0
        for name in names:
            label = name or "organization"
            try:
                behaviour = await probe(
                    client,
                    name,
                    ids=ids,
                    isolation=isolation,
                    namespaces=len(names),
                    batches=settings.batches,
                )
            except ApiError as exc:
                failures += 1
                print(f"{label}: {describe(exc, target.key())}", file=out)
            else:
                said = " ".join(redact(behaviour, [target.key().get_secret_value()]).split())
                print(f"{label}: ok; {said}", file=out)
        return 1 if failures or not names else 0


def namespace_filter(settings: Settings) -> NamespaceFilter:
    return NamespaceFilter(
        settings.shard, settings.total_shards, settings.namespace_allow, settings.namespace_deny
    )


def owned(settings: Settings, names: Sequence[str], out: TextIO) -> list[str | None]:
    """The namespaces this replica polls; one line says how many its shard and allow/deny leave out."""
    owns = namespace_filter(settings).owns
    kept: list[str | None] = [name for name in names if owns(name)]
    if left_out := len(names) - len(kept):
        print(
            f"{left_out} of {len(names)} namespaces left out: other shards' (this is shard {settings.shard} "
            f"of {settings.total_shards}, counting from 0) or not matching namespace_allow/deny",
            file=out,
        )
    return kept


def describe(exc: ApiError, key: SecretStr) -> str:
    """One line for the user: the API's own text, which may echo the Authorization header, without the key."""
    explanations = {
        Reason.UNAUTHORIZED: "key rejected",
        Reason.NOT_FOUND: "namespace unknown",
        Reason.TIMEOUT: "unreachable",
        Reason.CONNECTION_ERROR: "unreachable",
        Reason.RATE_LIMITED: "rate limited",
    }
    said = " ".join(redact(str(exc), [key.get_secret_value()]).split())
    return f"{explanations.get(exc.reason, 'failed')} ({said})"
