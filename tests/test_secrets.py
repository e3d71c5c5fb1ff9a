"""The API key never shows: not in logs, metrics, exceptions, repr or --help, whatever goes wrong."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import API_KEY
from structlog.typing import EventDict
from support import Exporter, FlakyTransport, serve_in_background

from exporter.apikey import ApiKeySource
from exporter.cli import build_parser, main
from exporter.config import load_settings
from exporter.logs import REDACTED, configure_logging
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer

MakeExporter = Callable[..., Exporter]


def test_the_redactor_scrubs_every_key_ever_held(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", lambda: {API_KEY, "sk_old_key_123"})
    structlog.get_logger().error("oops", error=f"Bearer {API_KEY} rejected", extra="sk_old_key_123!")
    line = json.loads(capsys.readouterr().err)
    assert line["error"] == f"Bearer {REDACTED} rejected"
    assert line["extra"] == f"{REDACTED}!"


async def test_key_absent_from_logs_metrics_and_errors_through_failures(
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    logs: list[EventDict],
) -> None:
    world.create_task("prod", "thumbnail", status="PROCESSING")
    good = make_exporter(api, namespaces=("prod", "ghost"), transport=FlakyTransport(fail={2, 3, 4, 5}))
    rejected = make_exporter(api, key=API_KEY + "_revoked", namespaces=("prod",))
    for _ in range(3):
        await good.poll()
        await rejected.poll()
        clock.advance(30)
    texts = [good.exposition(), rejected.exposition(), json.dumps(logs, default=str)]
    assert any("poll failed" in text for text in texts)  # failures did happen and were logged
    for text in texts:
        assert API_KEY not in text
    for request in api.requests:
        assert API_KEY not in json.dumps(request.headers)


def test_key_absent_from_repr_help_and_check_output(
    api: SimulatorTestServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = load_settings(api_key=API_KEY)
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(settings.model_dump())
    assert API_KEY not in build_parser().format_help()
    main(["--check-config", "--api-url", api.url, "--api-key", API_KEY, "--namespaces", "prod,ghost"])
    main(["--check-config", "--api-url", "http://127.0.0.1:9", "--api-key", API_KEY, "--namespaces", "prod"])
    captured = capsys.readouterr()
    assert "prod: ok" in captured.out
    assert "unreachable" in captured.out
    assert API_KEY not in captured.out + captured.err


async def test_a_rotated_key_file_is_picked_up_without_restart(
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[EventDict],
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk_expired\n")
    keys = ApiKeySource(path=key_file)
    exporter = make_exporter(api, key=keys, namespaces=("prod",))
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 0
    key_file.write_text(API_KEY + "\n")  # the Secret is rotated
    await exporter.poll()
    assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    events = [e["event"] for e in logs]
    assert "API key file changed; using the new key" in events
    assert "poll recovered" in events
    assert keys.known() == {"sk_expired", API_KEY}


def test_an_unreadable_key_file_keeps_the_last_key_and_says_so_once(
    tmp_path: Path, logs: list[EventDict]
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY)
    keys = ApiKeySource(path=key_file)
    key_file.unlink()
    assert [keys().get_secret_value() for _ in range(3)] == [API_KEY] * 3
    assert [e["event"] for e in logs] == ["API key file unusable; keeping the last key"]
    key_file.write_text("")
    assert keys().get_secret_value() == API_KEY


# The three leaks of issue 13


class EchoingApi:
    """A loopback API that rejects every key and quotes the Authorization header back in its error text, as
    some gateways do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.dumps({"detail": f"invalid credentials: {self.headers.get('Authorization')}"})
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> EchoingApi:
        serve_in_background(self._server)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def echoing_api() -> Iterator[EchoingApi]:
    with EchoingApi() as api:
        yield api


def test_check_config_redacts_a_key_the_api_echoes_back(
    echoing_api: EchoingApi, capsys: pytest.CaptureFixture[str]
) -> None:
    for discover in (False, True):
        namespaces = [] if discover else ["--namespaces", "prod"]
        code = main(["--check-config", "--api-url", echoing_api.url, "--api-key", API_KEY, *namespaces])
        captured = capsys.readouterr()
        assert code == 1
        (line,) = captured.out.splitlines()
        assert line.endswith(f"key rejected (HTTP 401: invalid credentials: Bearer {REDACTED})"), line
        assert API_KEY not in captured.out + captured.err


def test_a_key_file_with_a_second_line_never_reaches_a_header_or_a_log(
    echoing_api: EchoingApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the whole file (both lines) went into the Authorization header and every `poll failed` line."""
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{API_KEY}\nsk_second_line_secret\n")
    code = main(["--check-config", "--api-url", echoing_api.url, "--api-key-file", str(key_file)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "has more than one line" in captured.err
    assert API_KEY not in captured.err
    assert "sk_second_line_secret" not in captured.err


def test_an_empty_secret_leaves_log_lines_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """Before, "" among the secrets put [redacted] between every character of every line."""
    configure_logging("json", "info", lambda: {"", API_KEY})
    structlog.get_logger().info("poll complete", namespace="prod", error=f"Bearer {API_KEY}")
    line = json.loads(capsys.readouterr().err)
    assert (line["event"], line["namespace"], line["error"]) == (
        "poll complete",
        "prod",
        f"Bearer {REDACTED}",
    )


def test_the_redactor_reaches_nested_values_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", lambda: {API_KEY})
    structlog.get_logger().error("oops", request={"headers": {"authorization": f"Bearer {API_KEY}"}})
    try:
        raise RuntimeError(f"header was Bearer {API_KEY}")
    except RuntimeError:
        structlog.get_logger().exception("unexpected")
    err = capsys.readouterr().err
    assert API_KEY not in err
    assert err.count(REDACTED) >= 2


@pytest.mark.parametrize(
    "bad", [f"{API_KEY}\nsk_second_line_secret", "sk_rotated_ünïcode", "sk_rotated with spaces", ""]
)
async def test_a_rotated_key_file_with_a_bad_key_keeps_the_last_good_one(
    bad: str,
    world: World,
    api: SimulatorTestServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[EventDict],
) -> None:
    """The rotation is bad at run time: the poll goes on with the last good key, one error says why without
    the content, and nothing is raised into the poll loop."""
    world.create_task("prod", "thumbnail", status="PROCESSING")
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    keys = ApiKeySource(path=key_file)
    exporter = make_exporter(api, key=keys, namespaces=("prod",))
    await exporter.poll()
    key_file.write_text(bad + "\n")
    for _ in range(3):
        await exporter.poll()
        assert exporter.value("mixpeek_up", mixpeek_namespace="prod") == 1
    assert keys().get_secret_value() == API_KEY
    assert keys.known() == {API_KEY}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["API key file unusable; keeping the last key"]
    text = json.dumps(logs, default=str)
    assert "sk_second_line_secret" not in text
    assert "sk_rotated" not in text
    assert all(request.headers.get("authorization") != f"Bearer {bad}" for request in api.requests)
