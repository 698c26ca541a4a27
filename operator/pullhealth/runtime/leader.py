"""Leader election: whether a live peer outranks this replica, for one watched scope.

kopf pauses its own watches on a replica that is outranked; the RegistryCheck loops and the
pod stream are our own tasks, so they ask here before acting. The peering objects are
watched (one list-and-watch per scope, :mod:`pullhealth.kube.listwatch`): a newer replica's first
keep-alive is seen within the watch's latency, and every answer is judged at the moment it
is asked (a peer whose keep-alive ran out no longer counts), without an API request. Until
the first list arrived (the first second of start-up), the peering object is read, at most
every ``STANDBY_RECHECK`` seconds per scope.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes

from pullhealth.kube import listwatch, peering
from pullhealth.runtime import startup
from pullhealth.runtime.state import State, client_wired

STANDBY_RECHECK = 2.0
MAX_SCOPES = 10000
GROUP, VERSION = "kopf.dev", "v1"


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


class _Watched:
    view: PeeringView | None = None
    stream: listwatch.ListWatch | None = None


@kopf.on.startup()
async def watch_peering(**_: Any) -> None:
    """With leader election: start watching the peering object(s) once the client is wired."""
    if not await client_wired() or State.peering is None or State.kube is None:
        return
    name, clusterwide, _priority = State.peering
    scopes, in_scope = ((), None) if clusterwide else startup.read_scopes()
    view = PeeringView(clusterwide)
    _Watched.stream = listwatch.ListWatch(
        peering_lister(State.kube.api, name, clusterwide),
        scopes,
        view.deliver,
        relevant=in_scope or (lambda _obj: True),
        what="clusterkopfpeerings" if clusterwide else "kopfpeerings",
        without="the peering object is read every 2 s instead",
    )
    _Watched.view = view
    _Watched.stream.start()


@kopf.on.cleanup()
async def stop_peering_watch(**_: Any) -> None:
    """The reading thread ends at its next event or watch time-out."""
    if _Watched.stream is not None:
        _Watched.stream.stop()


async def outranked(namespace: str) -> bool:
    """With leader election: whether a live peer outranks this replica."""
    if State.peering is None or State.status is None:
        return False
    name, clusterwide, priority = State.peering
    where = None if clusterwide else namespace
    if _Watched.view is not None and _Watched.stream is not None and _Watched.stream.ever_synced:
        return peering.outranked(_Watched.view.status(where), priority)
    seen = State.standby_seen.get(where)
    if seen is not None and time.monotonic() - seen[0] < STANDBY_RECHECK:
        return seen[1]
    standby = peering.outranked(await State.status.peering_status(name, where), priority)
    if len(State.standby_seen) > MAX_SCOPES:
        State.standby_seen.clear()
    State.standby_seen[where] = (time.monotonic(), standby)
    return standby
