# syntax=docker/dockerfile:1
# The exporter's image. Build:  docker build -t mixpeek-exporter .
# Without a registry (CI here): deploy/build-image.sh builds it with buildah on a local base (--build-arg BASE=...).

# The official slim Python image, pinned by version. Both stages use it: the runtime tree copied out of the build
# stage must come from the same interpreter build the wheels were made for.
ARG BASE=python:3.12.11-slim-bookworm

FROM ${BASE} AS build
# Optional: a package index mirror, and the CA bundle of a TLS-intercepting proxy (mounted by the build). They
# only reach the build stage's RUN steps, never the final image.
ARG PIP_INDEX_URL
ARG PIP_CERT
# Paths are variables so tests/deploy/test_image.py can run these same RUN steps outside a container.
ENV WHEELS=/wheels VENV=/opt/venv ROOTFS=/rootfs \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# 1. Wheels of every dependency and of the build backend at the versions and sha256 hashes of the lock, from the
#    index: the only step that needs the network, cached until the lock changes. pip refuses a file whose hash
#    the lock does not list, and a dependency the lock lacks (docs/deploy.md says how to refresh it).
COPY deploy/image/requirements.lock deploy/image/
RUN python3 -m pip wheel --require-hashes --wheel-dir "$WHEELS" -r deploy/image/requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ exporter/
COPY deploy/image/runtime_tree.py deploy/image/
# 2. The project's wheel, built offline with the locked setuptools, and a venv installed from the wheels alone
#    (the locked ones hash-checked again; `pip check` proves the set complete). pip and setuptools leave it again:
#    nothing installs at run time.
RUN python3 -m pip wheel --no-index --find-links "$WHEELS" --no-deps --wheel-dir "$WHEELS" . \
    && python3 -m venv "$VENV" \
    && "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" --require-hashes \
        -r deploy/image/requirements.lock \
    && "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" --no-deps mixpeek-exporter \
    && "$VENV/bin/python" -m pip check \
    && "$VENV/bin/python" -m pip uninstall --yes --quiet pip setuptools \
    && "$VENV/bin/python" -m compileall -q "$VENV/lib" \
    && "$VENV/bin/mixpeek-exporter" --help >/dev/null
# 3. The interpreter, its standard library, the venv and their shared libraries, copied into an empty root.
RUN python3 deploy/image/runtime_tree.py "$VENV" "$ROOTFS"

# No shell, no package manager, no pip: only what the exporter runs on.
FROM scratch
COPY --from=build /rootfs /
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mixpeek-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Mixpeek asynchronous tasks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch (runtime copied from the build stage's BASE)"
# The venv's scripts come first; no .pyc writes (the root filesystem is read-only); logs unbuffered as JSON lines.
ENV PATH=/opt/venv/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MIXPEEK_LISTEN=0.0.0.0:9877 \
    MIXPEEK_LOG_FORMAT=json
# A numeric uid:gid, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532
WORKDIR /
EXPOSE 9877
ENTRYPOINT ["mixpeek-exporter"]
