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

:class:`KubeletPulls` reads kubelet's Normal Events the same way (one more watch,
``type=Normal,involvedObject.kind=Pod,source=kubelet``): when each image's newest pull
started (``Pulling``: how long a failed pull ran, for pod diagnosis) and each successful
pull (``Pulled``) into the pull metrics (``record``:
:func:`pullhealth.metrics.record_image_pull`, given by start-up), parsed on the reading
thread, never an API request per Event.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import kubernetes

from pullhealth.bounded import BoundedDict
from pullhealth.domain.reference import InvalidReference, parse
from pullhealth.kube.events import KUBELET, event_moment, kubelet_pull_failure, occurrences, pulled_image
from pullhealth.kube.listwatch import ListWatch, core_lister, uid_of

FIELD_SELECTOR = "reason=Failed,involvedObject.kind=Pod"
POLL_SECONDS = 0.1  # messages_soon's polling step
_FAILED_IMAGE = re.compile(r'Failed to pull image "([^"\s]{1,512})"')
_PULLING_IMAGE = re.compile(r'^Pulling image "([^"\s]{1,512})"')

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

    async def messages_soon(self, namespace: str, uid: str, wait: float) -> list[str] | None:
        """:meth:`messages`, waiting up to ``wait`` seconds for the first one to arrive.

        kubelet sets ``ErrImagePull`` on the pod and posts its ``Failed`` Event through
        its asynchronous event broadcaster: the pod's update may well reach the operator
        before the Event reaches the watch (on a busy API server, by a second or more).
        Waiting briefly for it here spares a list of the pod's Events. Polled every 0.1 s
        (a dictionary read), bounded by ``wait``; None when not watching, as before.
        """
        deadline = time.monotonic() + wait
        while True:
            found = self.messages(namespace, uid)
            if found or found is None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def failed_at(self, namespace: str, uid: str) -> dict[str, datetime]:
        """The newest failure moment per image of the pod (from ``Failed to pull image "x"``)."""
        with self._lock:
            pods = self._by_ns.get(namespace)
            entries = list(pods.get(uid, [])) if pods is not None else []
        moments: dict[str, datetime] = {}
        for moment, _, message in entries:  # newest first
            match = _FAILED_IMAGE.match(message)
            if match:
                moments.setdefault(match.group(1), moment)
        return moments

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


# kubelet's Normal Events about pods (Pulling, Pulled, Created, Started, ...): one watch for
# both Pulled (the metrics) and Pulling (when each image's newest pull started).
PULLED_SELECTOR = "type=Normal,involvedObject.kind=Pod,source=kubelet"
# (registry, pool, seconds, waiting, size, times): metrics.record_image_pull
RecordPull = Callable[[str, str, float, float | None, int | None, int], None]


def kubelet_pulled(event: Mapping[str, Any]) -> bool:
    """kubelet's Event about a successful pull of one of its own namespace's pods."""
    message = str(event.get("message") or "")
    return _kubelets_own(event) and event.get("reason") == "Pulled" and message.startswith(
        "Successfully pulled")


def kubelet_pulling(event: Mapping[str, Any]) -> bool:
    """kubelet's Event that a pull of one of its own namespace's pods' images started."""
    return _kubelets_own(event) and event.get("reason") == "Pulling" and bool(
        _PULLING_IMAGE.match(str(event.get("message") or "")))


def _kubelets_own(event: Mapping[str, Any]) -> bool:
    involved = event.get("involvedObject") or {}
    metadata = event.get("metadata") or {}
    source = event.get("source") or {}
    if not all(isinstance(part, Mapping) for part in (involved, metadata, source)):
        return False
    if KUBELET not in (source.get("component"), event.get("reportingComponent")):
        return False
    return bool(involved.get("uid")) and (
        not metadata.get("namespace") or involved.get("namespace") == metadata.get("namespace"))


def pull_seconds(pulling: Mapping[str, datetime], failed: Mapping[str, datetime]) -> dict[str, float]:
    """Seconds from each image's newest ``Pulling`` to its newest failure; an image whose
    newest pull started after that failure (a retry under way) has no figure."""
    return {image: (failed[image] - started).total_seconds()
            for image, started in pulling.items() if image in failed and started <= failed[image]}


class KubeletPulls:
    """Pull metrics from kubelet's ``Pulled`` Events, each occurrence counted once.

    An Event's ``count`` (or ``series.count``) grows when kubelet repeats a message; only the
    growth is counted, remembered per Event uid (at most ``remembered`` uids, least recently
    seen out first), so a re-list after a watch gap counts only what happened in the gap.
    The first listing is the baseline: pulls from before the operator started are not
    counted (a restart would count the last hour's pulls again).

    Args:
        api: the API client.
        namespaces: watched namespaces; empty = cluster-wide (one watch).
        record: called with (registry, pool, seconds, waiting, size, times) for each new
            pull (:func:`pullhealth.metrics.record_image_pull`).
        pool_of: the pool label of a node, by name (the node is the Event's source host).
        remembered: Event uids remembered (kubelet's Events live an hour: about the
            cluster's successful pulls per hour).
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespaces: Sequence[str] = (),
        *,
        record: RecordPull,
        pool_of: Callable[[str], str],
        remembered: int = 50_000,
        pods: int = 20_000,
    ) -> None:
        self._record = record
        self._pool_of = pool_of
        self._lock = threading.Lock()
        self._seen: BoundedDict[str, int] = BoundedDict(remembered)
        # (namespace, pod uid) -> image -> its newest Pulling moment (at most 8 images a pod)
        self._pulling: BoundedDict[PodKey, dict[str, datetime]] = BoundedDict(pods)
        self.counted = 0  # pulls recorded (tests, benchmarks)
        self._reader = ListWatch(
            core_lister(api, "events", PULLED_SELECTOR),
            namespaces,
            self._event,
            relevant=lambda event: kubelet_pulled(event) or kubelet_pulling(event),
            what="events",
            without="no pull metrics from kubelet's Pulled Events",
        )

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

    def _event(self, kind: str, event: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            return  # an expired Event was counted when it happened; its uid ages out
        if kubelet_pulling(event):
            self.started(event)
            return
        self.add(event, baseline=kind == "LISTED" and not self._reader.listed)

    def started(self, event: Mapping[str, Any]) -> None:
        """Remember when the pod's newest pull of the Event's image started."""
        match = _PULLING_IMAGE.match(str(event.get("message") or ""))
        if not match or not kubelet_pulling(event):
            return
        key, moment = _pod_key(event), event_moment(event)
        with self._lock:
            images = dict(self._pulling.get(key) or {})
            if moment >= images.get(match.group(1), moment):
                images[match.group(1)] = moment
            if len(images) <= 8:
                self._pulling[key] = images

    def pulling_at(self, namespace: str, uid: str) -> dict[str, datetime]:
        """When the pod's newest pull of each image started (kubelet's Pulling Events)."""
        with self._lock:
            return dict(self._pulling.get((namespace, uid)) or {})

    def add(self, event: Mapping[str, Any], *, baseline: bool = False) -> None:
        """Count the new occurrences of one ``Pulled`` Event (its JSON); a ``baseline``
        Event is only remembered."""
        if not kubelet_pulled(event):
            return
        uid = uid_of(event)
        if not uid:
            return
        times = occurrences(event)
        with self._lock:
            new = times - self._seen.get(uid, 0)
            self._seen[uid] = max(times, self._seen.get(uid, 0))
        if baseline or new <= 0:
            return
        pulled = pulled_image(str(event.get("message") or ""))
        if pulled is None:
            return
        try:
            registry = parse(pulled.image).registry
        except InvalidReference:
            registry = ""  # no registry label but "other"
        node = str((event.get("source") or {}).get("host") or event.get("reportingInstance") or "")
        self._record(registry, self._pool_of(node), pulled.seconds, pulled.waiting, pulled.size, new)
        self.counted += new
