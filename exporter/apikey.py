"""Where the API key comes from: fixed, or a file that is re-read when it changes (a rotated Secret)."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import SecretStr

from exporter.config import read_key_file


class ApiKeySource:
    """Hands out the current key; checks the file's identity on each call (a stat), reads it when it changed.

    A file that becomes unreadable, empty or unfit for a header (a second line, a space, non-ASCII) keeps the
    last good key in use and says so once, without the content: a bad rotation never reaches a request.
    """

    def __init__(
        self,
        key: SecretStr | None = None,
        path: Path | None = None,
        *,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        if (key is None) == (path is None):
            raise ValueError("give either a key or a key file")
        self._path = path
        self._key = key
        self._stamp: tuple[int, int, int] | None = None
        self._broken = False
        self._seen: set[str] = set()
        self._log = logger or structlog.get_logger("exporter.apikey")
        if key is not None:
            self._seen.add(key.get_secret_value())
        self()

    def __call__(self) -> SecretStr:
        if self._path is not None:
            self._refresh(self._path)
        assert self._key is not None, "the first read of the key file failed"
        return self._key

    def known(self) -> set[str]:
        """Every key value this process has held, for the log redactor."""
        return set(self._seen)

    def _refresh(self, path: Path) -> None:
        try:
            info = os.stat(path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp == self._stamp:
                return
            key = read_key_file(path)
        except (OSError, ValueError) as exc:
            if self._key is None:
                raise
            if not self._broken:
                self._log.error("API key file unusable; keeping the last key", path=str(path), error=str(exc))
                self._broken = True
            return
        rotated = self._key is not None and key.get_secret_value() != self._key.get_secret_value()
        self._key, self._stamp, self._broken = key, stamp, False
        self._seen.add(key.get_secret_value())
        if rotated:
            self._log.info("API key file changed; using the new key", path=str(path))
