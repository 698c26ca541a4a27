"""kubelet's pull-failure Events kept per pod: newest first, bounded, forgotten when gone."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from pullhealth.pods.kubeletevents import KubeletFailures


def event(uid: str, pod: str, message: str, moment: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid}, "involvedObject": {"kind": "Pod", "uid": pod},
            "reason": "Failed", "message": message, "lastTimestamp": moment}


@pytest.fixture()
def failures(monkeypatch: pytest.MonkeyPatch) -> KubeletFailures:
    monkeypatch.setattr(KubeletFailures, "synced", property(lambda self: True))
    return KubeletFailures(kubernetes.client.ApiClient(), per_pod=2, limit=2)


def test_newest_pull_messages_first_and_other_failures_ignored(failures: KubeletFailures) -> None:
    deliver = failures._event
    deliver("LISTED", event("e1", "p1", 'Failed to pull image "a": not found', "2026-11-30T08:00:00Z"))
    deliver("ADDED", event("e2", "p1", 'Failed to pull image "a": 401', "2026-11-30T08:01:00Z"))
    deliver("ADDED", event("e3", "p1", 'Failed to pull image "a": timeout', "2026-11-30T08:02:00Z"))
    deliver("ADDED", event("e4", "p1", "Error: container exited", "2026-11-30T08:03:00Z"))
    assert failures.messages("p1") == ['Failed to pull image "a": timeout', 'Failed to pull image "a": 401']


def test_a_deletion_found_by_a_relist_carries_only_the_uid(failures: KubeletFailures) -> None:
    failures._event("LISTED", event("e1", "p1", 'Failed to pull image "a": not found', "2026-11-30T08:00:00Z"))
    failures._event("DELETED", {"metadata": {"uid": "e1"}})
    assert failures.messages("p1") == [] and len(failures) == 0


def test_bounded_in_pods_and_in_the_uid_index(failures: KubeletFailures) -> None:
    for i in range(5):
        failures._event("ADDED", event(f"e{i}", f"p{i}", 'Failed to pull image "a": x', f"2026-11-30T08:0{i}:00Z"))
    assert len(failures) == 2 and failures.messages("p0") == [] and failures.messages("p4") != []
    assert len(failures._pod_of) == 2  # evicted pods' Events are not indexed any more
