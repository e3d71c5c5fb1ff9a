#!/usr/bin/env bash
# Build the exporter's image from the repository's Dockerfile with buildah (no Docker daemon needed), then, with
# --smoke, run it and scrape /metrics from its demo.
#
#   deploy/build-image.sh                          # base: the Dockerfile's (python:3.X-slim) from a registry
#   deploy/build-image.sh --local-base --smoke     # base: a Debian + python3 root made here with debootstrap
#   deploy/build-image.sh --base IMAGE --tag TAG   # any other base and tag
#
# --local-base is for machines that reach Debian's mirror but no container registry (CI here): debootstrap builds a
# minimal bookworm with python3, it is imported as localhost/mixpeek-base:bookworm once and reused after.
# A PIP_CERT (CA bundle of a TLS-intercepting proxy) or PIP_INDEX_URL set in the environment is handed to the
# build stage only. Needs root (or a rootless buildah set-up), buildah, and for --local-base debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

base=""
tag="localhost/mixpeek-exporter:dev"
local_base=0
smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --local-base) local_base=1; shift ;;
        --smoke) smoke=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

LOCAL_BASE="localhost/mixpeek-base:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

build_local_base() {
    if buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        echo "local base $LOCAL_BASE already built"
        return
    fi
    local root
    root="$(mktemp -d)"
    echo "debootstrap: bookworm with python3 into $root ..."
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$root.tar" .
    local ctr
    ctr="$(buildah from scratch)"
    buildah add "$ctr" "$root.tar" / >/dev/null
    buildah config --cmd python3 "$ctr"
    buildah commit --quiet "$ctr" "$LOCAL_BASE" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -f "$root.tar"
    rm -rf "$root"
}

if [ "$local_base" -eq 1 ]; then
    build_local_base
    base="$LOCAL_BASE"
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
args=(--isolation chroot --layers -f Dockerfile -t "$tag" --build-arg "VERSION=$version"
      --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
[ -n "$base" ] && args+=(--build-arg "BASE=$base")
# pip's CA bundle on this host (environment, else /etc/pip.conf): a TLS-intercepting proxy's CA lives there.
cert="${PIP_CERT:-}"
if [ -z "$cert" ] && [ -f /etc/pip.conf ]; then
    cert="$(sed -n 's/^ *cert *= *//p' /etc/pip.conf | head -n 1)"
fi
if [ -n "$cert" ] && [ -f "$cert" ]; then
    args+=(--volume "$cert:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}")
echo "buildah bud ${args[*]} ."
buildah bud "${args[@]}" .

[ "$smoke" -eq 1 ] || exit 0

# Smoke test: the image's own entrypoint and user, host network, the demo (--demo); stopped and removed after.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ctr="$(buildah from "$tag")"
log="$(mktemp)"
cleanup() {
    if [ -n "${run_pid:-}" ]; then
        kill -TERM "$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true  # buildah run answers SIGTERM with status 1
    fi
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -f "$log"
}
trap cleanup EXIT

user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")"
[ "$user" = "65532:65532" ] || { echo "image user is '$user', want 65532:65532" >&2; exit 1; }
if buildah run --isolation chroot "$ctr" -- /bin/sh -c true >/dev/null 2>&1; then
    echo "the image has a shell; it should not" >&2
    exit 1
fi

buildah run --isolation chroot --network host "$ctr" -- mixpeek-exporter --demo --listen "127.0.0.1:$port" >"$log" 2>&1 &
run_pid=$!
python3 - "$port" <<'EOF' || { cat "$log" >&2; exit 1; }
"""Wait (30 s at most) until /readyz answers 200, then check /metrics has the demo's namespaces up."""
import sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as answer:
            if answer.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit("the exporter in the image never became ready")
    time.sleep(0.2)
text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
up = [line for line in text.splitlines() if line.startswith("mixpeek_up{")]
assert len(up) == 3 and all(line.endswith(" 1.0") for line in up), up
print(f"image {sys.argv[1]}: ready, {len(text.splitlines())} lines of metrics, {len(up)} namespaces up")
EOF
echo "smoke test passed: $tag"
