"""One operator-wide limit on running RegistryCheck chains, shared fairly by namespaces.

Every RegistryCheck run (scheduled or a recheck) takes a slot first. At most ``limit``
run at once across the operator, at most ``per_namespace`` of them for one namespace, and
when slots are scarce they go round-robin over the namespaces waiting: a namespace with a
hundred RegistryChecks (or a burst of rechecks) waits behind itself, not in front of
another namespace's one check.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class FairLimiter:
    """Slots for chains: a global limit, a per-namespace limit, round-robin waiting.

    Args:
        limit: slots in all (a callable: read when a slot is asked for, so start-up options
            apply without building the limiter again).
        per_namespace: slots one namespace may hold (default: half the limit, at least 1).
    """

    def __init__(self, limit: Callable[[], int], per_namespace: Callable[[], int] | None = None) -> None:
        self._limit = limit
        self._per_namespace = per_namespace or (lambda: max(1, self._limit() // 2))
        self.running: Counter[str] = Counter()
        # namespace -> its waiters, in the order namespaces come up for their turn.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def busy(self) -> int:
        """Slots held now."""
        return sum(self.running.values())

    @property
    def waiting(self) -> int:
        """Chains waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    def _can_run(self, namespace: str) -> bool:
        return self.busy < self._limit() and self.running[namespace] < self._per_namespace()

    @asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """Hold a slot for ``namespace`` while the block runs."""
        if namespace not in self._waiting and self._can_run(namespace):
            self.running[namespace] += 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(namespace, deque()).append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(namespace)  # granted, then cancelled before running
                else:
                    self._forget(namespace, future)
                raise
        try:
            yield
        finally:
            self._release(namespace)

    def _forget(self, namespace: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(namespace)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[namespace]

    def _release(self, namespace: str) -> None:
        self.running[namespace] -= 1
        if self.running[namespace] <= 0:
            del self.running[namespace]
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiting namespaces, one each in turn."""
        progress = True
        while progress and self._waiting and self.busy < self._limit():
            progress = False
            for namespace in list(self._waiting):
                if not self._can_run(namespace):
                    continue
                queue = self._waiting.pop(namespace)
                future = queue.popleft()
                if queue:
                    self._waiting[namespace] = queue  # to the back: the others go first
                if future.done():  # cancelled while waiting
                    progress = True
                    break
                self.running[namespace] += 1
                future.set_result(None)
                progress = True
                break
