"""kubelet's pull-failure Events, fed by one watch instead of one list per failing pod.

kubelet posts a core/v1 ``Failed`` Event (``Failed to pull image "x": ...``) on every
failed pull. Pod diagnosis used to list a pod's Events on each of its updates; here the
API server sends only those Events (field selector ``reason=Failed,involvedObject.kind=Pod``)
to one watch per watched scope, and the newest few pull messages per pod are kept.
Bounded: at most ``per_pod`` messages for ``limit`` pods (least recently failed out first).

Until the first list has arrived, or while the watch is down, :meth:`KubeletFailures.messages`
says it does not know (None): the caller lists the pod's Events as before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

FIELD_SELECTOR = "reason=Failed,involvedObject.kind=Pod"
WATCH_SECONDS = 300
REQUEST_TIMEOUT = 30.0
MAX_BACKOFF = 30.0


def _moment(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _uid(event: Mapping[str, Any]) -> str:
    return str((event.get("metadata") or {}).get("uid") or "")


def _involved_uid(event: Mapping[str, Any]) -> str:
    return str((event.get("involvedObject") or {}).get("uid") or "")


class KubeletFailures:
    """The newest pull-failure messages per pod uid, from a watch on kubelet's Events.

    Args:
        api: the API client.
        namespaces: watched namespaces; empty = cluster-wide (one watch).
        per_pod: messages kept per pod.
        limit: pods kept at most.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespaces: Sequence[str] = (),
        *,
        per_pod: int = 3,
        limit: int = 10_000,
    ) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._scopes: list[str | None] = list(namespaces) or [None]
        self.per_pod = per_pod
        self.limit = limit
        self._lock = threading.Lock()
        # uid -> [(moment, event uid, message)], newest first.
        self._by_pod: OrderedDict[str, list[tuple[str, str, str]]] = OrderedDict()
        self._synced: dict[str | None, bool] = dict.fromkeys(self._scopes, False)
        self._stop = threading.Event()
        self._forbidden = False
        self._listed: set[str | None] = set()

    @property
    def ever_synced(self) -> bool:
        """Every scope was listed at least once (or the watch is forbidden: it never will)."""
        with self._lock:
            return self._forbidden or self._listed >= set(self._scopes)

    @property
    def synced(self) -> bool:
        """Every scope listed and its watch running."""
        with self._lock:
            return not self._forbidden and all(self._synced.values())

    def start(self) -> None:
        """One daemon thread per scope (they end with the process)."""
        for scope in self._scopes:
            threading.Thread(
                target=self._run, args=(scope,), name=f"kubelet-events-{scope or 'all'}", daemon=True
            ).start()

    def stop(self) -> None:
        """The watches end at their next event or time-out."""
        self._stop.set()

    def messages(self, uid: str) -> list[str] | None:
        """The pod's pull-failure messages, newest first; None when not known (not synced)."""
        if not self.synced:
            return None
        with self._lock:
            return [message for _, _, message in self._by_pod.get(uid, [])]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_pod)

    def add(self, event: Mapping[str, Any]) -> None:
        """Record one Event (its JSON)."""
        key = _involved_uid(event)
        message = str(event.get("message") or "")
        if not key or "pull" not in message.lower():
            return
        entry = (_moment(event), _uid(event), message)
        with self._lock:
            kept = [e for e in self._by_pod.pop(key, []) if e[1] != entry[1]]
            kept.append(entry)
            kept.sort(reverse=True)
            self._by_pod[key] = kept[: self.per_pod]
            while len(self._by_pod) > self.limit:
                self._by_pod.popitem(last=False)

    def remove(self, event: Mapping[str, Any]) -> None:
        """An Event expired or was deleted."""
        key = _involved_uid(event)
        if not key:
            return
        with self._lock:
            kept = [e for e in self._by_pod.get(key, []) if e[1] != _uid(event)]
            if kept:
                self._by_pod[key] = kept
            else:
                self._by_pod.pop(key, None)

    def _list(self, scope: str | None, **kwargs: Any) -> dict[str, Any]:
        """The Events as plain JSON (no client models: thousands of Events at start-up)."""
        response: Any = (
            self._core.list_event_for_all_namespaces(_preload_content=False, **kwargs)
            if scope is None
            else self._core.list_namespaced_event(scope, _preload_content=False, **kwargs)
        )
        try:
            listed: dict[str, Any] = json.loads(response.read())
        finally:
            response.release_conn()
        return listed

    def _run(self, scope: str | None) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                listed = self._list(scope, field_selector=FIELD_SELECTOR, _request_timeout=REQUEST_TIMEOUT)
                for event in listed.get("items") or []:
                    self.add(event)
                version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                with self._lock:
                    self._synced[scope] = True
                    self._listed.add(scope)
                backoff = 1.0
                self._watch(scope, version)
            except ApiException as exc:
                if exc.status == 403:
                    log.warning(
                        "cannot watch kubelet's Events (RBAC: grant list and watch on events); "
                        "each failing pod's Events are listed instead"
                    )
                    with self._lock:
                        self._forbidden = True
                    return
                if exc.status != 410:  # 410: the version expired, list again at once
                    self._down(scope, backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:  # the connection: the API server's outage is reported elsewhere
                self._down(scope, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _down(self, scope: str | None, delay: float) -> None:
        with self._lock:
            self._synced[scope] = False
        self._stop.wait(delay)

    def _watch(self, scope: str | None, version: str) -> None:
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            kwargs: dict[str, Any] = {
                "field_selector": FIELD_SELECTOR,
                "resource_version": version,
                "timeout_seconds": WATCH_SECONDS,
                "_request_timeout": WATCH_SECONDS + REQUEST_TIMEOUT,
            }
            func = (
                self._core.list_event_for_all_namespaces
                if scope is None
                else self._core.list_namespaced_event
            )
            args = () if scope is None else (scope,)
            started = time.monotonic()
            for item in watch.stream(func, *args, **kwargs):  # type: ignore[no-untyped-call]
                kind, event = item["type"], item.get("raw_object")  # the Event's JSON
                if kind == "ERROR":
                    raise ApiException(status=int((event or {}).get("code") or 500))
                if not isinstance(event, Mapping):
                    continue
                if kind == "DELETED":
                    self.remove(event)
                elif kind in ("ADDED", "MODIFIED"):
                    self.add(event)
                version = str((event.get("metadata") or {}).get("resourceVersion") or version)
                if self._stop.is_set():
                    watch.stop()  # type: ignore[no-untyped-call]
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a watch that ends at once: not a busy loop
