"""Test harness: the real exporter pieces wired to a simulated API, plus exposition helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, TypedDict, TypeVar

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from exporter.api import MixpeekClient
from exporter.config import DEFAULT_BUCKETS, Scope
from exporter.exposition import Exposition
from exporter.histogram import Histogram
from exporter.metrics import (
    BATCH_COMPLETION_SECONDS,
    BATCH_FAILURES,
    BATCH_OBJECTS,
    BATCH_OLDEST_ACTIVE_AGE,
    BATCH_TERMINAL_TRANSITIONS,
    BATCHES,
    COMPLETION_SECONDS,
    LAST_SUCCESS,
    OLDEST_ACTIVE_AGE,
    OUTCOMES,
    POLL_DURATION,
    POLL_DURATION_BUCKETS,
    TASKS,
    TERMINAL_TRANSITIONS,
    TRACKED_TASKS,
    UNTRACKED_TASKS,
    UP,
    SnapshotCollector,
    keep_all,
)
from exporter.poller import Poller, PollPlan
from exporter.sharding import ALL_NAMESPACES, NamespaceFilter
from exporter.simulator import DEFAULT_API_KEY, DOCUMENTED, ApiProfile, NamespaceIds, SimNamespace, World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.state import Key, NamespaceState
from exporter.statefile import StateFile, identity
from exporter.views import Fold
from exporter.vocabulary import FAILURE_CATEGORIES, TERMINAL_STATUSES, ZERO_FILLED_STATUSES

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# The simulated API's answers to the questions its documentation leaves open (exporter/simulator/profile.py),
# by name: the documented API, each undocumented behaviour on its own, and the combinations a client must
# survive. The exporter's differential test runs its history under each (see `by_profile`).
PROFILES: Final[Mapping[str, ApiProfile]] = {
    "documented": DOCUMENTED,
    "timestamps": ApiProfile(timestamps=True),
    "namespace_ids_all": ApiProfile(namespace_ids=NamespaceIds.ALL),
    "namespace_ids_none": ApiProfile(namespace_ids=NamespaceIds.NONE),
    "header_ignored": ApiProfile(header_honoured=False),
    "header_ignored_ids_all": ApiProfile(header_honoured=False, namespace_ids=NamespaceIds.ALL),
    # The ground truth per namespace is unknowable here: tasks carry no namespace and every listing is global.
    "header_ignored_ids_none": ApiProfile(header_honoured=False, namespace_ids=NamespaceIds.NONE),
    "filters_ignored": ApiProfile(filters_honoured=False),
    "in_refused": ApiProfile(refuse_operator="in"),
    "nin_refused": ApiProfile(refuse_operator="nin"),
    "gte_refused": ApiProfile(refuse_operator="gte"),
    "sort_ignored": ApiProfile(sort_honoured=False),
    "batches_list_absent": ApiProfile(batches_list=False),
    # Every undocumented behaviour available (the simulator's default before issue 12).
    "generous": ApiProfile(timestamps=True, namespace_ids=NamespaceIds.ALL),
    # Nothing beyond the documentation works, and what is declared but open does not either.
    "hostile": ApiProfile(
        header_honoured=False,
        namespace_ids=NamespaceIds.NONE,
        filters_honoured=False,
        sort_honoured=False,
        batches_list=False,
    ),
}


def profile_named(profile: ApiProfile | str) -> ApiProfile:
    """A profile by its name in PROFILES, or its compact text form (`ApiProfile.parse`), or itself."""
    if isinstance(profile, ApiProfile):
        return profile
    return PROFILES[profile] if profile in PROFILES else ApiProfile.parse(profile)


def by_profile(*names: str, argname: str = "profile") -> pytest.MarkDecorator:
    """Parametrise a test over the named profiles (all of PROFILES when none are named), ids the names."""
    chosen = names or tuple(PROFILES)
    return pytest.mark.parametrize(argname, [pytest.param(PROFILES[name], id=name) for name in chosen])


def known_namespace(world: World, ref: str) -> SimNamespace:
    """A namespace the test created, by name or id (World.namespace's None means the setup is wrong)."""
    found = world.namespace(ref)
    assert found is not None, f"no namespace {ref!r} in the world"
    return found


def simulator(
    world: World,
    profile: ApiProfile | str = DOCUMENTED,
    *,
    api_key: str = DEFAULT_API_KEY,
    cursor_pagination: bool = True,
) -> SimulatorTestServer:
    """A simulated API over `world` answering as `profile` (a name in PROFILES, a compact text, or a profile);
    not started: use it as a context manager."""
    return SimulatorTestServer(
        world, api_key=api_key, cursor_pagination=cursor_pagination, profile=profile_named(profile)
    )


class Sleeps:
    """An injected sleep: records each wait and returns at once, so retry tests take no time."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)


def parse_exposition(text: str) -> Series:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def select(
    series: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return {lbls: value for (n, lbls), value in series.items() if n == name and wanted <= lbls}


@dataclass
class Exporter:
    """One exporter process's worth of parts, polled explicitly by the test."""

    poller: Poller
    client: MixpeekClient
    http: httpx.AsyncClient
    registry: CollectorRegistry
    sleeps: Sleeps
    served: Exposition
    """What the exporter's /metrics serves: the same collector, its text cached per snapshot."""

    async def poll(self) -> None:
        await self.poller.poll_once()

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def scrape(self) -> Series:
        return parse_exposition(self.exposition())

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with exactly these labels (0 series is an error, not 0)."""
        key = (name, frozenset(labels.items()))
        series = self.scrape()
        if key not in series:
            raise KeyError(f"no series {name}{labels}")
        return series[key]

    def total(self, name: str, **labels: str) -> float:
        return sum(select(self.scrape(), name, **labels).values())


def build_exporter(
    url: str,
    key: str | Callable[[], SecretStr],
    clock: FakeClock,
    *,
    namespaces: tuple[str, ...] = (),
    organization: bool = False,
    page_size: int = 1000,
    transport: httpx.AsyncBaseTransport | None = None,
    event_hooks: Mapping[str, list[Callable[..., object]]] | None = None,
    state_file: Path | None = None,
    max_tracked: int | None = None,
    batches: bool = False,
    bucket_fold: Fold = keep_all,
    namespace_filter: NamespaceFilter = ALL_NAMESPACES,
    reconcile_every: int = 1,
    page_concurrency: int = 1,
    task_type_fold: Fold = keep_all,
    histogram_task_type: bool = True,
    max_series: int = 0,
    scope: Scope | None = None,
    reprobe_after: float | None = None,
    concurrency: int = 4,
    poll_timeout: float | None = None,
) -> Exporter:
    http = httpx.AsyncClient(base_url=url, timeout=10.0, transport=transport, event_hooks=event_hooks)
    sleeps = Sleeps()
    keys = key if callable(key) else (lambda: SecretStr(key))
    client = MixpeekClient(
        http, keys, page_size=page_size, page_concurrency=page_concurrency, clock=clock, sleep=sleeps
    )
    if scope is None:
        scope = Scope.ORGANIZATION if organization else Scope.NAMESPACE
    plan = PollPlan(
        namespaces,
        scope,
        30.0,
        concurrency,
        DEFAULT_BUCKETS,
        max_tracked,
        batches,
        namespace_filter=namespace_filter,
        reconcile_every=reconcile_every,
        reprobe_after=reprobe_after,
        poll_timeout=poll_timeout,
    )
    store = None
    if state_file is not None:
        setup = identity(keys(), url, plan.scope.value, namespaces, namespace_filter)
        store = StateFile(state_file, setup, DEFAULT_BUCKETS)
    poller = Poller(client, plan, clock=clock, state_file=store)
    collector = SnapshotCollector(
        lambda: poller.snapshot,
        "test",
        bucket_fold,
        task_type_fold=task_type_fold,
        histogram_task_type=histogram_task_type,
        max_series=max_series,
    )
    registry = CollectorRegistry()
    registry.register(collector)
    return Exporter(poller, client, http, registry, sleeps, Exposition(collector))


def require_binary(name: str) -> str:
    """Path of a tool the e2e tests need; CI installs it, so there its absence is a failure, not a skip."""

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; tests/run.sh installs it with apt-get")
        pytest.skip(f"{name} is not installed (run tests/run.sh to install it)")
    return path


class ExporterProcess:
    """The real `python -m exporter` in a child process, its JSON log lines collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:

        base = {k: v for k, v in os.environ.items() if not k.startswith("MIXPEEK_")}
        self.lines: list[str] = []
        self.events: list[dict[str, object]] = []
        self._serving = threading.Event()
        self.port = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", *args],
            env={**base, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                if event.get("event") == "serving":
                    self.port = int(str(event["listen"]).rsplit(":", 1)[1])
                    self._serving.set()
            self._serving.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 30.0) -> None:
        if not self._serving.wait(timeout) or not self.port:
            raise AssertionError(f"exporter did not start serving: {''.join(self.lines)[-2000:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /readyz until 200: the child polls on its own schedule, so this waits for a condition."""

        self.wait_serving(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"exporter never became ready: {''.join(self.lines)[-2000:]}")

    def terminate(self, timeout: float = 5.0) -> int:

        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def promtool(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run promtool; (exit code, stdout + stderr)."""

    result = subprocess.run(
        [require_binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


class FlakyTransport(httpx.AsyncBaseTransport):
    """The real network transport, except that the requests numbered in `fail` (from 1) never connect."""

    def __init__(self, fail: set[int]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._fail = fail
        self.count = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        if self.count in self._fail:
            raise httpx.ConnectError("connection reset by the test", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


# Deployment artefacts (deploy/): the chart, the rules and the dashboard generators, real Prometheus and
# Alertmanager processes.


T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
# prometheus-operator's CRDs live beside the repository, in shared/; they are never copied into it.
CRDS = REPO.parent / "shared" / "crds"


def deploy_module(relative: str) -> ModuleType:
    """Import a generator under deploy/ (not a package: each runs as `python deploy/<x>/build.py`)."""
    path = REPO / relative
    name = "deploy_" + path.parent.name + "_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 in `folder` (tls.crt, tls.key), made with openssl."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def serve_in_background(server: socketserver.BaseServer) -> threading.Thread:
    """Start `server.serve_forever` in a daemon thread, checking for `shutdown()` every 50 ms: socketserver's
    default of 0.5 s would make each stop cost half a second."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a program that cannot listen on port 0 and tell us which it got."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `condition` until it returns something truthy (returned), or fail after `timeout` seconds.

    Connection errors count as "not yet": the server being waited for may still be starting.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ServiceProcess:
    """A server (prometheus, alertmanager) on 127.0.0.1, its output kept in a file; the test stops it."""

    def __init__(self, args: list[str], log_path: Path, ready_url: str, timeout: float = 30.0) -> None:
        self.log_path = log_path
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self._ready(ready_url), timeout, f"{args[0]} to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{args[0]} never became ready:\n{self.log()[-3000:]}") from None

    def _ready(self, url: str) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return httpx.get(url, timeout=2).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Sample(TypedDict):
    """One element of an instant query's result vector."""

    metric: dict[str, str]
    value: list[float | str]  # [unix time, the value as a string]


def prometheus_query(base_url: str, expr: str) -> list[Sample]:
    """An instant query's result vector; a PromQL syntax error fails with Prometheus's own message."""
    answer = httpx.get(f"{base_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = answer.json()
    if body.get("status") != "success":
        raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    return list(body["data"]["result"])


def start_prometheus(
    workdir: Path, targets: list[str], rule_files: tuple[Path, ...] = (), alertmanager: str | None = None
) -> tuple[ServiceProcess, str]:
    """A real Prometheus (Debian's) on 127.0.0.1 scraping `targets` every second and evaluating `rule_files`
    every second; returns the process and its base URL."""

    port = free_port()
    config: dict[str, object] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "mixpeek-exporter", "static_configs": [{"targets": targets}]}],
        "rule_files": [str(path) for path in rule_files],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    url = f"http://127.0.0.1:{port}"
    server = ServiceProcess(
        [
            require_binary("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
        f"{url}/-/ready",
    )
    return server, url


def completion(state: NamespaceState, key: Key) -> Histogram:
    """A state's completion histogram for (status, group), empty when it has none."""
    return state.completions.get(key) or Histogram.empty(state.buckets)


def series_count(
    namespaces: int,
    task_types: int,
    *,
    buckets: int = 14,
    statuses: int = len(ZERO_FILLED_STATUSES),
    active: int | None = None,
    histogram_task_type: bool = True,
    batch_buckets: int = 0,
    active_batches: int | None = None,
    max_task_types: int = 0,
) -> dict[str, int]:
    """Series (sample lines) of each family that grows with the setup, as docs/metrics.md's formula says.

    Per namespace: `task_types` task types seen (after allow/deny; `max_task_types`, when not 0, shows
    at most that many and `_other`), `statuses` statuses (the 8 zero-filled
    ones plus any other seen), `buckets` histogram bounds (each histogram is bounds + 1 bucket lines with
    +Inf, plus _sum and _count), `batch_buckets` bucket_id values shown (0 without batches). `active`
    and `active_batches` count the non-terminal (status, group) pairs that have items now, summed over
    namespaces; None takes every one (the upper bound). Families that depend on history (poll errors by
    reason, API requests by code, state writes) and the fixed ones (build info, series dropped) are not
    counted.
    """
    if max_task_types and task_types > max_task_types:
        task_types = max_task_types + 1
    histogram = buckets + 3
    terminal = len(TERMINAL_STATUSES)
    active_statuses = statuses - terminal
    types = task_types if histogram_task_type else min(task_types, 1)
    counts = {
        TASKS: statuses * task_types,
        f"{TERMINAL_TRANSITIONS}_total": terminal * task_types,
        COMPLETION_SECONDS: terminal * types * histogram,
        BATCHES: statuses * batch_buckets,
        f"{BATCH_TERMINAL_TRANSITIONS}_total": terminal * batch_buckets,
        BATCH_COMPLETION_SECONDS: terminal * histogram if batch_buckets else 0,
        f"{BATCH_OBJECTS}_total": len(OUTCOMES) * batch_buckets,
        f"{BATCH_FAILURES}_total": len(FAILURE_CATEGORIES) * batch_buckets,
        UP: 1,
        LAST_SUCCESS: 1,
        POLL_DURATION: len(POLL_DURATION_BUCKETS) + 3,
        TRACKED_TASKS: 1,
        UNTRACKED_TASKS: 1,
    }
    totals = {name: count * namespaces for name, count in counts.items()}
    totals[OLDEST_ACTIVE_AGE] = namespaces * active_statuses * task_types if active is None else active
    totals[BATCH_OLDEST_ACTIVE_AGE] = (
        namespaces * active_statuses * batch_buckets if active_batches is None else active_batches
    )
    return totals
