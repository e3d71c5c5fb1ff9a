"""The command line: settings from env and flags, one-line errors with exit 2, --check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import API_KEY

from exporter.apikey import ApiKeySource
from exporter.cli import build_parser, main
from exporter.config import Settings, env_name, load_settings
from exporter.simulator.testing import SimulatorTestServer


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--page-size", "5000"], "MIXPEEK_PAGE_SIZE"),
        (["--poll-interval", "0"], "MIXPEEK_POLL_INTERVAL"),
        (["--api-url", "api.mixpeek.com"], "MIXPEEK_API_URL"),
        (["--api-key-file", "/nonexistent/key"], "MIXPEEK_API_KEY_FILE"),
        (["--listen", "localhost"], "MIXPEEK_LISTEN"),
        (["--histogram-buckets", "5,1"], "MIXPEEK_HISTOGRAM_BUCKETS"),
        (["--scope", "galaxy"], "MIXPEEK_SCOPE"),
        (["--state-file", "/nonexistent/dir/state.json"], "MIXPEEK_STATE_FILE"),
        (["--web-config-file", "/nonexistent/web.yml"], "MIXPEEK_WEB_CONFIG_FILE"),
        (["--max-retries", "-1"], "MIXPEEK_MAX_RETRIES"),
    ],
)
def test_bad_setting_exits_2_with_one_line(
    argv: list[str], setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert setting in err
    assert "Traceback" not in err


def test_bad_env_var_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    env = {"MIXPEEK_PAGE_SIZE": "5000", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "exporter"], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stderr.startswith("mixpeek-exporter: invalid configuration: MIXPEEK_PAGE_SIZE")
    assert run.stderr.count("\n") == 1
    assert run.stdout == ""


def test_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXPEEK_DEMO", "true")
    monkeypatch.setenv("MIXPEEK_PAGE_SIZE", "10")
    monkeypatch.setenv("MIXPEEK_NAMESPACES", "prod, staging,")
    assert load_settings().page_size == 10
    assert load_settings().namespaces == ["prod", "staging"]
    assert load_settings(page_size="20").page_size == 20


def test_key_file_is_read_and_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    settings = load_settings(api_key_file=str(key_file))
    assert ApiKeySource(path=settings.api_key_file)().get_secret_value() == API_KEY
    assert not settings.demo
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(load_settings(api_key=API_KEY))


def test_help_lists_every_setting_with_env_var_and_default() -> None:
    text = " ".join(build_parser().format_help().split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert env_name(name) in text
    assert "default: 30.0" in text
    assert "default: 0.0.0.0:9877" in text


def check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The exit code and each line up to its first `;` (what follows `ok;` is the API's behaviour)."""
    code = main(["--check-config", "--log-format", "json", *argv])
    return code, [line.split(";")[0] for line in capsys.readouterr().out.splitlines()]


def test_check_config_one_line_per_namespace(
    api: SimulatorTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(["--api-url", api.url, "--api-key", API_KEY, "--namespaces", "prod,ghost"], capsys)
    assert code == 1
    assert lines[0] == "prod: ok"
    assert lines[1].startswith("ghost: namespace unknown (HTTP 404")
    code, lines = check(["--api-url", api.url, "--api-key", API_KEY, "--namespaces", "prod,staging"], capsys)
    assert (code, lines) == (0, ["prod: ok", "staging: ok"])


def test_check_config_discovers_and_reports_a_rejected_key(
    api: SimulatorTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(["--api-url", api.url, "--api-key", API_KEY], capsys)
    assert (code, lines) == (0, ["namespace discovery: ok, 2 namespaces", "prod: ok", "staging: ok"])
    code, lines = check(["--api-url", api.url, "--api-key", "sk_revoked", "--namespaces", "prod"], capsys)
    assert code == 1
    assert lines[0].startswith("prod: key rejected (HTTP 401")
    assert "sk_revoked" not in "".join(lines)


def test_check_config_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(
        ["--api-url", "http://127.0.0.1:9", "--api-key", API_KEY, "--namespaces", "prod"], capsys
    )
    assert code == 1
    assert lines[0].startswith("prod: unreachable")
