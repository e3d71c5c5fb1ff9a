"""Fail closed at start: no key without --demo, header-unfit keys and namespaces, and settings at their edges.

Every case goes through `main` with `--check-config`, so code that wrongly accepted the setting answers (or
crashes) at once instead of serving for ever; each must end in exit 2 and one line naming the setting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr
from support import parse_exposition, select

from exporter.api import MixpeekClient
from exporter.cli import build_exposition, build_poller, main
from exporter.config import load_settings

# Nothing listens on the discard port: a check that got past validation answers "unreachable" at once.
NOWHERE = ["--api-url", "http://127.0.0.1:9", "--namespaces", "prod"]


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIXPEEK_API_KEY", "MIXPEEK_API_KEY_FILE", "MIXPEEK_DEMO"):
        monkeypatch.delenv(name, raising=False)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """main's stderr, after checking it is exit 2 with exactly one line and nothing on stdout."""
    code = main(["--check-config", *argv])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, ""), captured
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("mixpeek-exporter: ")
    assert "Traceback" not in captured.err
    return captured.err


# Fail closed


def test_no_key_and_no_demo_exits_2_naming_every_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(NOWHERE, capsys)
    assert "MIXPEEK_API_KEY " in err
    assert "MIXPEEK_API_KEY_FILE" in err
    assert "--demo" in err


def test_a_secret_that_failed_to_mount_stops_the_real_process(tmp_path: Path) -> None:
    """The production story: the URL of the real API, no key. Before, this served demo-* namespaces as up."""
    env = {
        "PATH": "/usr/bin:/bin",
        "MIXPEEK_API_URL": "https://api.mixpeek.com",
        "MIXPEEK_LISTEN": "127.0.0.1:0",
    }
    run = subprocess.run(
        [sys.executable, "-m", "exporter"], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith("mixpeek-exporter: invalid configuration: no API key: set MIXPEEK_API_KEY")
    assert run.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("setup", "setting"),
    [
        ({"env": ""}, "MIXPEEK_API_KEY"),
        ({"env": "   "}, "MIXPEEK_API_KEY"),
        ({"file": ""}, "MIXPEEK_API_KEY_FILE"),
        ({"file": " \n\n"}, "MIXPEEK_API_KEY_FILE"),
        ({"file": None}, "MIXPEEK_API_KEY_FILE"),  # a path that is a directory: unreadable as a file
    ],
    ids=["empty-env", "blank-env", "empty-file", "blank-file", "unreadable-file"],
)
def test_an_empty_or_unreadable_key_is_one_clear_line(
    setup: dict[str, str | None],
    setting: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "env" in setup:
        monkeypatch.setenv("MIXPEEK_API_KEY", str(setup["env"]))
    else:
        path = tmp_path / "api-key"
        if setup["file"] is None:
            path.mkdir()
        else:
            path.write_text(setup["file"])
        monkeypatch.setenv("MIXPEEK_API_KEY_FILE", str(path))
    assert f"{setting}: " in refused(NOWHERE, capsys)


@pytest.mark.parametrize("how", [["--demo"], ["--no-demo"]])
def test_the_demo_runs_only_when_asked(
    how: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if how == ["--no-demo"]:
        refused(how, capsys)
        monkeypatch.setenv("MIXPEEK_DEMO", "true")
        how = []
    assert main(["--check-config", "--namespaces", "demo-prod", *how]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("demo mode: checking the built-in simulated API at http://127.0.0.1:")
    assert [line.split(";")[0] for line in out[1:]] == ["demo-prod: ok"]


@pytest.mark.parametrize(("overrides", "demo"), [({"demo": "true"}, "true"), ({"api_key": API_KEY}, "false")])
def test_build_info_says_whether_the_data_is_the_demos(overrides: dict[str, str], demo: str) -> None:
    settings = load_settings(**overrides)
    client = MixpeekClient(httpx.AsyncClient(), lambda: SecretStr(API_KEY))  # never used: no poll runs
    registry = CollectorRegistry()
    registry.register(build_exposition(settings, build_poller(settings, client, 30.0)))
    (labels,) = select(parse_exposition(generate_latest(registry).decode()), "mixpeek_exporter_build_info")
    assert dict(labels)["demo"] == demo


# Header values: refused at start, not left to kill a poll loop


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--namespaces", "prød"], "MIXPEEK_NAMESPACES"),
        (["--namespaces", "prod,st\x07ging"], "MIXPEEK_NAMESPACES"),
        (["--api-key", "sk_ünïcode_key"], "MIXPEEK_API_KEY"),
        (["--api-key", "sk_control\x01key"], "MIXPEEK_API_KEY"),
        (["--api-key", "sk_inner space"], "MIXPEEK_API_KEY"),
    ],
    ids=["ns-non-ascii", "ns-control", "key-non-ascii", "key-control", "key-inner-space"],
)
def test_a_header_unfit_namespace_or_key_exits_2(
    argv: list[str], setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(
        ["--api-url", "http://127.0.0.1:9", "--api-key", API_KEY, "--namespaces", "prod", *argv], capsys
    )
    assert f"{setting}: " in err
    for part in ("ünïcode", "sk_control", "sk_inner"):
        assert part not in err  # the key is never quoted


def test_a_header_unfit_key_from_the_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MIXPEEK_API_KEY", "sk_ünïcode_key")
    err = refused(NOWHERE, capsys)
    assert "MIXPEEK_API_KEY: has characters an API key cannot have" in err
    assert "ünïcode" not in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{API_KEY}\nsk_second_line\n", "has more than one line"),
        (f"{API_KEY} trailing-words\n", "has whitespace inside the key"),
        ("sk_ünïcode_key\n", "has characters an API key cannot have"),
    ],
    ids=["second-line", "inner-space", "non-ascii"],
)
def test_a_key_file_unfit_for_a_header_exits_2_without_quoting_it(
    content: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(content)
    err = refused(["--api-key-file", str(key_file), *NOWHERE], capsys)
    assert f"MIXPEEK_API_KEY_FILE: {key_file} {problem}" in err
    assert API_KEY not in err
    assert "sk_second_line" not in err
    assert "ünïcode" not in err


# Config edges


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--max-requests-per-second", "inf"], "MIXPEEK_MAX_REQUESTS_PER_SECOND"),
        (["--max-requests-per-second", "nan"], "MIXPEEK_MAX_REQUESTS_PER_SECOND"),
        (["--poll-interval", "nan"], "MIXPEEK_POLL_INTERVAL"),
        (["--poll-interval", "inf"], "MIXPEEK_POLL_INTERVAL"),
        (["--request-timeout", "nan"], "MIXPEEK_REQUEST_TIMEOUT"),
        (["--histogram-buckets", "1,nan"], "MIXPEEK_HISTOGRAM_BUCKETS"),
        (["--poll-interval", "1e-9"], "MIXPEEK_POLL_INTERVAL"),
        (["--poll-interval", "0.5"], "MIXPEEK_POLL_INTERVAL"),
        (["--poll-interval", "86401"], "MIXPEEK_POLL_INTERVAL"),
        (["--request-timeout", "0.01"], "MIXPEEK_REQUEST_TIMEOUT"),
        (["--request-timeout", "301"], "MIXPEEK_REQUEST_TIMEOUT"),
        *[
            ([f"--{name.replace('_', '-')}", pattern], f"MIXPEEK_{name.upper()}")
            for name in ("namespace_allow", "namespace_deny", "task_type_allow", "task_type_deny")
            for pattern in ("a{99999999999}", "(" * 100_000 + ")" * 100_000, "(")
        ],
    ],
)
def test_a_setting_at_its_edge_exits_2_with_one_line(
    argv: list[str], setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert f"{setting}: " in refused(["--demo", *argv], capsys)


def test_poll_interval_and_timeout_accept_their_bounds() -> None:
    for interval, timeout in ((1, 0.1), (86400, 300)):
        settings = load_settings(demo="true", poll_interval=str(interval), request_timeout=str(timeout))
        assert (settings.poll_interval, settings.request_timeout) == (interval, timeout)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "{}\n", "basic_auth_users: {}\n"])
def test_a_web_config_that_configures_nothing_exits_2(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(content)
    assert "MIXPEEK_WEB_CONFIG_FILE (" in refused(["--demo", "--web-config-file", str(web)], capsys)
