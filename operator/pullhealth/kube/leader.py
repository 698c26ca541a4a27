"""Leader election: whether a live peer outranks this replica, for one watched scope.

kopf pauses its own watches on a replica that is outranked; the RegistryCheck loops and the
pod stream are our own tasks, so they ask here before acting. The peering objects are
watched (one list-and-watch per scope, :mod:`pullhealth.kube.listwatch`): a newer replica's
keep-alive is seen within the watch's latency, and every answer is judged at the moment it
is asked (a peer whose keep-alive ran out no longer counts), without an API request.

A replica acts only on what it has read: until the first list arrived the peering object is
read (at most every ``STANDBY_RECHECK`` seconds per scope), and a caller about to do what must
not be done twice (a RegistryCheck run: a probe and an Event) asks for a ``fresh`` answer,
read from the API server at that moment. A read that fails answers "outranked": nothing is
done until it can be read (the callers look again within seconds). A watch that lags behind
a loaded API server therefore never lets an older replica run a check after a newer one
wrote its first keep-alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes

from pullhealth.bounded import BoundedDict
from pullhealth.kube import kubeapi, listwatch, peering

STANDBY_RECHECK = 2.0
MAX_SCOPES = 10000
GROUP, VERSION = "kopf.dev", "v1"
log = logging.getLogger(__name__)


class PeeringView:
    """The statuses of the watched peering objects, fed from the reading thread.

    Args:
        clusterwide: the ClusterKopfPeering (one status for every namespace), or one
            KopfPeering per namespace.
    """

    def __init__(self, clusterwide: bool) -> None:
        self._clusterwide = clusterwide
        self._records: dict[str, tuple[str | None, Mapping[str, Any]]] = {}  # by uid

    def deliver(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A list or watch event (thread-safe: one dict assignment)."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if kind == "DELETED":
            self._records.pop(uid, None)
            return
        where = None if self._clusterwide else str(meta.get("namespace") or "")
        status = obj.get("status")
        self._records[uid] = (where, status if isinstance(status, Mapping) else {})

    def status(self, where: str | None) -> Mapping[str, Any] | None:
        """The peering status for a scope (None: no peering object there)."""
        for scope, status in list(self._records.values()):
            if scope == where:
                return status
        return None


def peering_lister(api: kubernetes.client.ApiClient, name: str, clusterwide: bool) -> listwatch.Lister:
    """Lists or watches the peering objects called ``name`` (in one namespace or all)."""
    custom = kubernetes.client.CustomObjectsApi(api)
    selector = f"metadata.name={name}"

    def call(scope: str | None, **kwargs: Any) -> Any:
        kwargs.update(field_selector=selector, _preload_content=False)
        if clusterwide:
            return custom.list_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", **kwargs)
        if scope is None:  # namespace globs: the KopfPeerings of every namespace
            return custom.list_cluster_custom_object(GROUP, VERSION, "kopfpeerings", **kwargs)
        return custom.list_namespaced_custom_object(GROUP, VERSION, scope, "kopfpeerings", **kwargs)

    return call


class LeaderElection:
    """This replica's view of the peering object(s) of one peering name.

    Args:
        status: reads the peering object when the watch cannot answer.
        api: the API client the watch lists with.
        name: the peering name (``--peering``).
        clusterwide: one ClusterKopfPeering, or one KopfPeering per watched namespace.
        priority: this replica's priority (the newest replica's is highest).
        scopes: the namespaces the watch reads (empty: all).
        in_scope: the namespace-glob filter, when ``--namespace`` has globs.
    """

    def __init__(
        self,
        status: kubeapi.StatusWriter,
        api: kubernetes.client.ApiClient,
        name: str,
        clusterwide: bool,
        priority: int,
        scopes: tuple[str, ...] = (),
        in_scope: Callable[[listwatch.Obj], bool] | None = None,
    ) -> None:
        self.name, self.clusterwide, self.priority = name, clusterwide, priority
        self._status = status
        self._view = PeeringView(clusterwide)
        self._stream = listwatch.ListWatch(
            peering_lister(api, name, clusterwide),
            () if clusterwide else scopes,
            self._view.deliver,
            relevant=(None if clusterwide else in_scope) or (lambda _obj: True),
            what="clusterkopfpeerings" if clusterwide else "kopfpeerings",
            without="the peering object is read every 2 s instead",
        )
        self._read: BoundedDict[str | None, tuple[float, bool]] = BoundedDict(MAX_SCOPES)

    def start(self) -> None:
        """Start watching the peering object(s)."""
        self._stream.start()

    def stop(self) -> None:
        """The reading thread ends at its next event or watch time-out."""
        self._stream.stop()

    async def outranked(self, namespace: str, *, fresh: bool = False) -> bool:
        """Whether a live peer outranks this replica for ``namespace``'s scope.

        Args:
            namespace: the object's namespace.
            fresh: read the peering object now instead of trusting the watch's view: before
                an action that must not be done twice.
        """
        where = None if self.clusterwide else namespace
        if not fresh and self._stream.listed:
            return peering.outranked(self._view.status(where), self.priority)
        seen = None if fresh else self._read.get(where)
        if seen is not None and time.monotonic() - seen[0] < STANDBY_RECHECK:
            return seen[1]
        try:
            status = await self._status.peering_status(self.name, where)
        except Exception as exc:  # unreadable: act only on what was read
            log.debug("peering object %s unreadable (%s): not acting", self.name, type(exc).__name__)
            return True
        standby = peering.outranked(status, self.priority)
        self._read[where] = (time.monotonic(), standby)
        return standby
