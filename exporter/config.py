"""Settings: every knob of the exporter, read from MIXPEEK_* env vars and CLI flags (flags win)."""

from __future__ import annotations

import itertools
import math
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from exporter.api import DEFAULT_MAX_RESPONSE_BYTES
from exporter.sharding import pod_ordinal

ENV_PREFIX = "MIXPEEK_"
MAX_PAGE_SIZE = 1000
# A key file is a few dozen bytes; reading no more keeps a wrong path (a log, /dev/zero) from filling memory.
MAX_KEY_FILE_BYTES = 4096
NO_KEY = (
    "no API key: set MIXPEEK_API_KEY or MIXPEEK_API_KEY_FILE, "
    "or pass --demo (MIXPEEK_DEMO=true) to run against the built-in simulated API"
)
# Async jobs run from seconds to hours; the API keeps tasks about 24 h.
DEFAULT_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)


class Scope(StrEnum):
    AUTO = "auto"
    NAMESPACE = "namespace"
    ORGANIZATION = "organization"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class ConfigError(Exception):
    """A setting is wrong; the message is one line naming the setting, fit for the user."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """The exporter's configuration. Field descriptions double as `--help` text."""

    # allow_inf_nan=False: "inf" or "nan" in any float setting is a typo, never a wish (inf req/s overflowed).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    api_key: SecretStr | None = Field(
        None, description="Bearer API key (sk_...); one of api_key, api_key_file or demo is required"
    )
    api_key_file: Path | None = Field(
        None, description="file holding the API key (a mounted Kubernetes Secret); used when api_key is unset"
    )
    api_url: str = Field("https://api.mixpeek.com", description="base URL of the Mixpeek API")
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated namespace names or ns_ ids; empty discovers every namespace each cycle",
    )
    scope: Scope = Field(
        Scope.AUTO,
        description="namespace: one listing per namespace with X-Namespace; "
        "organization: one listing labelled by additional_data.namespace_id; "
        "auto: namespace while the evidence says task routes honour X-Namespace, else organization",
    )
    poll_interval: float = Field(
        30.0, ge=1, le=86400, description="seconds between the starts of two polls of a namespace, 1..86400"
    )
    poll_timeout: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="seconds one poll of a namespace may take before it fails (timeout)",
    )
    reprobe_interval: float = Field(
        3600.0,
        ge=0,
        description="seconds after which an API behaviour that failed its check is tried again; 0: never",
    )
    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="listing page size, 1..1000")
    request_timeout: float = Field(
        10.0,
        ge=0.1,
        le=300,
        description="seconds one API request may take in all (connect, send, headers and the whole body) "
        "before it times out, 0.1..300",
    )
    max_response_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BYTES,
        ge=1024,
        description="bytes one API response may hold once decompressed; a larger one fails the poll "
        "(invalid_response) and is not read further",
    )
    concurrency: int = Field(4, ge=1, le=64, description="namespaces polled at the same time")
    max_retries: int = Field(
        3, ge=0, le=10, description="retries of a request after a timeout, connection error, 5xx or 429"
    )
    max_requests_per_second: float = Field(
        0.0, ge=0, description="cap on API requests per second across all namespaces; 0 is no cap"
    )
    max_tracked_tasks: int = Field(
        1_000_000,
        ge=1,
        description="tasks remembered per namespace; past it the oldest are counted, not tracked",
    )
    state_file: Path | None = Field(
        None, description="file keeping counters and task state across restarts (e.g. on an emptyDir)"
    )
    listen: str = Field("0.0.0.0:9877", description="host:port of the HTTP server")
    max_connections: int = Field(
        64,
        ge=1,
        le=10_000,
        description="connections the HTTP server keeps open; past it, the one idle longest is closed",
    )
    web_config_file: Path | None = Field(
        None,
        description="TLS and basic auth for /metrics, in the Prometheus exporter-toolkit web config format",
    )
    histogram_buckets: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS),
        description="comma-separated upper bounds in seconds of mixpeek_task_completion_seconds",
    )
    log_format: LogFormat | None = Field(None, description="json or console (console when stderr is a TTY)")
    log_level: str = Field("info", description="debug, info, warning or error")
    batches: bool = Field(True, description="also list every batch of each namespace (POST /v1/batches/list)")
    batch_bucket_label: bool = Field(
        True, description="label batch metrics by bucket_id; off aggregates them per namespace"
    )
    max_buckets_per_namespace: int = Field(
        200, ge=1, description="bucket_id values shown per namespace; the rest are folded into _other"
    )
    reconcile_every: int = Field(
        10,
        ge=1,
        description="polls per full listing; the polls between fetch only what changed (1: always list all)",
    )
    page_concurrency: int = Field(
        4,
        ge=1,
        le=32,
        description="offset pages of one listing requested at once (cursor pages go one by one)",
    )
    shard: int = Field(
        0, ge=0, description="this replica's shard, 0..total_shards-1; unset: pod_name's ordinal, else 0"
    )
    total_shards: int = Field(
        1, ge=1, description="replicas sharing the namespaces; each polls those whose stable hash falls to it"
    )
    pod_name: str | None = Field(
        None,
        description="StatefulSet pod name (the chart sets it from metadata.name); when shard is unset, "
        "its trailing -N ordinal is the shard",
    )
    namespace_allow: str | None = Field(
        None, description="regex: only namespaces fully matching it are polled"
    )
    namespace_deny: str | None = Field(None, description="regex: namespaces fully matching it are not polled")
    task_type_allow: str | None = Field(
        None, description="regex: task types not fully matching it are exported as _other"
    )
    task_type_deny: str | None = Field(
        None, description="regex: task types fully matching it are exported as _other"
    )
    max_task_types_per_namespace: int = Field(
        100,
        ge=0,
        description="task_type values shown per namespace, in order of first sight; the rest are folded "
        "into _other (0: no cap)",
    )
    histogram_task_type: bool = Field(
        True, description="label mixpeek_task_completion_seconds by task_type; off sums types per namespace"
    )
    max_series_per_metric: int = Field(
        100_000,
        ge=0,
        description="samples one metric may expose (each bucket, _sum and _count of a histogram is one); "
        "the rest are dropped and counted (0: no cap)",
    )
    demo: bool = Field(
        False,
        description="run against the built-in simulated API, not the real one (no key needed); "
        'its metrics carry demo="true" on mixpeek_exporter_build_info',
    )
    demo_api: str = Field(
        "default",
        description="with --demo: how the simulated API answers what the documentation leaves open, e.g. "
        "timestamps,header=ignored,namespace_ids=all,filters=ignored,refuse_operator=in,sort=ignored,"
        "batches_list=absent (default: the documented API only)",
    )

    @field_validator("demo_api")
    @classmethod
    def _api_profile(cls, value: str) -> str:
        from exporter.simulator.profile import ApiProfile  # noqa: PLC0415 - only the demo needs it

        ApiProfile.parse(value)
        return value

    @field_validator("namespaces", mode="before")
    @classmethod
    def _namespaces_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("namespaces")
    @classmethod
    def _namespaces_fit_a_header(cls, value: list[str]) -> list[str]:
        """Each name travels in the X-Namespace header, which takes printable ASCII only."""
        for name in value:
            if not (name.isascii() and name.isprintable()):
                raise ValueError(
                    f"namespace {name!r} cannot go in the X-Namespace header: printable ASCII only"
                )
        return value

    @field_validator("histogram_buckets", mode="before")
    @classmethod
    def _buckets_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("histogram_buckets")
    @classmethod
    def _buckets_increasing(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("needs at least one bucket")
        if any(not math.isfinite(b) or b <= 0 for b in value):
            raise ValueError("buckets must be finite and positive")
        if any(a >= b for a, b in itertools.pairwise(value)):
            raise ValueError("buckets must be strictly increasing")
        return value

    @field_validator("namespace_allow", "namespace_deny", "task_type_allow", "task_type_deny")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            # Not only re.error: a{99999999999} raises OverflowError, deep nesting RecursionError.
            except (re.error, OverflowError, RecursionError, MemoryError, ValueError) as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("total_shards")
    @classmethod
    def _shard_in_range(cls, value: int, info: ValidationInfo) -> int:
        shard = info.data.get("shard")
        if shard is not None and shard >= value:
            raise ValueError(f"shard {shard} is out of range for {value} shards (0..{value - 1})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _shard_from_pod_name(cls, data: Any) -> Any:
        """A StatefulSet pod without an explicit shard takes its ordinal, as kube-state-metrics does."""
        if not isinstance(data, dict) or data.get("shard") is not None or data.get("pod_name") is None:
            return data
        pod = str(data["pod_name"])
        ordinal = pod_ordinal(pod)
        if ordinal is None:
            return data  # the pod_name validator names the problem
        try:
            total = int(data.get("total_shards", 1))
        except (TypeError, ValueError):
            total = None  # the total_shards validator names the problem
        if total is not None and ordinal >= total:
            raise ValueError(
                f"{env_name('pod_name')}: the ordinal {ordinal} of pod {pod} is out of range for "
                f"{env_name('total_shards')}={total}; the StatefulSet's replicas must equal total_shards"
            )
        return {**data, "shard": ordinal}

    @field_validator("pod_name")
    @classmethod
    def _pod_name_has_ordinal(cls, value: str | None) -> str | None:
        if value is not None and pod_ordinal(value) is None:
            raise ValueError("must end in -<ordinal>, as a StatefulSet pod's name does (mixpeek-exporter-2)")
        return value

    @field_validator("state_file")
    @classmethod
    def _state_dir_writable(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value.parent, os.W_OK | os.X_OK):
            raise ValueError(f"directory {value.parent} does not exist or is not writable")
        return value

    @field_validator("api_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @field_validator("api_key")
    @classmethod
    def _key_fits_a_header(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if problem := key_problem(key):
            raise ValueError(f"{problem}; fix it, or unset it and use MIXPEEK_API_KEY_FILE or --demo")
        return SecretStr(key)

    @field_validator("api_key_file")
    @classmethod
    def _key_file_readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("api_key") is None:
            read_key_file(value)
        return value

    @model_validator(mode="after")
    def _key_or_demo(self) -> Settings:
        """Fail closed: a Secret that failed to mount must stop the exporter, never chart the demo's data."""
        if not self.demo and self.api_key is None and self.api_key_file is None:
            raise ValueError(NO_KEY)
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def key_problem(key: str) -> str | None:
    """Why `key` cannot be a bearer token in a header, in words that never quote it; None when it can."""
    if not key:
        return "is empty"
    if "\n" in key or "\r" in key:
        return "has more than one line; it must hold the key alone"
    if any(char.isspace() for char in key):
        return "has whitespace inside the key"
    if not all("!" <= char <= "~" for char in key):
        return "has characters an API key cannot have (printable ASCII only)"
    return None


def read_key_file(path: Path) -> SecretStr:
    """The key in `path` without surrounding whitespace; ValueError, never quoting the content, if unfit."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if problem := key_problem(key):
        raise ValueError(f"{path} {problem}")
    return SecretStr(key)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be host:port, e.g. 0.0.0.0:9877 or [::]:9877")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment plus overrides (CLI flags), or raise one-line ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if field:
            problems.append(f"{env_name(field)}: {message}")
        else:
            problems.append(message)
    return "invalid configuration: " + "; ".join(problems)
