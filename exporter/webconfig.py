"""TLS and basic auth for our HTTP server, from a web config file in the Prometheus exporter-toolkit format.

The same YAML that node_exporter's `--web.config.file` takes (the subset below), so an SRE can reuse it:

    tls_server_config:
      cert_file: /etc/exporter/tls.crt
      key_file: /etc/exporter/tls.key
    basic_auth_users:
      prometheus: $2y$10$...   # a bcrypt hash, e.g. from `htpasswd -nBC 10 "" | tr -d ':'`
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from pathlib import Path

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from exporter.config import ConfigError


class TLSServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, SecretStr] = {}

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls_server_config
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file, including the TLS files and hashes, or raise a one-line ConfigError."""
    where = f"MIXPEEK_WEB_CONFIG_FILE ({path})"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if raw is None:
            raise ConfigError(f"{where}: is empty; give tls_server_config and/or basic_auth_users")
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a YAML mapping (tls_server_config, basic_auth_users)")
        config = WebConfig.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{where}: {field}: {error['msg']}") from None
    if config.tls_server_config is None and not config.basic_auth_users:
        # A file that configures nothing is a mistake (a ConfigMap that failed to render), not a wish for
        # plain HTTP: without the variable the server is plain HTTP anyway.
        raise ConfigError(f"{where}: sets neither tls_server_config nor basic_auth_users")
    for user, hashed in config.basic_auth_users.items():
        if not hashed.get_secret_value().startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{where}: basic_auth_users.{user}: not a bcrypt hash")
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: TLS files unusable: {exc}") from None
    return config


class BasicAuth:
    """Checks an Authorization header against bcrypt hashes, remembering successes.

    bcrypt is slow on purpose (tens of ms); Prometheus sends the same credentials every scrape, so a
    digest of each accepted header is kept, as exporter-toolkit does.
    """

    def __init__(self, users: dict[str, SecretStr]) -> None:
        self._users = users
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        digest = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if digest in self._accepted:
                return True
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None or not bcrypt.checkpw(password.encode(), hashed.get_secret_value().encode()):
            return False
        with self._lock:
            self._accepted.add(digest)
        return True
