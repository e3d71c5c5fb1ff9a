"""The reference in docs/ is checked against the code, so a new setting or metric cannot go undocumented, and
every relative link of the Markdown files points at a file and a heading that exist."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostile import RewriteJson
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support import Exporter

from exporter.api import BATCHES_LIST
from exporter.cli import _shown_default
from exporter.config import Settings, env_name
from exporter.metrics import METRICS
from exporter.simulator import World
from exporter.simulator.testing import FakeClock, SimulatorTestServer
from exporter.webconfig import HTTPServerConfig, WebConfig
from exporter.webreload import LiveWebConfig

REPO = Path(__file__).parent.parent
DOCS = REPO / "docs"
REGENERATE = "run: PYTHONPATH=. python docs/update_tables.py"


def table_rows(doc: Path, first_header: str) -> list[list[str]]:
    lines = doc.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_configuration_table_matches_settings() -> None:
    documented = {row[0]: row for row in table_rows(DOCS / "configuration.md", "env var")}
    expected = {env_name(name): name for name in Settings.model_fields}
    assert set(documented) == set(expected), REGENERATE
    for env, name in expected.items():
        assert documented[env][1] == f"--{name.replace('_', '-')}"
        assert documented[env][3] == _shown_default(name), env


def test_metrics_table_matches_code() -> None:
    documented = {
        row[0]: (row[1], tuple(label.strip() for label in row[2].split(",")))
        for row in table_rows(DOCS / "metrics.md", "name")
    }
    assert documented == {name: (kind, labels) for name, kind, labels, _ in METRICS}, REGENERATE


MARKDOWN = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "deploy/helm/mixpeek-exporter/README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(doc: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation other than - and _ dropped, spaces made hyphens."""
    # A `# comment` in a code block is no heading.
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }


def test_relative_links_reach_a_file_and_heading() -> None:
    """The reference moved from the README into docs/: a link to a moved or renamed section fails here."""
    broken = []
    for doc in [*MARKDOWN, *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists() or (anchor and anchor not in anchors(linked)):
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_readme_starts_with_the_two_commands_ci_runs() -> None:
    """The README's first block installs and runs the demo, then every test, with the very command of CI."""
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/mixpeek-exporter --demo",
        "bash tests/run.sh",
    ]
    assert (REPO / ".ci" / "run").read_text().splitlines()[-1] == "exec bash tests/run.sh"


async def test_exposition_has_exactly_the_documented_families(
    clock: FakeClock,
    world: World,
    api: SimulatorTestServer,
    make_exporter: Callable[..., Exporter],
    tmp_path: Path,
) -> None:
    task_id = world.create_task("prod", "thumbnail", status="PROCESSING")
    world.create_task("prod", "thumbnail", status="PENDING")
    batch_id = world.create_batch("prod", status="PROCESSING")
    world.create_batch("prod", status="PENDING")

    def impossible_count(page: dict[str, Any]) -> None:  # so mixpeek_exporter_invalid_values_total shows
        page["results"][0]["failed_object_count"] = -1

    exporter = make_exporter(
        api,
        namespaces=("prod", "ghost"),
        state_file=tmp_path / "state.json",
        batches=True,
        transport=RewriteJson(BATCHES_LIST, impossible_count),
    )
    await exporter.poll()
    await exporter.poller.flush()
    world.set_status(task_id, "FAILED")
    world.set_batch_status(batch_id, "FAILED", failed_objects=3, failure_category="timeout")
    clock.advance(30)
    await exporter.poll()
    # With MIXPEEK_WEB_CONFIG_FILE, the web config's reload counts follow (cli.build_exposition).
    web = LiveWebConfig(WebConfig(http_server_config=HTTPServerConfig(headers={"X-Frame-Options": "deny"})))
    text = exporter.exposition() + generate_latest(web).decode()
    exposed = {
        (f.name + ("_total" if f.type == "counter" else ""), f.type, tuple(sorted(_labels(f))))
        for f in text_string_to_metric_families(text)
    }
    documented = {(name, kind, tuple(sorted(labels))) for name, kind, labels, _ in METRICS}
    assert exposed == documented


def _labels(family: Metric) -> set[str]:
    return {label for sample in family.samples for label in sample.labels if label != "le"}
