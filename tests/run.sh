#!/usr/bin/env bash
# Install everything the tests need (a venv with the package and its test extras; Debian's
# prometheus package for promtool), then lint, type-check and run every test.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k state`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1 \
    || ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing Debian's prometheus, prometheus-alertmanager, buildah and debootstrap packages ..."
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root="sudo"
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends \
        prometheus prometheus-alertmanager buildah debootstrap >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/hadolint Dockerfile
.venv/bin/pytest "$@"
