"""Never flood a registry: one probe chain per key per interval, however many ask.

A :class:`SingleFlight` cache keyed by (registry, credential fingerprint, image, options):
concurrent callers of the same key share one running chain; later callers within the
TTL get its result; a per-registry semaphore bounds concurrent chains to one registry.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 4096


@dataclass
class _Entry(Generic[T]):
    task: asyncio.Future[T]
    expires: float


class SingleFlight(Generic[T]):
    """Share results of identical work for ``ttl`` seconds.

    Args:
        ttl: seconds a finished result is reused.
        per_registry: at most this many chains run at once against one registry.
        max_entries: bound on remembered keys (oldest dropped first).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        ttl: float,
        per_registry: int = 4,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.per_registry = per_registry
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self.runs = 0  # how many times work really ran (for tests and benchmarks)

    def _limit(self, registry: str) -> asyncio.Semaphore:
        if registry not in self._limits:
            self._limits[registry] = asyncio.Semaphore(self.per_registry)
        return self._limits[registry]

    async def get(self, registry: str, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """Return the shared result for key, running ``work`` only when none is fresh.

        With ``ttl <= 0`` nothing is shared (each caller runs its own work, still within
        the per-registry bound): the naive behaviour, kept for comparison benchmarks.
        """
        if self.ttl <= 0:
            async with self._limit(registry):
                self.runs += 1
                return await work()
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and (not entry.task.done() or entry.expires > now):
            return await asyncio.shield(entry.task)

        async def run() -> T:
            async with self._limit(registry):
                self.runs += 1
                return await work()

        task: asyncio.Future[T] = asyncio.ensure_future(run())
        self._entries[key] = _Entry(task, float("inf"))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                current = self._entries.get(key)
                if current is not None and current.task is task:
                    current.expires = self._clock() + self.ttl

    def forget(self, key: Hashable) -> None:
        """Drop a key (e.g. when its owner is deleted)."""
        self._entries.pop(key, None)
