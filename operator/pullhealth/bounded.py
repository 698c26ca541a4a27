"""The one bounded map: what the operator remembers per object never grows without limit.

:class:`BoundedDict` keeps at most ``limit`` keys; setting a key makes it the newest, and
the oldest are dropped first when a new one would exceed the limit (a pod deleted while the
operator was down, a uid never seen again: forgotten in time, never a memory leak). Used
wherever a per-object dict is kept (last runs, deferred pods, RBAC back-offs, peering reads,
posted reports, tombstones); the caches with their own expiry logic (single flight, the pod
memo) evict the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(MutableMapping[K, V]):
    """A dict of at most ``limit`` keys; the least recently set are dropped first.

    Args:
        limit: the most keys kept (at least 1).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.limit:
            self._data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)
