"""Checks an Authorization header against the web config's bcrypt hashes, as exporter-toolkit does.

bcrypt is slow on purpose (tens of ms); Prometheus sends the same credentials every scrape, so each
accepted user and password is remembered, as a SHA-256 digest (never the password itself), for as long as
this object lives: a reload of the users makes a new one. An unknown user is checked against a dummy hash
of the same cost as the real ones, so that the time of a refusal does not tell which users exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading

import bcrypt
from pydantic import SecretStr

# bcrypt reads at most 72 bytes of a password: a longer one would match on its first 72 bytes alone.
MAX_PASSWORD_BYTES = 72


class BasicAuth:
    def __init__(self, users: dict[str, SecretStr]) -> None:
        self._users = {user: hashed.get_secret_value().encode() for user, hashed in users.items()}
        cost = max((_cost(hashed) for hashed in self._users.values()), default=4)
        self._dummy = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(rounds=cost))
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()
        # One bcrypt at a time, as the toolkit does: a flood of wrong passwords takes one core, not all.
        self._hashing = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, colon, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        secret = password.encode()
        if not colon or len(secret) > MAX_PASSWORD_BYTES:
            return False
        name = user.encode()
        digest = hashlib.sha256(len(name).to_bytes(4, "big") + name + secret).digest()
        with self._lock:
            if digest in self._accepted:
                return True
        hashed = self._users.get(user)
        with self._hashing:
            try:
                matches = bcrypt.checkpw(secret, hashed or self._dummy)
            except ValueError:  # a hash bcrypt cannot read: the file was checked, so never expected
                return False
        if hashed is None or not matches:
            return False
        with self._lock:
            self._accepted.add(digest)
        return True


def _cost(hashed: bytes) -> int:
    """The cost of a `$2y$10$...` hash; the dummy's is the highest of the file's."""
    try:
        return int(hashed.split(b"$")[2])
    except (IndexError, ValueError):
        return 4
