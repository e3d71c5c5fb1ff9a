"""Rewrite the settings table of docs/configuration.md and the metrics table of docs/metrics.md from the code
(tests/test_docs.py checks them)."""

from __future__ import annotations

from pathlib import Path

from exporter.cli import _shown_default
from exporter.config import Settings, env_name
from exporter.metrics import METRICS

DOCS = Path(__file__).resolve().parent
CONFIGURATION = DOCS / "configuration.md"
METRICS_DOC = DOCS / "metrics.md"


def replace_table(text: str, header: str, rows: list[str]) -> str:
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    end = start
    while lines[end].startswith("|"):
        end += 1
    lines[start:end] = rows
    return "\n".join(lines)


def main() -> None:
    settings = [
        f"| `{env_name(name)}` | `--{name.replace('_', '-')}` | {field.description} "
        f"| `{_shown_default(name)}` |"
        for name, field in Settings.model_fields.items()
    ]
    metrics = [
        f"| `{name}` | {kind} | {', '.join(labels)} | {text} |" for name, kind, labels, text in METRICS
    ]
    CONFIGURATION.write_text(replace_table(CONFIGURATION.read_text(), "| env var |", settings))
    METRICS_DOC.write_text(replace_table(METRICS_DOC.read_text(), "| name | type |", metrics))


if __name__ == "__main__":
    main()
