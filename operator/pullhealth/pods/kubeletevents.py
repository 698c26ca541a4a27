"""kubelet's pull-failure Events, fed by one watch instead of one list per failing pod.

kubelet posts a core/v1 ``Failed`` Event (``Failed to pull image "x": ...``) on every
failed pull. Pod diagnosis used to list a pod's Events on each of its updates; here the
API server sends only those Events (field selector ``reason=Failed,involvedObject.kind=Pod``)
to one watch per watched scope, and the newest few pull messages per pod are kept.

Trusted as kubelet's only when :func:`pullhealth.kube.events.kubelet_pull_failure` says so
(source kubelet, the pod in the Event's own namespace), and keyed by namespace + pod uid:
an Event in namespace A naming the uid of a pod in B speaks for nothing. Bounded per
namespace: at most ``per_pod`` messages for ``per_namespace`` pods of each namespace (least
recently failed out first), so one namespace's forged Events cannot evict another's.

Read by :class:`pullhealth.kube.listwatch.ListWatch` (plain JSON, one thread per scope). Until
the first list has arrived, or while the watch is down, :meth:`KubeletFailures.messages`
says it does not know (None): the caller lists the pod's Events as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import kubernetes

from pullhealth.kube.events import event_moment, kubelet_pull_failure
from pullhealth.kube.listwatch import ListWatch, core_lister, uid_of

FIELD_SELECTOR = "reason=Failed,involvedObject.kind=Pod"

# (namespace, pod uid)
PodKey = tuple[str, str]
# (moment, event uid, message): newest first by moment, then uid (the listing's order too).
Entry = tuple[datetime, str, str]


def _pod_key(event: Mapping[str, Any]) -> PodKey:
    namespace = str((event.get("metadata") or {}).get("namespace") or "")
    return namespace, str((event.get("involvedObject") or {}).get("uid") or "")


def about_a_pull(event: Mapping[str, Any]) -> bool:
    """kubelet's Event about a pull of a pod in the Event's own namespace."""
    return kubelet_pull_failure(event)


class KubeletFailures:
    """The newest pull-failure messages per pod, from a watch on kubelet's Events.

    Args:
        api: the API client.
        namespaces: watched namespaces; empty = cluster-wide (one watch).
        per_pod: messages kept per pod.
        per_namespace: pods kept at most, in each namespace.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespaces: Sequence[str] = (),
        *,
        per_pod: int = 3,
        per_namespace: int = 2_000,
    ) -> None:
        self.per_pod = per_pod
        self.per_namespace = per_namespace
        self._lock = threading.Lock()
        # namespace -> pod uid -> [Entry], newest first; pods in least-recently-failed order.
        self._by_ns: dict[str, OrderedDict[str, list[Entry]]] = {}
        # event uid -> its pod, for the deletions a re-list reports (by the Event's uid only).
        self._pod_of: dict[str, PodKey] = {}
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
    def watching(self) -> bool:
        """Every scope listed and its watch running."""
        return self._reader.watching

    def start(self) -> None:
        """One daemon thread per scope (they end with the process)."""
        self._reader.start()

    def stop(self) -> None:
        """The watches end at their next event or time-out."""
        self._reader.stop()

    def messages(self, namespace: str, uid: str) -> list[str] | None:
        """The pod's pull-failure messages, newest first; None when not known (not watching)."""
        if not self.watching:
            return None
        with self._lock:
            pods = self._by_ns.get(namespace)
            return [message for _, _, message in (pods.get(uid, []) if pods is not None else [])]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(pods) for pods in self._by_ns.values())

    def _event(self, kind: str, event: Mapping[str, Any]) -> None:
        if kind == "DELETED" or not about_a_pull(event):  # gone, or no longer about a pull
            self.remove(event)
        else:
            self.add(event)

    def add(self, event: Mapping[str, Any]) -> None:
        """Record one Event (its JSON)."""
        if not about_a_pull(event):
            return
        namespace, pod = key = _pod_key(event)
        entry = (event_moment(event), uid_of(event), str(event.get("message") or ""))
        with self._lock:
            pods = self._by_ns.setdefault(namespace, OrderedDict())
            kept = [e for e in pods.pop(pod, []) if e[1] != entry[1]]
            kept.append(entry)
            kept.sort(reverse=True)
            for _, dropped, _ in kept[self.per_pod :]:
                self._pod_of.pop(dropped, None)
            pods[pod] = kept[: self.per_pod]
            self._pod_of[entry[1]] = key
            while len(pods) > self.per_namespace:
                _, evicted = pods.popitem(last=False)
                for _, dropped, _ in evicted:
                    self._pod_of.pop(dropped, None)

    def remove(self, event: Mapping[str, Any]) -> None:
        """An Event expired or was deleted (a re-list names it by its uid only)."""
        uid = uid_of(event)
        with self._lock:
            known = self._pod_of.pop(uid, None)
            key = known or _pod_key(event)
            pods = self._by_ns.get(key[0])
            if pods is None or key[1] not in pods:
                return
            kept = [e for e in pods[key[1]] if e[1] != uid]
            if kept:
                pods[key[1]] = kept
            else:
                pods.pop(key[1], None)
                if not pods:
                    self._by_ns.pop(key[0], None)
