"""Pods from one list-and-watch per scope, filtered as they arrive: only failing or annotated
pods reach the event loop.

kopf queued every pod event of the cluster (a worker, a logger and a deep copy per event)
before our cheap filter could drop it: kubelet rewriting the status of a thousand pods in
back-off cost 1.7 ms of the operator's CPU per update, and a restart held every pod of a
10k-pod cluster at once. Here a thread per watched scope reads the API server's answer as
plain JSON, page by page (``limit``) and line by line, applies :func:`podcheck.is_relevant`
and hands only the pods that matter (and the last event of one that stopped mattering) to
the loop. The loop side runs one handler at a time per pod, always with the newest body.

Bounded: pages of ``PAGE`` pods, a watch ends after ``WATCH_SECONDS`` and is resumed from
its resourceVersion, a failure waits 1 s doubling to ``MAX_BACKOFF`` and lists again.

The same reader serves any other kind through a ``lister`` (the peering objects of leader
election: :mod:`pullhealth.handlers.standby`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from pullhealth import podcheck

log = logging.getLogger(__name__)

PAGE = 500
WATCH_SECONDS = 300
REQUEST_TIMEOUT = 30.0
MAX_BACKOFF = 30.0

Pod = Mapping[str, Any]
# (event type: "LISTED", "ADDED", "MODIFIED" or "DELETED", the pod's JSON)
Deliver = Callable[[str, Pod], None]
# (scope: a namespace or None for all, **list/watch arguments) -> the raw (unparsed) answer
Lister = Callable[..., Any]


def _uid(obj: Pod) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def core_lister(api: kubernetes.client.ApiClient, plural: str = "pods") -> Lister:
    """Lists (or watches, with ``watch=True``) pods, service accounts (of one namespace or
    of all) or nodes (cluster-scoped: the scope is ignored)."""
    core = kubernetes.client.CoreV1Api(api)
    names = {
        "pods": ("list_pod_for_all_namespaces", "list_namespaced_pod"),
        "serviceaccounts": ("list_service_account_for_all_namespaces", "list_namespaced_service_account"),
        "nodes": ("list_node", ""),
    }[plural]
    every: Callable[..., Any] = getattr(core, names[0])
    one: Callable[..., Any] | None = getattr(core, names[1]) if names[1] else None

    def call(scope: str | None, **kwargs: Any) -> Any:
        if scope is None or one is None:
            return every(_preload_content=False, **kwargs)
        return one(scope, _preload_content=False, **kwargs)

    return call


def in_namespaces(patterns: Sequence[str]) -> Callable[[Pod], bool]:
    """Whether an object's namespace matches one of the globs (``--namespace 'team-*'``)."""

    def matches(obj: Pod) -> bool:
        namespace = str((obj.get("metadata") or {}).get("namespace") or "")
        return any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    return matches


class _Gone(Exception):
    """The watch's resourceVersion expired (410): list again."""


class PodStream:
    """Reads pods (or, with ``lister``, another kind) on threads and delivers the relevant ones.

    Args:
        api: the API client.
        namespaces: watched namespaces; empty = cluster-wide.
        deliver: called on the reading thread with each relevant event (thread-safe).
        relevant: the filter (failing or annotated).
        lister: lists or watches one scope (default: pods).
        what: what is read, for the log (its RBAC resource name).
        without: what the operator does without it, for the log.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespaces: Sequence[str],
        deliver: Deliver,
        relevant: Callable[[Pod], bool] = podcheck.is_relevant,
        lister: Lister | None = None,
        what: str = "pods",
        without: str = "failing pods are not diagnosed until it is granted",
    ) -> None:
        self._what, self._without = what, without
        self._call = lister or core_lister(api)
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._deliver = deliver
        self._relevant = relevant
        self._stop = threading.Event()
        self._listed: set[str | None] = set()
        self.forbidden = False  # a list or watch was refused (403)
        self.events = 0  # pod events read (for tests and benchmarks)

    @property
    def ever_synced(self) -> bool:
        """Every scope was listed at least once (what was delivered is the whole state)."""
        return self._listed >= set(self._scopes)

    @property
    def settled(self) -> bool:
        """Listed, or refused by RBAC (then nothing will come: do not wait for it)."""
        return self.forbidden or self.ever_synced

    def start(self) -> None:
        """One daemon thread per scope."""
        for scope in self._scopes:
            threading.Thread(
                target=self._run, args=(scope,), name=f"pods-{scope or 'all'}", daemon=True
            ).start()

    def stop(self) -> None:
        """The threads end at their next event or watch time-out."""
        self._stop.set()

    def _run(self, scope: str | None) -> None:
        known: set[str] = set()  # uids delivered and still relevant
        backoff = 1.0
        forbidden_reported = False
        while not self._stop.is_set():
            try:
                version = self._list(scope, known)
                self._listed.add(scope)
                backoff = 1.0
                while not self._stop.is_set():
                    version = self._watch(scope, version, known)
            except _Gone:
                continue  # list again at once
            except ApiException as exc:
                if exc.status == 403:
                    self.forbidden = True
                if exc.status == 403 and not forbidden_reported:
                    forbidden_reported = True
                    log.error("cannot list/watch %s (RBAC: grant list and watch on %s): %s; %s",
                              self._what, self._what, exc.reason, self._without)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:  # the connection: an outage is reported by the API calls
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self, scope: str | None, known: set[str]) -> str:
        """List page by page; deliver the relevant pods; forget what is gone. The version."""
        seen: set[str] = set()
        token = ""
        version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE, "_request_timeout": REQUEST_TIMEOUT}
            if token:
                kwargs["_continue"] = token
            response = self._call(scope, **kwargs)
            try:
                page = json.loads(response.read())
            finally:
                response.release_conn()
            for pod in page.get("items") or []:
                self.events += 1
                # A list's items do not repeat these: "PodList" -> "Pod".
                pod.setdefault("apiVersion", page.get("apiVersion"))
                pod.setdefault("kind", str(page.get("kind") or "").removesuffix("List"))
                uid = _uid(pod)
                if uid and (self._relevant(pod) or uid in known):
                    seen.add(uid)
                    self._deliver("LISTED", pod)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = str(meta.get("continue") or "")
            del page
            if not token:
                break
        for uid in known - seen:  # deleted, or recovered and cleared, while we did not watch
            self._deliver("DELETED", {"metadata": {"uid": uid}})
        known.clear()
        known.update(seen)
        return version

    def _watch(self, scope: str | None, version: str, known: set[str]) -> str:
        """One watch request, until it ends; the version to resume from."""
        response = self._call(
            scope,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(REQUEST_TIMEOUT, WATCH_SECONDS + REQUEST_TIMEOUT),
        )
        try:
            for kind, pod in self._events(response):
                if self._stop.is_set():
                    break
                if kind == "ERROR":
                    if int(pod.get("code") or 0) == 410:
                        raise _Gone()
                    raise ApiException(status=int(pod.get("code") or 500), reason=str(pod.get("message")))
                version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                uid = _uid(pod)
                if not uid:
                    continue
                if kind == "DELETED":
                    if uid in known:
                        known.discard(uid)
                        self._deliver(kind, pod)
                elif self._relevant(pod):
                    known.add(uid)
                    self._deliver(kind, pod)
                elif uid in known:  # stopped mattering: its handler sees the last state
                    known.discard(uid)
                    self._deliver(kind, pod)
        finally:
            response.release_conn()
        return version

    @staticmethod
    def _events(response: Any) -> Iterator[tuple[str, Pod]]:
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("object"), dict):
                yield str(event.get("type") or ""), event["object"]


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

    def _put(self, kind: str, pod: Pod) -> None:
        uid = _uid(pod)
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
