"""Leader election's view of the peering objects: fed by a watch, judged when asked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pullhealth.runtime import leader
from pullhealth.runtime.state import State


def peering(uid: str, namespace: str | None, peers: dict[str, tuple[int, datetime]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid, "name": "ha"}
    if namespace:
        meta["namespace"] = namespace
    status = {peer: {"priority": priority, "lifetime": 10, "lastseen": seen.isoformat()}
              for peer, (priority, seen) in peers.items()}
    return {"metadata": meta, "status": status}


class Synced:
    ever_synced = True


@pytest.fixture()
def watched(monkeypatch: pytest.MonkeyPatch) -> leader.PeeringView:
    view = leader.PeeringView(clusterwide=False)
    monkeypatch.setattr(leader._Watched, "view", view)
    monkeypatch.setattr(leader._Watched, "stream", Synced())
    monkeypatch.setattr(State, "peering", ("ha", False, 100))
    monkeypatch.setattr(State, "status", object())  # never read while the watch is synced
    return view


def test_a_newer_peer_is_seen_at_once_and_forgotten_when_its_keepalive_runs_out(
    watched: leader.PeeringView,
) -> None:
    now = datetime.now(UTC)
    watched.deliver("LISTED", peering("u1", "team-a", {"me": (100, now)}))
    assert not asyncio.run(leader.outranked("team-a"))
    watched.deliver("MODIFIED", peering("u1", "team-a", {"me": (100, now), "newer": (200, now)}))
    assert asyncio.run(leader.outranked("team-a"))
    assert not asyncio.run(leader.outranked("team-b"))  # another namespace's KopfPeering
    stale = now - timedelta(seconds=11)  # lastseen + lifetime is in the past: the peer is gone
    watched.deliver("MODIFIED", peering("u1", "team-a", {"me": (100, now), "newer": (200, stale)}))
    assert not asyncio.run(leader.outranked("team-a"))


def test_a_deleted_peering_object_outranks_nobody(watched: leader.PeeringView) -> None:
    now = datetime.now(UTC)
    watched.deliver("ADDED", peering("u1", "team-a", {"newer": (200, now)}))
    assert asyncio.run(leader.outranked("team-a"))
    watched.deliver("DELETED", {"metadata": {"uid": "u1"}})  # as a re-list reports it: uid only
    assert not asyncio.run(leader.outranked("team-a"))


def test_the_cluster_peering_counts_for_every_namespace() -> None:
    view = leader.PeeringView(clusterwide=True)
    view.deliver("LISTED", peering("u1", None, {"newer": (200, datetime.now(UTC))}))
    assert view.status(None) == {"newer": {"priority": 200, "lifetime": 10,
                                           "lastseen": view.status(None)["newer"]["lastseen"]}}
    assert view.status("team-a") is None


def test_a_malformed_status_outranks_nobody(watched: leader.PeeringView) -> None:
    watched.deliver("ADDED", {"metadata": {"uid": "u1", "namespace": "team-a"}, "status": ["not", "a", "map"]})
    assert not asyncio.run(leader.outranked("team-a"))
    watched.deliver("MODIFIED", {"metadata": {"uid": "u1", "namespace": "team-a"},
                                 "status": {"x": {"priority": "high", "lastseen": "yesterday"}}})
    assert not asyncio.run(leader.outranked("team-a"))
