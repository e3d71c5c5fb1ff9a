"""The API key never shows: not in logs, metrics, exceptions, repr or --help, whatever goes wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import API_KEY
from support import Exporter, FlakyTransport

from exporter.apikey import ApiKeySource
from exporter.cli import build_parser, main
from exporter.config import load_settings
from exporter.logs import REDACTED, configure_logging
from exporter.simulator import FakeClock, SimulatorServer, World

MakeExporter = Callable[..., Exporter]


def test_the_redactor_scrubs_every_key_ever_held(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", lambda: {API_KEY, "sk_old_key_123"})
    structlog.get_logger().error("oops", error=f"Bearer {API_KEY} rejected", extra="sk_old_key_123!")
    line = json.loads(capsys.readouterr().err)
    assert line["error"] == f"Bearer {REDACTED} rejected" and line["extra"] == f"{REDACTED}!"


async def test_key_absent_from_logs_metrics_and_errors_through_failures(
    clock: FakeClock,
    world: World,
    api: SimulatorServer,
    make_exporter: MakeExporter,
    logs: list[dict[str, Any]],
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
    api: SimulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = load_settings(api_key=API_KEY)
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.model_dump())
    assert API_KEY not in build_parser().format_help()
    main(["--check-config", "--api-url", api.url, "--api-key", API_KEY, "--namespaces", "prod,ghost"])
    main(["--check-config", "--api-url", "http://127.0.0.1:9", "--api-key", API_KEY, "--namespaces", "prod"])
    captured = capsys.readouterr()
    assert "prod: ok" in captured.out and "unreachable" in captured.out
    assert API_KEY not in captured.out + captured.err


async def test_a_rotated_key_file_is_picked_up_without_restart(
    world: World,
    api: SimulatorServer,
    make_exporter: MakeExporter,
    tmp_path: Path,
    logs: list[dict[str, Any]],
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk_expired\n")
    keys = ApiKeySource(path=key_file)
    exporter = make_exporter(api, key=keys, namespaces=("prod",))
    await exporter.poll()
    assert exporter.value("mixpeek_up", namespace="prod") == 0
    key_file.write_text(API_KEY + "\n")  # the Secret is rotated
    await exporter.poll()
    assert exporter.value("mixpeek_up", namespace="prod") == 1
    events = [e["event"] for e in logs]
    assert "API key file changed; using the new key" in events and "poll recovered" in events
    assert keys.known() == {"sk_expired", API_KEY}


def test_an_unreadable_key_file_keeps_the_last_key_and_says_so_once(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY)
    keys = ApiKeySource(path=key_file)
    key_file.unlink()
    assert [keys().get_secret_value() for _ in range(3)] == [API_KEY] * 3
    assert [e["event"] for e in logs] == ["API key file unreadable; keeping the last key"]
    key_file.write_text("")
    assert keys().get_secret_value() == API_KEY
