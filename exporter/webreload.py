"""The web config as it is now: reloaded when its file, or a certificate, key or CA file it names, changes.

As exporter-toolkit does, a new certificate (cert-manager renews them) or a changed user list takes
effect without a restart. The files are read and compared at most every `check_every` seconds, on the
next connection or request after that; a new file that does not load keeps the last good config, with
one log line and mixpeek_exporter_web_config_reloads_total{result="error"}. TLS cannot be turned on or
off while the server runs (the scheme of the targets would change): such a change is refused the same way.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.basicauth import BasicAuth
from exporter.config import ConfigError
from exporter.metrics import WEB_CONFIG_RELOADS, Family
from exporter.ratelimit import RequestRate
from exporter.webconfig import WebConfig, load_web_config

RELOAD_CHECK_SECONDS = 5.0
RESULTS = ("ok", "error")

Accept = Callable[[socket.socket], tuple[socket.socket, Any]]
"""The accept loop's call: a listening socket -> (connection, address)."""


@dataclass(frozen=True)
class _Loaded:
    """A config and what is made of it once, replaced whole on a reload."""

    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth | None
    rate: RequestRate | None
    headers: tuple[tuple[str, str], ...]


def _prepare(config: WebConfig, before: _Loaded | None, clock: Callable[[], float]) -> _Loaded:
    """Kept from `before` when unchanged: the users' remembered checks, the rate limit's tokens."""
    auth = None
    if config.basic_auth_users:
        same = before is not None and before.config.basic_auth_users == config.basic_auth_users
        auth = before.auth if same and before is not None else BasicAuth(config.basic_auth_users)
    rate = None
    if config.rate_limit.interval:
        same = before is not None and before.config.rate_limit == config.rate_limit
        rate = (
            before.rate
            if same and before is not None
            else RequestRate(config.rate_limit.interval, config.rate_limit.burst, clock=clock)
        )
    headers = tuple(config.http_server_config.headers.items())
    return _Loaded(config, config.ssl_context(), auth, rate, headers)


class LiveWebConfig(Collector):
    """Decides, for our HTTP server, how a connection is wrapped and whether a request is refused; as a
    collector, counts its reloads (one of /metrics' `fresh` collectors, see cli.build_exposition).

    Without a `path` it never reloads. `clock` (seconds, monotonic) is injected so that tests trigger the
    check without sleeping."""

    def __init__(
        self,
        config: WebConfig,
        path: Path | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_every: float = RELOAD_CHECK_SECONDS,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._path = path
        self._clock = clock
        self._every = check_every
        self._log = logger or structlog.get_logger("exporter.webreload")
        self._loaded = _prepare(config, None, clock)
        self._seen = self._fingerprint(config)
        self._next_check = clock() + check_every
        self._checking = threading.Lock()
        self._reloads = dict.fromkeys(RESULTS, 0)

    @classmethod
    def load(cls, path: Path, **options: Any) -> LiveWebConfig:
        """From the file, or a one-line ConfigError."""
        return cls(load_web_config(path), path, **options)

    @property
    def tls(self) -> bool:
        return self._loaded.context is not None

    @property
    def config(self) -> WebConfig:
        return self._loaded.config

    def refresh(self) -> None:
        """Reload if the files changed, at most every `check_every` seconds; one thread checks, the others
        go on with the config they have."""
        if self._path is None or self._clock() < self._next_check:
            return
        if not self._checking.acquire(blocking=False):
            return
        try:
            self._next_check = self._clock() + self._every
            seen = self._fingerprint(self._loaded.config)
            if seen != self._seen:
                self._seen = seen  # a broken file is counted once, not at every check
                self._reload(self._path)
        finally:
            self._checking.release()

    def _reload(self, path: Path) -> None:
        try:
            config = load_web_config(path)
            if (config.tls_server_config is not None) != self.tls:
                raise ConfigError(
                    f"MIXPEEK_WEB_CONFIG_FILE ({path}): tls_server_config cannot be added or removed while "
                    "running; restart the exporter"
                )
            loaded = _prepare(config, self._loaded, self._clock)
        except ConfigError as exc:
            self._reloads["error"] += 1
            self._log.error("web config not reloaded, the last good one stays", error=str(exc))
            return
        self._loaded = loaded
        self._seen = self._fingerprint(config)  # it may name other files than the config before it
        self._reloads["ok"] += 1
        self._log.info("web config reloaded", path=str(path))

    def _fingerprint(self, config: WebConfig) -> bytes:
        """A digest of the config file and of the files it names (or why one is unreadable)."""
        if self._path is None:
            return b""
        digest = hashlib.sha256()
        for path in (self._path, *config.files()):
            try:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            except OSError as exc:
                digest.update(f"unreadable {exc.errno}".encode())
        return digest.digest()

    def accepting(self, accept: Accept) -> Accept:
        """`accept`, with each connection wrapped for TLS by the context of the moment."""

        def accept_tls(listener: socket.socket) -> tuple[socket.socket, Any]:
            connection, address = accept(listener)
            self.refresh()
            context = self._loaded.context
            if context is None:
                return connection, address
            try:
                # The handshake then runs in the connection's own thread, not in the accepting one.
                return context.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                ), address
            except OSError:
                connection.close()
                raise

        return accept_tls

    def admits(self, connection: socket.socket) -> bool:
        """False for a TLS client whose certificate carries none of client_allowed_sans."""
        tls = self._loaded.config.tls_server_config
        if tls is None or not tls.client_allowed_sans or not isinstance(connection, ssl.SSLSocket):
            return True
        connection.do_handshake()
        if tls.allows_peer(connection.getpeercert()):
            return True
        self._log.warning("client certificate refused: none of client_allowed_sans")
        return False

    def refusal(self, authorization: str | None) -> HTTPStatus | None:
        """Why a request to a protected path is refused (rate limit, then credentials), or None."""
        self.refresh()
        loaded = self._loaded
        if loaded.rate is not None and not loaded.rate.allows():
            return HTTPStatus.TOO_MANY_REQUESTS
        if loaded.auth is not None and not loaded.auth.allows(authorization):
            return HTTPStatus.UNAUTHORIZED
        return None

    def headers(self) -> tuple[tuple[str, str], ...]:
        """http_server_config.headers, for every response."""
        self.refresh()
        return self._loaded.headers

    def collect(self) -> Iterator[Metric]:
        reloads = dict(self._reloads)
        family = Family(WEB_CONFIG_RELOADS, "counter", ("result",), ())
        yield family.build(((result,), count, None) for result, count in reloads.items())
