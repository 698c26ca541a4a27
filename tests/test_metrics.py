"""The metrics module: status-mirrored gauges, deleted series stay deleted, bounded labels."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from pullhealth import metrics
from pullhealth.pods import podcheck
from support.operatorproc import free_port


def value(metric: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(metric, labels)


def series(metric: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of ``metric`` whose labels include ``labels``."""
    found = []
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric and labels.items() <= sample.labels.items():
                found.append(dict(sample.labels))
    return found


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace name no other test uses (the registry is process-wide)."""
    yield f"t-{uuid.uuid4().hex[:8]}"
    metrics.set_admin_registries(())


STATUS_UNHEALTHY = {"phase": "Unhealthy", "code": "TAG_NOT_FOUND", "lastCheckTime": "2026-01-02T03:04:05Z"}


def test_gauges_say_what_the_status_says(ns: str) -> None:
    metrics.export_registry_check(ns, "a", "uid-a", "Reg.Example:5000", 300, STATUS_UNHEALTHY)
    assert value("pullhealth_registry_check_healthy", namespace=ns, name="a", registry="reg.example:5000") == 0
    assert value("pullhealth_registry_check_last_run_timestamp_seconds", namespace=ns, name="a") == 1767323045
    assert value("pullhealth_registry_check_interval_seconds", namespace=ns, name="a") == 300
    # Idempotent; a new status replaces the values; suspended: no schedule, so never stale.
    healthy = {**STATUS_UNHEALTHY, "phase": "Healthy", "lastCheckTime": "2026-01-02T03:09:05Z"}
    for _ in range(2):
        metrics.export_registry_check(ns, "a", "uid-a", "reg.example:5000", None, healthy)
    assert value("pullhealth_registry_check_healthy", namespace=ns, name="a", registry="reg.example:5000") == 1
    assert value("pullhealth_registry_check_interval_seconds", namespace=ns, name="a") is None
    # Pending (first check running) and Invalid have no health series; the registry changes.
    metrics.export_registry_check(ns, "a", "uid-a", "other.example", 60, {"phase": "Pending"})
    assert series("pullhealth_registry_check_healthy", namespace=ns) == []
    assert value("pullhealth_registry_check_last_run_timestamp_seconds", namespace=ns, name="a") is None


def test_a_deleted_check_never_comes_back(ns: str) -> None:
    metrics.export_registry_check(ns, "gone", "uid-1", "reg.example", 300, STATUS_UNHEALTHY)
    metrics.record_registry_check_run(ns, "gone", "uid-1", "TAG_NOT_FOUND", {"dns": 0.01})
    metrics.forget_registry_check(ns, "gone", "uid-1")
    # A run that was in flight finishes after the delete: nothing is exported again.
    metrics.record_registry_check_run(ns, "gone", "uid-1", "TAG_NOT_FOUND", {"dns": 0.01})
    metrics.export_registry_check(ns, "gone", "uid-1", "reg.example", 300, STATUS_UNHEALTHY)
    for metric in ("pullhealth_registry_check_healthy", "pullhealth_registry_check_runs_total",
                   "pullhealth_registry_check_last_run_timestamp_seconds",
                   "pullhealth_registry_check_interval_seconds"):
        assert series(metric, namespace=ns) == [], metric
    # A new object with the same name is a new uid: it is exported.
    metrics.export_registry_check(ns, "gone", "uid-2", "reg.example", 300, STATUS_UNHEALTHY)
    assert value("pullhealth_registry_check_healthy", namespace=ns, name="gone", registry="reg.example") == 0


def test_a_standby_withdraws_and_may_export_again(ns: str) -> None:
    metrics.export_registry_check(ns, "s", "uid-s", "reg.example", 300, STATUS_UNHEALTHY)
    metrics.withdraw_registry_check(ns, "s")
    metrics.withdraw_registry_check(ns, "never-exported")
    assert series("pullhealth_registry_check_healthy", namespace=ns) == []
    assert series("pullhealth_registry_check_interval_seconds", namespace=ns) == []
    metrics.export_registry_check(ns, "s2", "uid-s2", "reg.example", 300, STATUS_UNHEALTHY)
    assert ns in metrics.exported_registry_check_namespaces()
    metrics.withdraw_registry_checks(ns)
    assert ns not in metrics.exported_registry_check_namespaces()
    # Not deleted: once active again it exports.
    metrics.export_registry_check(ns, "s", "uid-s", "reg.example", 300, STATUS_UNHEALTHY)
    assert value("pullhealth_registry_check_healthy", namespace=ns, name="s", registry="reg.example") == 0


def test_tombstones_are_bounded(ns: str) -> None:
    for i in range(metrics.MAX_TOMBSTONES + 5):
        metrics.forget_registry_check(ns, f"x{i}", f"{ns}-{i}")
    assert len(metrics._deleted) == metrics.MAX_TOMBSTONES


def test_registry_labels_only_for_admin_listed_registries(ns: str) -> None:
    """Issue 21: a RegistryCheck naming a registry in one namespace does not make the
    cluster-wide series (other namespaces' failing pods, probe requests) name it."""
    host = f"{ns}.example"
    assert metrics.registry_label(host) == "other"
    metrics.export_registry_check(ns, "named", "uid-n", host, 300, STATUS_UNHEALTHY)
    assert metrics.registry_label(host.upper()) == "other"
    metrics.count_probe_request(host, "challenge")
    assert series("pullhealth_probe_requests_total", registry=host) == []
    metrics.forget_registry_check(ns, "named", "uid-n")
    # The admin's list names registries.
    metrics.set_admin_registries([f"  {host} ", ""])
    assert metrics.registry_label(host) == host
    metrics.count_probe_request(host, "challenge")
    assert value("pullhealth_probe_requests_total", registry=host, probe="challenge") == 1
    metrics.set_admin_registries([])
    assert series("pullhealth_probe_requests_total", registry=host) == []


def test_pod_failures_count_containers_and_relabel(ns: str) -> None:
    gauge = Gauge("t_pod_failures", "test", ["namespace", "registry", "code"], registry=CollectorRegistry())
    tracker = metrics.PodFailureTracker(gauge)
    host = f"{ns}.example"

    def samples() -> dict[tuple[str, str, str], float]:
        return {(s.labels["namespace"], s.labels["registry"], s.labels["code"]): s.value
                for s in gauge.collect()[0].samples}

    tracker.set("p1", [(ns, host, "TAG_NOT_FOUND")])
    tracker.set("p2", [(ns, "random.example", "TAG_NOT_FOUND"), (ns, host, "TAG_NOT_FOUND")])
    assert samples() == {(ns, "other", "TAG_NOT_FOUND"): 3}
    metrics.set_admin_registries([host])
    tracker.relabel()
    assert samples() == {(ns, host, "TAG_NOT_FOUND"): 2, (ns, "other", "TAG_NOT_FOUND"): 1}
    assert tracker.namespaces() == {ns}
    tracker.withdraw("elsewhere")
    assert sum(samples().values()) == 3
    tracker.withdraw(ns)
    assert samples() == {} and tracker.namespaces() == set()
    tracker.set("p1", [(ns, host, "TAG_NOT_FOUND")])
    tracker.set("p2", [])
    tracker.forget("p1")
    tracker.forget("never-seen")
    assert samples() == {}


def failing_pod(annotations: dict[str, str], image: str = "reg.example/team/app:v9") -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns1", "uid": "u1", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
    }


def test_failures_recorded_on_a_pod_after_a_restart() -> None:
    ann = {podcheck.ANN_DIAGNOSIS: "TAG_NOT_FOUND", podcheck.ANN_CONTAINER: "app"}
    assert podcheck.recorded_failures(failing_pod(ann)) == [("ns1", "reg.example", "TAG_NOT_FOUND")]
    # Unknown code, another container, or recovered: nothing is counted.
    assert podcheck.recorded_failures(failing_pod({**ann, podcheck.ANN_DIAGNOSIS: "x" * 300})) == []
    assert podcheck.recorded_failures(failing_pod({**ann, podcheck.ANN_CONTAINER: "side"})) == []
    recovered = failing_pod(ann)
    recovered["status"] = {}
    assert podcheck.recorded_failures(recovered) == []
    gauge = Gauge("t_seed", "test", ["namespace", "registry", "code"], registry=CollectorRegistry())
    tracker = metrics.PodFailureTracker(gauge)
    tracker.seed_from_annotations(failing_pod(ann))
    tracker.seed_from_annotations(failing_pod(ann))  # seeded once; the handler replaces it
    assert [s.value for s in gauge.collect()[0].samples] == [1]


def test_build_info_and_bind_address() -> None:
    assert series("pullhealth_build_info")[0]["version"]
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"pullhealth_build_info{" in response.read()


def test_registry_check_series_are_bounded_per_namespace(ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: one namespace's RegistryChecks cannot grow the scrape without bound."""
    monkeypatch.setattr(metrics, "MAX_CHECKS_PER_NAMESPACE", 3)
    noisy, quiet = f"{ns}-noisy", f"{ns}-quiet"
    for i in range(10):
        metrics.export_registry_check(noisy, f"c{i}", f"{noisy}-{i}", "r.example", 300, STATUS_UNHEALTHY)
        metrics.record_registry_check_run(noisy, f"c{i}", f"{noisy}-{i}", "TAG_NOT_FOUND", {})
    metrics.export_registry_check(quiet, "one", f"{quiet}-1", "r.example", 300, STATUS_UNHEALTHY)
    assert len(series("pullhealth_registry_check_interval_seconds", namespace=noisy)) == 3
    assert len(series("pullhealth_registry_check_runs_total", namespace=noisy)) == 3
    assert len(series("pullhealth_registry_check_interval_seconds", namespace=quiet)) == 1
    assert value("pullhealth_registry_checks_unexported") >= 7
    # One exported check is deleted: the next one seen takes its place.
    metrics.forget_registry_check(noisy, "c0", f"{noisy}-0")
    metrics.export_registry_check(noisy, "c9", f"{noisy}-9", "r.example", 300, STATUS_UNHEALTHY)
    assert len(series("pullhealth_registry_check_interval_seconds", namespace=noisy)) == 3
    for i in range(10):
        metrics.forget_registry_check(noisy, f"c{i}", f"{noisy}-{i}")
    metrics.forget_registry_check(quiet, "one", f"{quiet}-1")
    assert value("pullhealth_registry_checks_unexported") == 0
