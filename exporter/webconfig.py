"""The web config file (TLS, basic auth, response headers, a rate limit) in the exporter-toolkit format.

The same YAML that node_exporter's `--web.config.file` takes
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md), so an SRE can
reuse a file. Every key of that format is either honoured or refused by name; relative file names are
relative to the file's own folder, as in the toolkit. Where Python's ssl cannot do what Go's crypto/tls
does, the mapping is below (and in docs/deploy.md "TLS and basic auth"):

- `client_auth_type`: NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert are exact.
  RequestClientCert asks Go for a certificate that is then neither required nor checked: no client is
  told apart by it, so it is served as NoClientCert. RequireAnyClientCert (and its old name
  RequireClientCert) requires a certificate without checking it, which Python's ssl cannot do: refused.
- `cipher_suites`: Go's names, mapped to OpenSSL's. TLS 1.3 suites are accepted and, as in Go, have no
  effect (neither Go nor OpenSSL's cipher list configures them).
- `http_server_config.http2`: accepted and ignored: this server speaks HTTP/1.1 only.
- `cert`, `key`, `client_ca` (inline PEM) and `curve_preferences`: refused; use the `*_file` keys.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.config import ConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

# Go's tls.CipherSuites() (the secure ones; the toolkit accepts only those) and OpenSSL's names for them.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,  # asked for, never checked: no difference to the server
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequireAnyClientCert", "RequireClientCert")

# The response headers the toolkit lets a file set, and the values it allows (None: any).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# The modular crypt format of bcrypt: version, two-digit cost, 22 characters of salt and 31 of hash.
BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# A Go duration, as the toolkit's rate_limit.interval takes it: "1s", "1m30s", "250ms", or 0.
GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
REFUSED_TLS_KEYS = {
    "cert": "give cert_file",
    "key": "give key_file",
    "client_ca": "give client_ca_file",
    "curve_preferences": "not supported (OpenSSL's defaults are used)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: tuple[str, ...] = ()
    """The client certificate must carry one of these (DNS, IP, email or URI) subject alternative names."""
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @field_validator("client_auth_type")
    @classmethod
    def _known_client_auth(cls, value: str) -> str:
        if value in UNVERIFIED_CLIENT_AUTH:
            raise ValueError(
                f"{value} (a client certificate required but not verified) cannot be done with Python's ssl;"
                " use RequireAndVerifyClientCert with client_ca_file"
            )
        if value not in CLIENT_AUTH:
            raise ValueError(f"unknown {value!r}; one of {', '.join(CLIENT_AUTH)}")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _known_ciphers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in CIPHER_SUITES and name not in TLS13_SUITES:
                raise ValueError(f"unknown cipher {name!r} (Go's names from crypto/tls CipherSuites())")
        if value and all(name in TLS13_SUITES for name in value):
            raise ValueError("lists only TLS 1.3 suites, which are not configurable: list TLS 1.2 suites")
        return value

    def check(self) -> None:
        """What the fields cannot check one by one."""
        verified = CLIENT_AUTH[self.client_auth_type] != ssl.CERT_NONE
        if verified and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.client_ca_file is not None and self.client_auth_type == "NoClientCert":
            raise ValueError("client_ca_file needs client_auth_type (RequireAndVerifyClientCert)")
        if self.client_allowed_sans and not verified:
            raise ValueError("client_allowed_sans needs a verifying client_auth_type")
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ValueError("min_version is above max_version")

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        context.load_cert_chain(self.cert_file, self.key_file)
        tls12 = [CIPHER_SUITES[name] for name in self.cipher_suites if name in CIPHER_SUITES]
        if tls12:
            context.set_ciphers(":".join(tls12))
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        context.verify_mode = CLIENT_AUTH[self.client_auth_type]
        if context.verify_mode != ssl.CERT_NONE and self.client_ca_file is not None:
            context.load_verify_locations(self.client_ca_file)
        return context

    def allows_peer(self, certificate: Mapping[str, object] | None) -> bool:
        """The verified client certificate names one of client_allowed_sans (always true without the list)."""
        if not self.client_allowed_sans:
            return True
        if not certificate:
            return False
        names = certificate.get("subjectAltName", ())
        assert isinstance(names, tuple)
        return any(_san(kind, value) in self.client_allowed_sans for kind, value in names)

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *([self.client_ca_file] if self.client_ca_file else []))


def _san(kind: str, value: str) -> str:
    """As Go writes it: Python spells IPv6 addresses out in full."""
    return str(ipaddress.ip_address(value.strip())) if kind == "IP Address" else value


class HTTPServerConfig(_Strict):
    http2: bool = True
    """Ignored: the server speaks HTTP/1.1 only (Prometheus scrapes over HTTP/1.1 too)."""
    headers: dict[str, str] = {}

    @field_validator("headers", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> object:
        """YAML makes `X-XSS-Protection: 1` a number; Go's map[string]string takes it as text."""
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items() if v is not None}
        return value

    @field_validator("headers")
    @classmethod
    def _allowed(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name not in HEADERS:
                raise ValueError(f"header {name!r} cannot be configured; only {', '.join(HEADERS)}")
            allowed = HEADERS[name]
            if allowed is not None and text and text not in allowed:
                raise ValueError(f"{name}: {text!r} is not one of {', '.join(allowed)}")
            if "\r" in text or "\n" in text:
                raise ValueError(f"{name}: a header value is one line")
        return {name: text for name, text in value.items() if text}  # blank: unset, as in the toolkit


class RateLimit(_Strict):
    interval: float = Field(default=0.0, ge=0)
    """Seconds between requests on average (a Go duration in the file); 0 turns the limit off."""
    burst: int = Field(default=0, ge=0)

    @field_validator("interval", mode="before")
    @classmethod
    def _go_duration(cls, value: object) -> object:
        if not isinstance(value, str) or value == "0":
            return value
        parts = GO_DURATION_PART.findall(value)
        if not parts or "".join(number + unit for number, unit in parts) != value:
            raise ValueError(f"{value!r} is not a duration such as 1s, 250ms or 1m30s")
        return sum(float(number) * GO_UNIT_SECONDS[unit] for number, unit in parts)

    @model_validator(mode="after")
    def _passes_some(self) -> RateLimit:
        if self.interval and not self.burst:
            raise ValueError("burst 0 would refuse every request; give burst (at least 1)")
        return self


class WebConfig(_Strict):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, SecretStr] = {}
    rate_limit: RateLimit = RateLimit()

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls_server_config is None else self.tls_server_config.ssl_context()

    def files(self) -> tuple[Path, ...]:
        """The files besides this one that it reads: a change to one of them is a change of the config."""
        return () if self.tls_server_config is None else self.tls_server_config.files()


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file, including the TLS files and hashes, or raise a one-line ConfigError."""
    where = f"MIXPEEK_WEB_CONFIG_FILE ({path})"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if raw is None:
            raise ConfigError(f"{where}: is empty; give tls_server_config and/or basic_auth_users")
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a YAML mapping (tls_server_config, basic_auth_users)")
        tls = raw.get("tls_server_config")
        if isinstance(tls, dict):
            _refuse_inline(tls, where)
            for key in ("cert_file", "key_file", "client_ca_file"):
                if isinstance(tls.get(key), str):
                    tls[key] = path.parent / tls[key]  # relative to the file, as in the toolkit
        config = WebConfig.model_validate(raw)
        if config.tls_server_config is not None:
            config.tls_server_config.check()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{where}: {field}: {error['msg'].removeprefix('Value error, ')}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: tls_server_config: {exc}") from None
    configures = config.tls_server_config or config.basic_auth_users or config.http_server_config.headers
    if not configures and not config.rate_limit.interval:
        # A file that configures nothing is a mistake (a ConfigMap that failed to render), not a wish for
        # plain HTTP: without the variable the server is plain HTTP anyway.
        raise ConfigError(
            f"{where}: configures nothing; set tls_server_config, basic_auth_users,"
            " http_server_config.headers or rate_limit"
        )
    for user, hashed in config.basic_auth_users.items():
        if not BCRYPT.fullmatch(hashed.get_secret_value()):
            raise ConfigError(
                f"{where}: basic_auth_users.{user}: not a bcrypt hash ($2y$10$ and 53 characters)"
            )
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: TLS files unusable: {exc}") from None
    return config


def _refuse_inline(tls: dict[str, object], where: str) -> None:
    for key, hint in REFUSED_TLS_KEYS.items():
        if key in tls:
            raise ConfigError(f"{where}: tls_server_config.{key}: {hint}")
