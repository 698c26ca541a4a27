"""Pods from the operator's own list-and-watch, filtered as they arrive: only failing or
annotated pods reach the event loop, one handler at a time per pod.

kopf queued every pod event of the cluster (a worker, a logger and a deep copy per event)
before our cheap filter could drop it: kubelet rewriting the status of a thousand pods in
back-off cost 1.7 ms of the operator's CPU per update, and a restart held every pod of a
10k-pod cluster at once. Here :class:`pullhealth.kube.listwatch.ListWatch` reads pods as plain
JSON on a thread per scope and applies :func:`podcheck.is_relevant` there; :class:`PerPod`
runs the handler on the loop, one at a time per pod, always with the newest body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import kubernetes

from pullhealth.kube.listwatch import Deliver, ListWatch, core_lister, uid_of
from pullhealth.pods import podcheck

log = logging.getLogger(__name__)

Pod = Mapping[str, Any]


def pod_stream(
    api: kubernetes.client.ApiClient,
    namespaces: Sequence[str],
    deliver: Deliver,
    relevant: Callable[[Pod], bool] = podcheck.is_relevant,
) -> ListWatch:
    """Pods of the watched namespaces (empty: all), only the relevant ones delivered."""
    return ListWatch(
        core_lister(api, "pods"), namespaces, deliver, relevant=relevant,
        what="pods", without="failing pods are not diagnosed until it is granted",
    )


class PerPod:
    """Runs ``handle(kind, pod)`` on the event loop, one at a time per pod uid, with the
    newest event: events arriving while a pod's handler runs replace each other.

    Args:
        handle: the pod handler.
        loop: the loop the handlers run on (events come from reading threads).
    """

    def __init__(
        self, handle: Callable[[str, Pod], Awaitable[None]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._handle = handle
        self._loop = loop
        self._latest: dict[str, tuple[str, Pod]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    def deliver(self, kind: str, pod: Pod) -> None:
        """Thread-safe: queue the event for its pod."""
        self._loop.call_soon_threadsafe(self._put, kind, pod)

    def __len__(self) -> int:
        return len(self._running)

    def put(self, kind: str, pod: Pod) -> None:
        """On the loop: queue the event for its pod."""
        self._put(kind, pod)

    def nudge(self, kind: str, pod: Pod) -> None:
        """On the loop: handle ``pod`` again unless a newer event of it is already queued."""
        if uid_of(pod) not in self._latest:
            self._put(kind, pod)

    def _put(self, kind: str, pod: Pod) -> None:
        uid = uid_of(pod)
        self._latest[uid] = (kind, pod)
        if uid not in self._running:
            self._running[uid] = self._loop.create_task(self._run(uid), name=f"pullhealth pod {uid}")

    async def _run(self, uid: str) -> None:
        try:
            while uid in self._latest:
                kind, pod = self._latest.pop(uid)
                try:
                    await self._handle(kind, pod)
                except Exception as exc:  # a bug must not end this pod's handling for good
                    log.exception("pod handler failed: %s", exc)
        finally:
            self._running.pop(uid, None)

    async def stop(self) -> None:
        """Cancel the running handlers and wait for them."""
        tasks = list(self._running.values())
        self._latest.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
