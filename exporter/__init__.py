"""Prometheus exporter for Mixpeek asynchronous tasks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mixpeek-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
