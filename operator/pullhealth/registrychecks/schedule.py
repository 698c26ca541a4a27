"""One sleeping asyncio task per watched object, woken by its watch events.

This is the one scheduler of all RegistryChecks: a task sleeps until its object's next
check is due (or its object changes), so N RegistryChecks at rest wake about N/interval
times a second, not once per object every few seconds (bench/registrychecks.py).

kopf's timers and daemons always put a finalizer on the object (kopf stops them before
letting the object go), so with the operator stopped a ``kubectl delete`` would hang. A
plain task fed by ``@kopf.on.event`` needs no finalizer: the DELETED event cancels it.
https://github.com/nolar/kopf/issues/1074
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Logger = logging.LoggerAdapter[Any] | logging.Logger
Step = Callable[[Mapping[str, Any], Logger], Awaitable[float | None]]
ERROR_DELAY = 30.0


@dataclass
class _Entry:
    body: Mapping[str, Any]
    logger: Logger
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Loops:
    """Runs ``step(body, logger)`` per object: at once, then after the delay it returns
    (None: only when woken), or earlier when a new event for the object arrives.
    ``on_wake`` is called before each step (the wake-up metric)."""

    def __init__(self, step: Step, on_wake: Callable[[], None] = lambda: None) -> None:
        self._step = step
        self._on_wake = on_wake
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def poke(self, key: str, body: Mapping[str, Any], logger: Logger) -> None:
        """The object changed (or was listed): remember its body and run the step soon."""
        entry = self._entries.get(key)
        if entry is not None and entry.task is not None and not entry.task.done():
            entry.body, entry.logger = body, logger
            entry.wake.set()
            return
        entry = _Entry(body, logger)
        # Created inside the handler: the task inherits kopf's context (its event queue).
        entry.task = asyncio.create_task(self._run(entry), name=f"pullhealth loop {key}")
        self._entries[key] = entry

    def stop(self, key: str) -> None:
        """The object is gone: cancel its task (a check in flight is abandoned)."""
        entry = self._entries.pop(key, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()

    async def stop_all(self) -> None:
        """Cancel every task and wait for them (operator shut-down)."""
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        self._entries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, entry: _Entry) -> None:
        while True:
            entry.wake.clear()
            self._on_wake()
            try:
                delay = await self._step(entry.body, entry.logger)
            except Exception as exc:  # a bug must not end the schedule of this object
                entry.logger.exception("check failed unexpectedly, retried in %ds: %s", ERROR_DELAY, exc)
                delay = ERROR_DELAY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.wake.wait(), delay)
