"""kubelet's pull-failure Events, fed by one watch instead of one list per failing pod.

kubelet posts a core/v1 ``Failed`` Event (``Failed to pull image "x": ...``) on every
failed pull. Pod diagnosis used to list a pod's Events on each of its updates; here the
API server sends only those Events (field selector ``reason=Failed,involvedObject.kind=Pod``)
to one watch per watched scope, and the newest few pull messages per pod are kept.
Bounded: at most ``per_pod`` messages for ``limit`` pods (least recently failed out first).

Read by :class:`pullhealth.kube.listwatch.ListWatch` (plain JSON, one thread per scope). Until
the first list has arrived, or while the watch is down, :meth:`KubeletFailures.messages`
says it does not know (None): the caller lists the pod's Events as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes

from pullhealth.kube.listwatch import ListWatch, core_lister, uid_of

FIELD_SELECTOR = "reason=Failed,involvedObject.kind=Pod"


def _moment(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _involved_uid(event: Mapping[str, Any]) -> str:
    return str((event.get("involvedObject") or {}).get("uid") or "")


def about_a_pull(event: Mapping[str, Any]) -> bool:
    """A pod's Event whose message is about pulling (kubelet's ``Failed`` Events also say
    ``Error: ...`` for other failures)."""
    return bool(_involved_uid(event)) and "pull" in str(event.get("message") or "").lower()


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
        self.per_pod = per_pod
        self.limit = limit
        self._lock = threading.Lock()
        # pod uid -> [(moment, event uid, message)], newest first.
        self._by_pod: OrderedDict[str, list[tuple[str, str, str]]] = OrderedDict()
        # event uid -> pod uid, for the deletions a re-list reports (by the Event's uid only).
        self._pod_of: dict[str, str] = {}
        self._reader = ListWatch(
            core_lister(api, "events", FIELD_SELECTOR),
            namespaces,
            self._event,
            relevant=about_a_pull,
            what="events",
            without="each failing pod's Events are listed instead",
        )

    @property
    def settled(self) -> bool:
        """Every scope listed at least once, or refused by RBAC (no use waiting for it)."""
        return self._reader.settled

    @property
    def synced(self) -> bool:
        """Every scope listed and its watch running."""
        return self._reader.synced

    def start(self) -> None:
        """One daemon thread per scope (they end with the process)."""
        self._reader.start()

    def stop(self) -> None:
        """The watches end at their next event or time-out."""
        self._reader.stop()

    def messages(self, uid: str) -> list[str] | None:
        """The pod's pull-failure messages, newest first; None when not known (not synced)."""
        if not self.synced:
            return None
        with self._lock:
            return [message for _, _, message in self._by_pod.get(uid, [])]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_pod)

    def _event(self, kind: str, event: Mapping[str, Any]) -> None:
        if kind == "DELETED" or not about_a_pull(event):  # gone, or no longer about a pull
            self.remove(event)
        else:
            self.add(event)

    def add(self, event: Mapping[str, Any]) -> None:
        """Record one Event (its JSON)."""
        if not about_a_pull(event):
            return
        key = _involved_uid(event)
        entry = (_moment(event), uid_of(event), str(event.get("message") or ""))
        with self._lock:
            kept = [e for e in self._by_pod.pop(key, []) if e[1] != entry[1]]
            kept.append(entry)
            kept.sort(reverse=True)
            for _, dropped, _ in kept[self.per_pod :]:
                self._pod_of.pop(dropped, None)
            self._by_pod[key] = kept[: self.per_pod]
            self._pod_of[entry[1]] = key
            while len(self._by_pod) > self.limit:
                _, evicted = self._by_pod.popitem(last=False)
                for _, dropped, _ in evicted:
                    self._pod_of.pop(dropped, None)

    def remove(self, event: Mapping[str, Any]) -> None:
        """An Event expired or was deleted (a re-list names it by its uid only)."""
        uid = uid_of(event)
        with self._lock:
            key = _involved_uid(event) or self._pod_of.get(uid, "")
            self._pod_of.pop(uid, None)
            if not key:
                return
            kept = [e for e in self._by_pod.get(key, []) if e[1] != uid]
            if kept:
                self._by_pod[key] = kept
            else:
                self._by_pod.pop(key, None)
