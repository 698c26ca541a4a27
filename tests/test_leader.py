"""Leader election (kube/leader, kube/peering): the peering records, the watched view, fresh reads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pullhealth.kube import leader, peering


def peering_object(uid: str, namespace: str | None, peers: dict[str, tuple[int, datetime]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid, "name": "ha"}
    if namespace:
        meta["namespace"] = namespace
    status = {peer: {"priority": priority, "lifetime": 10, "lastseen": seen.isoformat()}
              for peer, (priority, seen) in peers.items()}
    return {"metadata": meta, "status": status}


class Synced:
    listed = True


class PeeringReads:
    """What the API server answers for the peering object (the status reader's one method)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self.fail = False
        self.reads = 0

    async def peering_status(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        self.reads += 1
        if self.fail:
            raise ConnectionError("API server unreachable")
        return self.status


def election(reads: PeeringReads, synced: bool) -> tuple[leader.LeaderElection, leader.PeeringView]:
    chosen = leader.LeaderElection(reads, None, "ha", clusterwide=False, priority=100)  # type: ignore[arg-type]
    if synced:
        chosen._stream = Synced()  # type: ignore[assignment]  # as after the watch's first list
    return chosen, chosen._view


class Watched:
    def __init__(self) -> None:
        self.reads = PeeringReads()
        self.election, self.view = election(self.reads, synced=True)

    def deliver(self, kind: str, obj: dict[str, Any]) -> None:
        self.view.deliver(kind, obj)


@pytest.fixture()
def watched() -> Watched:
    return Watched()


def outranked(watched: Watched, namespace: str, fresh: bool = False) -> bool:
    return asyncio.run(watched.election.outranked(namespace, fresh=fresh))


def test_a_newer_peer_is_seen_at_once_and_forgotten_when_its_keepalive_runs_out(
    watched: Watched,
) -> None:
    now = datetime.now(UTC)
    watched.deliver("LISTED", peering_object("u1", "team-a", {"me": (100, now)}))
    assert not outranked(watched, "team-a")
    watched.deliver("MODIFIED", peering_object("u1", "team-a", {"me": (100, now), "newer": (200, now)}))
    assert outranked(watched, "team-a")
    assert not outranked(watched, "team-b")  # another namespace's KopfPeering
    stale = now - timedelta(seconds=11)  # lastseen + lifetime is in the past: the peer is gone
    watched.deliver("MODIFIED", peering_object("u1", "team-a", {"me": (100, now), "newer": (200, stale)}))
    assert not outranked(watched, "team-a")


def test_a_deleted_peering_object_outranks_nobody(watched: Watched) -> None:
    now = datetime.now(UTC)
    watched.deliver("ADDED", peering_object("u1", "team-a", {"newer": (200, now)}))
    assert outranked(watched, "team-a")
    watched.deliver("DELETED", {"metadata": {"uid": "u1"}})  # as a re-list reports it: uid only
    assert not outranked(watched, "team-a")


def test_the_cluster_peering_counts_for_every_namespace() -> None:
    view = leader.PeeringView(clusterwide=True)
    view.deliver("LISTED", peering_object("u1", None, {"newer": (200, datetime.now(UTC))}))
    assert view.status(None) == {"newer": {"priority": 200, "lifetime": 10,
                                           "lastseen": view.status(None)["newer"]["lastseen"]}}
    assert view.status("team-a") is None


def test_a_malformed_status_outranks_nobody(watched: Watched) -> None:
    watched.deliver("ADDED", {"metadata": {"uid": "u1", "namespace": "team-a"}, "status": ["not", "a", "map"]})
    assert not outranked(watched, "team-a")
    watched.deliver("MODIFIED", {"metadata": {"uid": "u1", "namespace": "team-a"},
                                 "status": {"x": {"priority": "high", "lastseen": "yesterday"}}})
    assert not outranked(watched, "team-a")


def test_the_watch_answers_without_a_request(watched: Watched) -> None:
    watched.deliver("ADDED", peering_object("u1", "team-a", {"newer": (200, datetime.now(UTC))}))
    assert outranked(watched, "team-a") and outranked(watched, "team-a")
    assert watched.reads.reads == 0


def test_a_fresh_answer_reads_the_object_as_it_is_now(watched: Watched) -> None:
    """A lagging watch (it has not delivered the newer replica yet) does not let a check run."""
    now = datetime.now(UTC)
    watched.deliver("ADDED", peering_object("u1", "team-a", {"me": (100, now)}))
    watched.reads.status = peering_object("u1", "team-a", {"me": (100, now), "newer": (200, now)})["status"]
    assert not outranked(watched, "team-a")
    assert outranked(watched, "team-a", fresh=True)
    assert outranked(watched, "team-a", fresh=True)
    assert watched.reads.reads == 2  # fresh means read now, every time


def test_nothing_is_done_before_the_peering_object_was_read() -> None:
    reads = PeeringReads()
    chosen, _ = election(reads, synced=False)
    reads.fail = True
    assert asyncio.run(chosen.outranked("team-a"))  # unreadable: act on nothing
    assert asyncio.run(chosen.outranked("team-a", fresh=True))
    reads.fail = False
    reads.status = peering_object("u1", "team-a", {"me": (100, datetime.now(UTC))})["status"]
    assert not asyncio.run(chosen.outranked("team-a"))  # read once: nobody outranks us
    assert not asyncio.run(chosen.outranked("team-a"))  # cached for STANDBY_RECHECK s
    assert reads.reads == 3


def test_a_missing_peering_object_outranks_nobody() -> None:
    reads = PeeringReads()  # answers None, as the API adapter does for a 404
    chosen, _ = election(reads, synced=False)
    assert not asyncio.run(chosen.outranked("team-a", fresh=True))


def test_outranked_by_a_live_peer_with_a_higher_priority_only() -> None:
    now = datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC)
    live = {"priority": 200, "lifetime": 10, "lastseen": "2026-11-28T12:00:05+00:00"}
    assert peering.outranked({"me": {"priority": 100, "lifetime": 10, "lastseen": live["lastseen"]},
                              "newer": live}, 100, now)
    assert not peering.outranked({"older": {**live, "priority": 50}}, 100, now)
    assert not peering.outranked({"dead": {**live, "lastseen": "2026-11-28T11:59:00+00:00"}}, 100, now)
    assert not peering.outranked({"junk": {"priority": "x"}, "none": None}, 100, now)
    assert not peering.outranked(None, 100, now)
