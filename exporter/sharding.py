"""Which namespaces this replica polls: its shard of a stable hash, narrowed by allow and deny regexes.

Pure and tiny on purpose: every replica evaluates the same function on the same namespace names (the values
of the `namespace` label) and must get the same answer, with no coordinator between them.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

_MULTIPLIER = 2862933555777941757  # the 64-bit linear congruential step of jump consistent hash
_U64 = 2**64


@functools.lru_cache(maxsize=4096)  # organization scope asks once per task, for a few hundred names
def shard_of(namespace: str, total_shards: int) -> int:
    """The shard, 0..total_shards-1, that polls `namespace`.

    Not Python's `hash()`: it is salted per process (PYTHONHASHSEED), so two replicas, or one replica before
    and after a restart, would disagree. The key is the first 8 bytes of the name's BLAKE2b digest, the same
    everywhere and forever; jump consistent hash (Lamping and Veach, https://arxiv.org/abs/1406.2294) turns it
    into a shard so that going from N to N+1 shards moves only 1/(N+1) of the namespaces (each move is a new
    counter baseline on its new owner), where `key % N` would move almost all of them.
    """
    if total_shards < 1:
        raise ValueError(f"total_shards must be at least 1, not {total_shards}")
    key = int.from_bytes(hashlib.blake2b(namespace.encode(), digest_size=8).digest(), "big")
    shard, candidate = -1, 0
    while candidate < total_shards:
        shard = candidate
        key = (key * _MULTIPLIER + 1) % _U64
        candidate = int((shard + 1) * (2**31 / ((key >> 33) + 1)))
    return shard


@dataclass(frozen=True)
class NamespaceFilter:
    """The namespaces this replica owns: those of its shard that fully match `allow` and not `deny`.

    The default owns every namespace. Patterns are strings (compiled once by `re`'s own cache), so the plan
    stays printable and comparable.
    """

    shard: int = 0
    total_shards: int = 1
    allow: str | None = None
    deny: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.total_shards:
            raise ValueError(f"shard {self.shard} is out of range for {self.total_shards} shards")

    def owns(self, namespace: str) -> bool:
        return (
            (self.total_shards == 1 or shard_of(namespace, self.total_shards) == self.shard)
            and (self.allow is None or re.fullmatch(self.allow, namespace) is not None)
            and (self.deny is None or re.fullmatch(self.deny, namespace) is None)
        )


ALL_NAMESPACES = NamespaceFilter()
"""The filter of an unsharded exporter without allow or deny: it owns every namespace."""


def pod_ordinal(pod_name: str) -> int | None:
    """The ordinal of a StatefulSet pod from its name (`mixpeek-exporter-2` -> 2), or None without one.

    kube-state-metrics shards a StatefulSet by ordinal the same way. The name comes from the downward API
    (metadata.name): the `apps.kubernetes.io/pod-index` label would do too, but only from Kubernetes 1.28, and
    the image has no shell to parse anything itself.
    """
    match = re.search(r"-([0-9]+)\Z", pod_name)
    return int(match.group(1)) if match else None
