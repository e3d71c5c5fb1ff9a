"""The web config file as exporter-toolkit writes it: its documented examples, each key honoured or refused
by name, reloads, and basic auth that neither tells users apart by time nor fails with a 500."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from pydantic import SecretStr
from structlog.typing import EventDict
from test_fail_closed import refused

from exporter.basicauth import BasicAuth
from exporter.config import ConfigError
from exporter.server import MetricsServer
from exporter.simulator.testing import FakeClock
from exporter.webconfig import load_web_config
from exporter.webreload import LiveWebConfig

TIMEOUT = 10.0

# docs/web-config.yml of prometheus/exporter-toolkit, as published (its passwords are not).
TOOLKIT_EXAMPLE = """\
# TLS and basic authentication configuration example.
#
# Additionally, a certificate and a key file are needed.
tls_server_config:
  cert_file: server.crt
  key_file: server.key

# Usernames and passwords required to connect.
# Passwords are hashed with bcrypt: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md#about-bcrypt.
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m

# Rate limiting requests on the endpoint using a token bucket
rate_limit:
  interval: "1s" # time interval between two requests, set to 0 to disable rate limiter
  burst: 20 # and permits a burst of up to 20 requests.
"""

# web/testdata/web_config_headers.good.yml of the toolkit.
TOOLKIT_HEADERS = """\
http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1
    Content-Security-Policy: "default-src 'self' *.test.example.net"
"""


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate(folder: Path, name: str, san: str, ca: str | None = None) -> tuple[Path, Path]:
    """A key and a certificate (self-signed, or signed by the CA `ca`.crt/.key in `folder`)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    signer = ["-CA", str(folder / f"{ca}.crt"), "-CAkey", str(folder / f"{ca}.key")] if ca else []
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-addext", f"subjectAltName={san}", *signer, "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.crt/key for 127.0.0.1, a client CA, and two clients it signed with different SANs."""
    folder = tmp_path_factory.mktemp("pki")
    certificate(folder, "server", "IP:127.0.0.1")
    certificate(folder, "ca", "DNS:ca.example")
    certificate(folder, "scraper", "DNS:prometheus.example,IP:::1", ca="ca")
    certificate(folder, "stranger", "DNS:stranger.example", ca="ca")
    return folder


def hashed(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.contextmanager
def serving(web: LiveWebConfig) -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, web)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_context(pki: Path, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki / "server.crt")
    if client:
        context.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
    return context


def test_the_toolkit_documented_example_works_as_written(pki: Path, tmp_path: Path) -> None:
    """Relative file names are the file's folder's; rate_limit is honoured; /healthz stays open."""
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    path = tmp_path / "web-config.yml"
    path.write_text(TOOLKIT_EXAMPLE)
    config = load_web_config(path)
    assert (config.rate_limit.interval, config.rate_limit.burst) == (1.0, 20)
    clock = FakeClock()
    with serving(LiveWebConfig(config, path, clock=clock)) as server:
        url = f"https://127.0.0.1:{server.port}"
        with httpx.Client(base_url=url, verify=client_context(pki)) as https:
            assert https.get("/metrics", auth=("alice", "wrong")).status_code == 401
            assert https.get("/metrics", auth=("mallory", "wrong")).status_code == 401
            statuses = [https.get("/metrics").status_code for _ in range(19)]
            assert statuses == [401] * 18 + [429]  # the burst of 20 is spent
            assert https.get("/healthz").status_code == 200  # probes are never limited
            clock.advance(1)
            assert https.get("/metrics").status_code == 401  # one more token a second


def test_a_standard_file_with_client_auth_and_versions_loads_and_verifies_clients(
    pki: Path, tmp_path: Path
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/ca.crt\n"
        "  min_version: TLS12\n  max_version: TLS13\n"
        "  client_allowed_sans: [prometheus.example]\n"
    )
    with serving(LiveWebConfig.load(path)) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert httpx.get(url, verify=client_context(pki, "scraper")).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=client_context(pki), timeout=TIMEOUT)  # no certificate
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=client_context(pki, "stranger"), timeout=TIMEOUT)  # no allowed SAN


def test_an_ipv6_san_is_matched_as_go_writes_it(pki: Path, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki}/ca.crt\n"
        "  client_allowed_sans: ['::1']\n"
    )
    with serving(LiveWebConfig.load(path)) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert httpx.get(url, verify=client_context(pki, "scraper")).status_code == 200


def test_verify_if_given_lets_clients_without_a_certificate_in(pki: Path, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki}/ca.crt\n"
    )
    with serving(LiveWebConfig.load(path)) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert httpx.get(url, verify=client_context(pki)).status_code == 200
        assert httpx.get(url, verify=client_context(pki, "scraper")).status_code == 200


def test_versions_and_cipher_suites_take_go_names(pki: Path, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        "  min_version: TLS12\n  max_version: TLS12\n  prefer_server_cipher_suites: false\n"
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
    )
    web = LiveWebConfig.load(path)
    assert web.tls
    with (
        serving(web) as server,
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        assert (tls.version(), cipher[0]) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")


def test_the_toolkit_headers_are_on_every_response(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(TOOLKIT_HEADERS)
    expected = {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "1",
        "Content-Security-Policy": "default-src 'self' *.test.example.net",
    }
    with serving(LiveWebConfig.load(path)) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as plain:
            for response in (
                plain.get("/metrics"),
                plain.get("/nope"),
                plain.post("/"),
                plain.get("/healthz"),
            ):
                assert {name: response.headers.get(name) for name in expected} == expected
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        connection.putrequest("GET", "/" + "x" * 70_000)  # http.server's own 414
        connection.endheaders()
        too_long = connection.getresponse()
        assert too_long.status == 414
        assert too_long.getheader("X-Frame-Options") == "deny"
        connection.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("tls_server_config:\n  client_auth_type: RequireAnyClientCert\n", "RequireAnyClientCert"),
        ("tls_server_config:\n  client_auth_type: Sometimes\n", "unknown 'Sometimes'"),
        ("tls_server_config:\n  curve_preferences: [X25519]\n", "tls_server_config.curve_preferences"),
        ("tls_server_config:\n  cert: PEM\n", "tls_server_config.cert: give cert_file"),
        ("tls_server_config:\n  min_version: TLS14\n", "min_version"),
        ("tls_server_config:\n  cipher_suites: [RC4]\n", "unknown cipher 'RC4'"),
        ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "only TLS 1.3 suites"),
        ("http_server_config:\n  headers:\n    Server: me\n", "header 'Server' cannot be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options: 'allow'"),
        ("http_server_config:\n  http3: true\n", "http_server_config.http3"),
        ("rate_limit:\n  interval: soon\n  burst: 1\n", "rate_limit.interval"),
        ("rate_limit:\n  interval: 1s\n", "burst 0"),
        ("basic_auth_users:\n  carol: $2y$10$short\n", "basic_auth_users.carol: not a bcrypt hash"),
        ("web_config: {}\n", "web_config"),
        ("http_server_config:\n  http2: false\n", "configures nothing; set tls_server_config"),
    ],
)
def test_keys_not_honoured_are_refused_by_name(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        content.replace("tls_server_config:\n", "tls_server_config:\n  cert_file: a\n  key_file: b\n")
    )
    with pytest.raises(ConfigError, match=problem) as caught:
        load_web_config(path)
    assert "\n" not in str(caught.value)
    assert "$2y$10$short" not in str(caught.value)


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        ("  client_ca_file: {pki}/ca.crt\n", "client_ca_file needs client_auth_type"),
        ("  client_allowed_sans: [x]\n", "client_allowed_sans needs a verifying client_auth_type"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "min_version is above max_version"),
    ],
)
def test_combinations_the_toolkit_refuses_are_refused(
    pki: Path, tmp_path: Path, tls: str, problem: str
) -> None:
    path = tmp_path / "web.yml"
    files = f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    path.write_text(files + tls.format(pki=pki))
    with pytest.raises(ConfigError, match=problem):
        load_web_config(path)


def test_a_refused_key_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n"
    )
    assert "client_auth_type" in refused(["--demo", "--web-config-file", str(path)], capsys)


class Files:
    """A web config with basic auth, whose files a test rewrites, and its live view on a fake clock."""

    def __init__(self, folder: Path, pki: Path) -> None:
        self.path = folder / "web.yml"
        self.cert, self.key = folder / "tls.crt", folder / "tls.key"
        self.cert.write_bytes((pki / "server.crt").read_bytes())
        self.key.write_bytes((pki / "server.key").read_bytes())
        self.users("old")
        self.clock = FakeClock()
        self.web = LiveWebConfig.load(self.path, clock=self.clock, check_every=5)

    def users(self, password: str) -> None:
        self.path.write_text(
            f"tls_server_config:\n  cert_file: {self.cert}\n  key_file: {self.key}\n"
            f"basic_auth_users:\n  prometheus: {hashed(password)}\n"
        )

    def reloads(self) -> dict[str, float]:
        registry = CollectorRegistry()
        registry.register(self.web)
        text = generate_latest(registry).decode()
        return {
            line.split('"')[1]: float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("mixpeek_exporter_web_config_reloads_total{")
        }


@pytest.fixture
def files(tmp_path: Path, pki: Path) -> Files:
    return Files(tmp_path, pki)


def test_changed_users_take_effect_after_the_check_interval(files: Files) -> None:
    web = files.web
    assert web.refusal(basic("prometheus", "old")) is None  # remembered from here on
    files.users("new")
    files.clock.advance(4)
    assert web.refusal(basic("prometheus", "old")) is None  # not checked yet
    files.clock.advance(1)
    assert web.refusal(basic("prometheus", "old")) == 401  # the remembered check went with the old users
    assert web.refusal(basic("prometheus", "new")) is None
    assert files.reloads() == {"ok": 1.0, "error": 0.0}


def test_a_broken_file_keeps_the_last_good_config_and_is_counted_once(
    files: Files, logs: list[EventDict]
) -> None:
    assert files.reloads() == {"ok": 0.0, "error": 0.0}
    files.path.write_text("basic_auth_users:\n  prometheus: [\n")
    for _ in range(3):
        files.clock.advance(5)
        assert files.web.refusal(basic("prometheus", "old")) is None
    assert files.reloads() == {"ok": 0.0, "error": 1.0}
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert "not YAML" in errors[0]["error"]
    assert "\n" not in errors[0]["error"]
    files.users("fixed")
    files.clock.advance(5)
    assert files.web.refusal(basic("prometheus", "fixed")) is None
    assert files.reloads() == {"ok": 1.0, "error": 1.0}


def test_tls_cannot_be_turned_off_by_a_reload(files: Files, logs: list[EventDict]) -> None:
    files.path.write_text(f"basic_auth_users:\n  prometheus: {hashed('old')}\n")
    files.clock.advance(5)
    files.web.refusal(None)
    assert files.web.tls
    assert files.reloads() == {"ok": 0.0, "error": 1.0}
    assert "cannot be added or removed" in logs[-1]["error"]


def test_a_renewed_certificate_is_served_on_the_next_connection(files: Files, pki: Path) -> None:
    def served_certificate(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            unverified = ssl._create_unverified_context()
            with unverified.wrap_socket(raw) as tls:
                certificate = tls.getpeercert(binary_form=True)
                assert certificate is not None
                return certificate

    with serving(files.web) as server:
        before = served_certificate(server.port)
        certificate(files.cert.parent, "tls", "IP:127.0.0.1")  # a new key and certificate, same names
        assert served_certificate(server.port) == before
        files.clock.advance(5)
        after = served_certificate(server.port)
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    assert files.reloads() == {"ok": 1.0, "error": 0.0}


def test_an_unknown_user_costs_a_bcrypt_of_the_same_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed_password: bytes) -> bool:
        checked.append(hashed_password)
        return real(password, hashed_password)

    auth = BasicAuth({"prometheus": SecretStr(hashed("s3cret", rounds=6))})
    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert not auth.allows(basic("mallory", "s3cret"))
    assert len(checked) == 1
    assert checked[0].startswith(b"$2b$06$")
    assert not auth.allows(basic("prometheus", "wrong"))
    assert auth.allows(basic("prometheus", "s3cret"))
    assert auth.allows(basic("prometheus", "s3cret"))
    assert len(checked) == 3  # the success was remembered


def test_long_passwords_and_unreadable_hashes_are_a_401_never_a_500(files: Files, pki: Path) -> None:
    broken = BasicAuth({"prometheus": SecretStr("$2y$10$" + "!" * 53)})  # as if the file had not been checked
    assert not broken.allows(basic("prometheus", "anything"))
    with serving(files.web) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        with httpx.Client(verify=client_context(pki)) as https:
            assert https.get(url, auth=("prometheus", "old" + "x" * 70)).status_code == 401
            assert https.get(url, auth=("prometheus", "old")).status_code == 200
