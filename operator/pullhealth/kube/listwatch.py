"""The operator's own list-and-watch: one reading thread per scope, plain JSON, filtered.

kopf queues every event of a kind (a worker, a logger and a deep copy each) before a
handler's filter can drop it; the generated client parses every answer into model
objects. Here a thread per watched scope reads the API server's answer as plain JSON,
page by page (``limit``) and line by line, applies a ``relevant`` filter and hands only
the events that matter (and the last event of an object that stopped mattering) to
``deliver``. Used for pods (:mod:`pullhealth.pods.podstream`), the workload kinds
(:mod:`pullhealth.workloads.controller`), kubelet's Events
(:mod:`pullhealth.pods.kubeletevents`), the Node and ServiceAccount mirrors and the peering
objects of leader election.

Bounded: pages of ``PAGE`` objects, a watch ends after ``WATCH_SECONDS`` and is resumed from
its resourceVersion (one ending at once waits 1 s), a failure waits 1 s doubling to
``MAX_BACKOFF`` and lists again. A refusal (RBAC) is logged once, at ERROR, with what to
grant, and retried the same way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

PAGE = 500
WATCH_SECONDS = 300
REQUEST_TIMEOUT = 30.0
MAX_BACKOFF = 30.0

Obj = Mapping[str, Any]
# (event type: "LISTED", "ADDED", "MODIFIED" or "DELETED", the object's JSON; a deletion
# found by a re-list carries only the uid)
Deliver = Callable[[str, Obj], None]
# (scope: a namespace or None for all, **list/watch arguments) -> the raw (unparsed) answer
Lister = Callable[..., Any]

CORE_LISTS = {
    "pods": ("list_pod_for_all_namespaces", "list_namespaced_pod"),
    "serviceaccounts": ("list_service_account_for_all_namespaces", "list_namespaced_service_account"),
    "events": ("list_event_for_all_namespaces", "list_namespaced_event"),
    "nodes": ("list_node", ""),
}


def uid_of(obj: Obj) -> str:
    """An object's uid ("" when it has none)."""
    return str((obj.get("metadata") or {}).get("uid") or "")


def core_lister(api: kubernetes.client.ApiClient, plural: str, field_selector: str = "") -> Lister:
    """Lists (or watches, with ``watch=True``) a core kind of one namespace or of all (a
    cluster-scoped kind ignores the scope), optionally through a field selector."""
    core = kubernetes.client.CoreV1Api(api)
    every_name, one_name = CORE_LISTS[plural]
    every: Callable[..., Any] = getattr(core, every_name)
    one: Callable[..., Any] | None = getattr(core, one_name) if one_name else None
    selector = {"field_selector": field_selector} if field_selector else {}

    def call(scope: str | None, **kwargs: Any) -> Any:
        if scope is None or one is None:
            return every(_preload_content=False, **selector, **kwargs)
        return one(scope, _preload_content=False, **selector, **kwargs)

    return call


# Workload kinds (issue 22): API group class and its list calls, all namespaces / one.
GROUP_LISTS = {
    "deployments": ("AppsV1Api", "list_deployment_for_all_namespaces", "list_namespaced_deployment"),
    "statefulsets": ("AppsV1Api", "list_stateful_set_for_all_namespaces", "list_namespaced_stateful_set"),
    "daemonsets": ("AppsV1Api", "list_daemon_set_for_all_namespaces", "list_namespaced_daemon_set"),
    "replicasets": ("AppsV1Api", "list_replica_set_for_all_namespaces", "list_namespaced_replica_set"),
    "jobs": ("BatchV1Api", "list_job_for_all_namespaces", "list_namespaced_job"),
    "cronjobs": ("BatchV1Api", "list_cron_job_for_all_namespaces", "list_namespaced_cron_job"),
}


def group_lister(api: kubernetes.client.ApiClient, plural: str) -> Lister:
    """Lists (or watches) a workload kind of apps/v1 or batch/v1 (:data:`GROUP_LISTS`) of one
    namespace or of all."""
    group, every_name, one_name = GROUP_LISTS[plural]
    client = getattr(kubernetes.client, group)(api)
    every: Callable[..., Any] = getattr(client, every_name)
    one: Callable[..., Any] = getattr(client, one_name)

    def call(scope: str | None, **kwargs: Any) -> Any:
        if scope is None:
            return every(_preload_content=False, **kwargs)
        return one(scope, _preload_content=False, **kwargs)

    return call


class _Gone(Exception):
    """The watch's resourceVersion expired (410): list again."""


class ListWatch:
    """Reads one kind on a thread per scope and delivers the relevant objects' events.

    Args:
        lister: lists or watches one scope (:func:`core_lister`, or the caller's own).
        namespaces: watched namespaces; empty = cluster-wide (or a cluster-scoped kind).
        deliver: called on the reading thread with each relevant event (thread-safe).
        relevant: the filter; an object that stops matching is delivered once more.
        what: what is read, for the log (its RBAC resource name).
        without: what the operator does without it, for the log.
    """

    def __init__(
        self,
        lister: Lister,
        namespaces: Sequence[str],
        deliver: Deliver,
        *,
        relevant: Callable[[Obj], bool] = lambda _obj: True,
        what: str,
        without: str,
    ) -> None:
        self._call = lister
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._deliver = deliver
        self._relevant = relevant
        self._what, self._without = what, without
        self._stop = threading.Event()
        self._listed: set[str | None] = set()
        self._up: set[str | None] = set()
        self._refused: set[str | None] = set()  # scopes whose last list or watch got 403
        self.events = 0  # events read (for tests and benchmarks)

    @property
    def listed(self) -> bool:
        """Every scope was listed at least once (what was delivered is the whole state)."""
        return self._listed >= set(self._scopes)

    @property
    def watching(self) -> bool:
        """Every scope listed and its watch running now (nothing is being missed)."""
        return self._up >= set(self._scopes)

    @property
    def settled(self) -> bool:
        """Every scope listed, or refused by RBAC (nothing will come: do not wait for it)."""
        return (self._listed | self._refused) >= set(self._scopes)

    def start(self) -> None:
        """One daemon thread per scope."""
        for scope in self._scopes:
            threading.Thread(
                target=self._run, args=(scope,), name=f"{self._what}-{scope or 'all'}", daemon=True
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
                self._up.add(scope)
                self._refused.discard(scope)  # granted since
                backoff = 1.0
                while not self._stop.is_set():
                    started = time.monotonic()
                    version = self._watch(scope, version, known)
                    if time.monotonic() - started < 1.0:
                        self._stop.wait(1.0)  # a watch that ends at once: not a busy loop
            except _Gone:
                self._up.discard(scope)
                continue  # list again at once
            except ApiException as exc:
                self._up.discard(scope)
                if exc.status == 403:
                    self._refused.add(scope)
                if exc.status == 403 and not forbidden_reported:
                    forbidden_reported = True
                    log.error("cannot list/watch %s (RBAC: grant list and watch on %s): %s; %s",
                              self._what, self._what, exc.reason, self._without)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:  # the connection: an outage is reported by the API calls
                self._up.discard(scope)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self, scope: str | None, known: set[str]) -> str:
        """List page by page; deliver the relevant objects; forget what is gone. The version."""
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
            for obj in page.get("items") or []:
                self.events += 1
                # A list's items do not repeat these: "PodList" -> "Pod".
                obj.setdefault("apiVersion", page.get("apiVersion"))
                obj.setdefault("kind", str(page.get("kind") or "").removesuffix("List"))
                uid = uid_of(obj)
                if uid and (self._relevant(obj) or uid in known):
                    seen.add(uid)
                    self._deliver("LISTED", obj)
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
            for kind, obj in self._events(response):
                if self._stop.is_set():
                    break
                if kind == "ERROR":
                    if int(obj.get("code") or 0) == 410:
                        raise _Gone()
                    raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                uid = uid_of(obj)
                if not uid:
                    continue
                if kind == "DELETED":
                    if uid in known:
                        known.discard(uid)
                        self._deliver(kind, obj)
                elif self._relevant(obj):
                    known.add(uid)
                    self._deliver(kind, obj)
                elif uid in known:  # stopped mattering: its handler sees the last state
                    known.discard(uid)
                    self._deliver(kind, obj)
        finally:
            response.release_conn()
        return version

    @staticmethod
    def _events(response: Any) -> Iterator[tuple[str, Obj]]:
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("object"), dict):
                yield str(event.get("type") or ""), event["object"]
