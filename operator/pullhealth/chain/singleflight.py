"""Never flood a registry: one probe chain per key per interval, however many ask.

A :class:`SingleFlight` cache keyed by (registry, credential fingerprint, image, options):
concurrent callers of the same key share one running chain; later callers within the
TTL get its result; a per-registry semaphore bounds concurrent chains to one registry,
and an optional shared semaphore bounds chains over all registries (taken only once the
registry's own slot is held, so callers queued behind a slow registry hold no shared slot).

Bounded state: an entry's lifetime starts when its run ends, whoever awaited it (a
cancelled starter does not leave it running forever); a failed result is reused for
``failure_ttl`` only (short: a transient failure must not stick for the whole interval),
and so is an exception; a registry's limiter is dropped when no chain uses or
waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 4096
# Seconds a transient failure is shared (at most the TTL): long enough to coalesce a burst
# of pods failing on one image, short enough that a recovered registry is seen soon.
DEFAULT_FAILURE_TTL = 10.0

# A caller's pacing (workload checks, :mod:`pullhealth.workloads.pacing`): a run that this
# caller *starts* (a cache miss) first awaits ``pace(registry)``, outside any slot; a cached
# or running result is returned at once. Set in the caller's context, inherited by the run's
# task; None (every other caller: failing pods, admission) is not paced.
PACE: contextvars.ContextVar[Callable[[str], Awaitable[None]] | None] = contextvars.ContextVar(
    "pullhealth_pace", default=None
)


@dataclass
class _Entry(Generic[T]):
    task: asyncio.Future[T]
    expires: float


@dataclass
class _Limit:
    semaphore: asyncio.Semaphore
    users: int = 0


class SingleFlight(Generic[T]):
    """Share results of identical work for ``ttl`` seconds.

    Args:
        ttl: seconds a finished result is reused.
        per_registry: at most this many chains run at once against one registry.
        max_entries: bound on remembered keys (oldest dropped first).
        clock: monotonic clock (injectable for tests).
        failure_ttl: seconds a result that ``is_failure`` says failed is reused (capped
            at ``ttl``).
        is_failure: tells failed results apart (default: nothing is a failure).
        shared_limit: a semaphore all chains take after their registry's slot (e.g. the
            pod workers), or None.
        on_result: called with (registry, result) once per run that returned (a fresh
            answer, not a shared one): what the registry said of its budget, say.
    """

    def __init__(
        self,
        ttl: float,
        per_registry: int = 4,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        *,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        is_failure: Callable[[T], bool] | None = None,
        shared_limit: asyncio.Semaphore | None = None,
        on_result: Callable[[str, T], None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.failure_ttl = min(failure_ttl, ttl)
        self.per_registry = per_registry
        self.max_entries = max_entries
        self.shared_limit = shared_limit
        self._clock = clock
        self._is_failure = is_failure
        self._on_result = on_result
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._limits: dict[str, _Limit] = {}
        self.runs = 0  # how many times work really ran (for tests and benchmarks)

    @property
    def registries(self) -> int:
        """How many registries have a limiter now (in use or waited for)."""
        return len(self._limits)

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def _slot(self, registry: str) -> AsyncIterator[None]:
        limit = self._limits.get(registry)
        if limit is None:
            limit = self._limits[registry] = _Limit(asyncio.Semaphore(self.per_registry))
        limit.users += 1
        try:
            async with limit.semaphore:
                if self.shared_limit is None:
                    yield
                else:
                    async with self.shared_limit:
                        yield
        finally:
            limit.users -= 1
            if limit.users == 0 and self._limits.get(registry) is limit:
                del self._limits[registry]

    async def _run(self, registry: str, work: Callable[[], Awaitable[T]]) -> T:
        pace = PACE.get()
        if pace is not None:
            await pace(registry)
        async with self._slot(registry):
            self.runs += 1
            result = await work()
        if self._on_result is not None:
            self._on_result(registry, result)
        return result

    async def get(
        self, registry: str, key: Hashable, work: Callable[[], Awaitable[T]], *, fresh: bool = False
    ) -> T:
        """Return the shared result for key, running ``work`` only when none is fresh.

        With ``ttl <= 0`` nothing is shared (each caller runs its own work, still within
        the per-registry bound): the naive behaviour, kept for comparison benchmarks.
        ``fresh`` (a recheck someone asked for): run anew even when a result is fresh or a
        run is under way; the new result is then the one shared, and ``on_result`` sees it.
        """
        if self.ttl <= 0:
            return await self._run(registry, work)
        now = self._clock()
        entry = self._entries.get(key)
        if not fresh and entry is not None and (not entry.task.done() or entry.expires > now):
            return await asyncio.shield(entry.task)

        task: asyncio.Future[T] = asyncio.ensure_future(self._run(registry, work))
        self._entries[key] = _Entry(task, float("inf"))
        self._entries.move_to_end(key)
        # The lifetime starts when the run ends, however it ends and whoever waits.
        task.add_done_callback(lambda done: self._finished(key, done))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Future[T]) -> None:
        current = self._entries.get(key)
        if current is None or current.task is not task:
            return
        if task.cancelled():
            del self._entries[key]  # nothing worth sharing; the next caller runs anew
            return
        failed = task.exception() is not None or (
            self._is_failure is not None and self._is_failure(task.result())
        )
        current.expires = self._clock() + (self.failure_ttl if failed else self.ttl)
        self._prune()

    def _prune(self) -> None:
        """Drop expired entries (bounded work: they are roughly in insertion order)."""
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.task.done() and e.expires <= now][:64]:
            del self._entries[key]

    def forget(self, key: Hashable) -> None:
        """Drop a key (e.g. when its owner is deleted)."""
        self._entries.pop(key, None)
