"""The Python under deploy/ (the generators and the image's runtime-tree script) is type-checked as strictly
as the exporter. It stays out of pyproject's mypy `packages`: each file runs as a script (`python
deploy/grafana/build.py`) and two are named build.py, which --explicit-package-bases tells apart."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO


@pytest.mark.slow
def test_deploy_scripts_pass_mypy_strict() -> None:
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "deploy").rglob("*.py"))
    assert len(files) >= 3
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--explicit-package-bases", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
