"""Shared short-lived reads for pod diagnosis: one request per object per TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from pullhealth.domain import placement
from pullhealth.kube.watchcache import (
    CachedReader,
    Mirror,
    account_pull_fields,
    node_placement,
    node_platforms,
)


class Counting:
    """A ClusterReader over a dict of objects that counts the reads it serves."""

    def __init__(self, objects: dict[tuple[str, ...], Mapping[str, Any]], delay: float = 0.01) -> None:
        self.objects = objects
        self.delay = delay
        self.reads: list[tuple[str, ...]] = []
        self.fail = False

    async def _read(self, key: tuple[str, ...]) -> Mapping[str, Any] | None:
        self.reads.append(key)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("API server down")
        return self.objects.get(key)

    async def node(self, name: str) -> Mapping[str, Any] | None:
        return await self._read(("node", name))

    async def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._read(("account", namespace, name))

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._read(("secret", namespace, name))

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        return "token"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


NODE = {
    "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}, "managedFields": ["big"]},
    "status": {"images": ["many"]},
}
ACCOUNT = {
    "metadata": {"name": "default", "namespace": "ns", "annotations": {"a": "b"}},
    "imagePullSecrets": [{"name": "pull"}],
    "secrets": [{"name": "token"}],
}


def test_concurrent_readers_share_one_request_and_only_labels_are_kept() -> None:
    inner = Counting({("node", "n1"): NODE, ("account", "ns", "default"): ACCOUNT})
    reader = CachedReader(inner)

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(reader.node("n1") for _ in range(50)),
            *(reader.service_account("ns", "default") for _ in range(50)),
        )

    results = asyncio.run(many())
    assert inner.reads == [("node", "n1"), ("account", "ns", "default")]
    assert results[0] == {"metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}}}
    assert results[-1]["imagePullSecrets"] == [{"name": "pull"}] and "secrets" not in results[-1]


def test_reads_expire_absent_is_cached_errors_are_not() -> None:
    clock = Clock()
    inner = Counting({("secret", "ns", "s"): {"data": {}}})
    reader = CachedReader(inner, secret_ttl=5.0, clock=clock)

    async def run() -> None:
        await reader.secret("ns", "s")
        await reader.secret("ns", "gone")
        clock.now = 4.9
        assert await reader.secret("ns", "s") == {"data": {}}
        assert await reader.secret("ns", "gone") is None
        assert len(inner.reads) == 2
        clock.now = 5.0
        await reader.secret("ns", "s")
        assert len(inner.reads) == 3
        inner.fail = True
        clock.now = 20.0
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await reader.secret("ns", "s")
        assert len(inner.reads) == 5
        assert await reader.service_account_token("ns", "sa", "aud") == "token"

    asyncio.run(run())


def test_bounded() -> None:
    inner = Counting({}, delay=0)
    reader = CachedReader(inner, limit=10)

    async def run() -> None:
        for i in range(100):
            await reader.node(f"n{i}")

    asyncio.run(run())
    assert len(reader) == 10


def test_a_cancelled_reader_does_not_cancel_the_others() -> None:
    inner = Counting({("node", "n1"): NODE}, delay=0.2)
    reader = CachedReader(inner)

    async def run() -> Any:
        first = asyncio.create_task(reader.node("n1"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(reader.node("n1"))
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert asyncio.run(run())["metadata"]["labels"] == {"kubernetes.io/arch": "arm64"}
    assert len(inner.reads) == 1  # the shared read is not cancelled with its first caller


def account(namespace: str, name: str, uid: str, client_id: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid, "resourceVersion": "7",
                         "annotations": {"azure.workload.identity/client-id": client_id}},
            "imagePullSecrets": [{"name": "pull"}], "secrets": [{"name": "token-x"}]}


def test_a_synced_mirror_answers_without_a_request_and_sees_changes_at_once() -> None:
    inner = Counting({("account", "team", "late"): {"metadata": {"name": "late"}}})
    accounts, nodes = Mirror(account_pull_fields), Mirror(node_placement)
    reader = CachedReader(inner, accounts=accounts, nodes=nodes)
    accounts.deliver("LISTED", account("team", "default", "u1", "id-1"))
    nodes.deliver("LISTED", {"metadata": {"name": "n1", "uid": "n", "labels": {"kubernetes.io/arch": "arm64"}},
                             "spec": {"taints": [{"key": "arch", "value": "arm64", "effect": "NoSchedule"},
                                                 {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                                                  "timeAdded": "2026-12-04T00:00:00Z"}]},
                             "status": {"images": ["big"]}})

    async def main() -> None:
        # Not listed yet (start-up): reads go to the API server.
        await reader.service_account("team", "default")
        assert len(inner.reads) == 1
        accounts.listed = nodes.listed = lambda: True
        got = await reader.service_account("team", "default")
        assert got == {"metadata": {"name": "default", "namespace": "team",
                                    "annotations": {"azure.workload.identity/client-id": "id-1"}},
                       "imagePullSecrets": [{"name": "pull"}]}  # only what diagnosis uses
        # Labels and the taints that keep pods off (not the node's conditions' taints, not its status).
        assert await reader.node("n1") == {"metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}},
                                           "spec": {"taints": [{"key": "arch", "value": "arm64",
                                                                "effect": "NoSchedule"}]}}
        accounts.deliver("MODIFIED", account("team", "default", "u1", "id-2"))
        got = await reader.service_account("team", "default")
        assert got is not None and got["metadata"]["annotations"]["azure.workload.identity/client-id"] == "id-2"
        assert len(inner.reads) == 1  # none of these was a request
        # One the mirror lacks (created a moment ago, its event on its way): read it.
        assert await reader.service_account("team", "late") == {
            "metadata": {"name": "late", "namespace": None, "annotations": {}}, "imagePullSecrets": []}
        assert inner.reads[-1] == ("account", "team", "late")
        # A deletion reported by uid (a re-list) forgets it.
        accounts.deliver("DELETED", {"metadata": {"uid": "u1"}})
        assert accounts.get("team", "default") is None

    asyncio.run(main())


def test_a_mirror_past_its_limit_stops_answering() -> None:
    mirror = Mirror(account_pull_fields, limit=2)
    mirror.listed = lambda: True
    for i in range(2):
        mirror.deliver("LISTED", account("team", f"a{i}", f"u{i}", "x"))
    assert mirror.get("team", "a0") is not None
    mirror.deliver("LISTED", account("team", "a2", "u2", "x"))
    assert len(mirror) == 2 and mirror.get("team", "a0") is None  # readers fall back to GETs


def test_a_recreated_object_survives_the_deletion_of_its_predecessor_reported_late() -> None:
    mirror = Mirror(account_pull_fields)
    mirror.listed = lambda: True
    mirror.deliver("LISTED", account("team", "ci", "old", "id-1"))
    # A re-list after a watch gap: the new object (same name, new uid) is listed first,
    # then the one no longer listed is reported deleted, by its uid.
    mirror.deliver("LISTED", account("team", "ci", "new", "id-2"))
    mirror.deliver("DELETED", {"metadata": {"uid": "old"}})
    got = mirror.get("team", "ci")
    assert got is not None and got["metadata"]["annotations"]["azure.workload.identity/client-id"] == "id-2"


def test_derived_answers_are_reused_until_what_is_kept_changes() -> None:
    """A Node's heartbeat (status only) recomputes nothing; a label or taint change, a new
    Node, a deletion, the first listing each do; distinct keys are distinct answers."""
    nodes = Mirror(node_placement)
    listed = [False]
    nodes.listed = lambda: listed[0]
    computed: list[str] = []

    def count(key: str) -> int:
        def compute(objects: list[Any]) -> int:
            computed.append(key)
            return len(objects)

        return nodes.derived(key, compute)

    def node(name: str, uid: str, arch: str, heartbeat: str = "t0", taint: bool = False) -> dict[str, Any]:
        return {"metadata": {"name": name, "uid": uid, "labels": {"kubernetes.io/arch": arch}},
                "spec": {"taints": [{"key": "pool", "value": "x", "effect": "NoSchedule"}] if taint else []},
                "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}]}}

    nodes.deliver("LISTED", node("a", "1", "amd64"))
    assert count("k") == 0 and computed == ["k"]  # not listed yet: no objects
    listed[0] = True
    assert count("k") == 1 and count("k") == 1 and computed == ["k", "k"]
    assert count("other") == 1 and computed[-1] == "other"
    for change in (node("a", "1", "amd64", heartbeat="t1"), node("a", "1", "amd64", heartbeat="t2")):
        nodes.deliver("MODIFIED", change)
        assert count("k") == 1
    assert computed == ["k", "k", "other"]  # heartbeats kept nothing new
    nodes.deliver("MODIFIED", node("a", "1", "amd64", taint=True))
    assert count("k") == 1 and len(computed) == 4
    nodes.deliver("ADDED", node("b", "2", "arm64"))
    assert count("k") == 2 and len(computed) == 5
    nodes.deliver("DELETED", {"metadata": {"uid": "2"}})
    assert count("k") == 1 and len(computed) == 6


def test_node_platforms_through_the_mirror_equal_placements_own() -> None:
    nodes = Mirror(node_placement)
    nodes.listed = lambda: True
    for name, arch in (("a", "amd64"), ("b", "arm64")):
        nodes.deliver("LISTED", {"metadata": {"name": name, "uid": name, "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}}})
    arm = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}
    for spec, node in (({}, ""), (arm, ""), ({}, "a"), ({}, "gone")):
        expected = placement.node_platforms(nodes.objects(), spec, "x", node)
        assert node_platforms(nodes, spec, "x", node) == expected
    assert node_platforms(nodes, arm, "x") == ("linux/arm64",)
    assert node_platforms(nodes, {}, "x", "a") == ("linux/amd64",)
    assert node_platforms(None, arm, "linux/amd64") == ("linux/amd64",)  # no mirror: the default
