"""The one Prometheus registry and every metric pullhealth exports.

Label sets stay bounded: per RegistryCheck (namespace, name) plus a diagnosis code from a
fixed enum; per probe step; per registry host. Series of a deleted RegistryCheck are
removed by :func:`forget_registry_check`.
"""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

REGISTRY_CHECK_HEALTHY = Gauge(
    "pullhealth_registry_check_healthy",
    "1 when the RegistryCheck's last check was healthy, else 0.",
    ["namespace", "name", "registry"],
    registry=REGISTRY,
)
REGISTRY_CHECK_RUNS = Counter(
    "pullhealth_registry_check_runs",
    "Checks run per RegistryCheck, by resulting diagnosis code.",
    ["namespace", "name", "code"],
    registry=REGISTRY,
)
REGISTRY_CHECK_DURATION = Histogram(
    "pullhealth_registry_check_duration_seconds",
    "Duration of each probe step of RegistryCheck runs.",
    ["probe"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
REGISTRY_CHECK_LAST_RUN = Gauge(
    "pullhealth_registry_check_last_run_timestamp_seconds",
    "Unix time of the RegistryCheck's last finished check.",
    ["namespace", "name"],
    registry=REGISTRY,
)
POD_PULL_FAILURES = Gauge(
    "pullhealth_pod_pull_failures",
    "Containers failing to pull now, by namespace, registry and diagnosis code.",
    ["namespace", "registry", "code"],
    registry=REGISTRY,
)
DIAGNOSES = Counter(
    "pullhealth_diagnoses",
    "Pull failures diagnosed, by code.",
    ["code"],
    registry=REGISTRY,
)
PROBE_REQUESTS = Counter(
    "pullhealth_probe_requests",
    "HTTP requests sent to registries and token services by probe step.",
    ["registry", "probe"],
    registry=REGISTRY,
)
POD_VANTAGE_DIFFERENCES = Counter(
    "pullhealth_pod_vantage_differences",
    "Pod diagnoses where the operator's own probe failed at an earlier layer than kubelet's "
    "message shows the node reached (the operator's network cannot reach the registry), by "
    "the layer the probe failed at (dns, tcp, tls, http, token).",
    ["layer"],
    registry=REGISTRY,
)
PATCH_FORBIDDEN = Counter(
    "pullhealth_patch_forbidden",
    "Writes the operator's RBAC did not allow (logged once per object, not retried).",
    ["resource"],
    registry=REGISTRY,
)

_lock = threading.Lock()
_codes_seen: dict[tuple[str, str], set[str]] = {}
_registry_of: dict[tuple[str, str], str] = {}


def record_registry_check(
    namespace: str,
    name: str,
    registry: str,
    code: str,
    healthy: bool,
    step_seconds: dict[str, float],
    finished_at: float,
) -> None:
    """Export one finished RegistryCheck run."""
    key = (namespace, name)
    with _lock:
        old_registry = _registry_of.get(key)
        if old_registry is not None and old_registry != registry:
            _remove(REGISTRY_CHECK_HEALTHY, namespace, name, old_registry)
        _registry_of[key] = registry
        _codes_seen.setdefault(key, set()).add(code)
    REGISTRY_CHECK_HEALTHY.labels(namespace, name, registry).set(1 if healthy else 0)
    REGISTRY_CHECK_RUNS.labels(namespace, name, code).inc()
    REGISTRY_CHECK_LAST_RUN.labels(namespace, name).set(finished_at)
    for probe, seconds in step_seconds.items():
        REGISTRY_CHECK_DURATION.labels(probe).observe(seconds)


def forget_registry_check(namespace: str, name: str) -> None:
    """Remove every series of a deleted RegistryCheck."""
    key = (namespace, name)
    with _lock:
        registry = _registry_of.pop(key, None)
        codes = _codes_seen.pop(key, set())
    if registry is not None:
        _remove(REGISTRY_CHECK_HEALTHY, namespace, name, registry)
    for code in codes:
        _remove(REGISTRY_CHECK_RUNS, namespace, name, code)
    _remove(REGISTRY_CHECK_LAST_RUN, namespace, name)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never exported: nothing to remove
        metric.remove(*labels)


def count_probe_request(registry: str, probe: str) -> None:
    """Count one HTTP request of a probe chain."""
    PROBE_REQUESTS.labels(registry, probe).inc()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)


class PodFailureTracker:
    """Keeps ``pullhealth_pod_pull_failures`` equal to the containers failing now.

    Each pod (by uid) contributes one (namespace, registry, code) per failing container;
    a pod's contribution is replaced on every evaluation and dropped when it recovers or
    is deleted, so the gauge never drifts and empty series are removed.
    """

    def __init__(self, gauge: Gauge = POD_PULL_FAILURES) -> None:
        self._gauge = gauge
        self._by_pod: dict[str, list[tuple[str, str, str]]] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, labels: list[tuple[str, str, str]]) -> None:
        """Replace a pod's failing containers (empty list: recovered)."""
        with self._lock:
            for key in self._by_pod.pop(uid, []):
                self._counts[key] -= 1
            if labels:
                self._by_pod[uid] = list(labels)
            for key in labels:
                self._counts[key] = self._counts.get(key, 0) + 1
            for key, count in list(self._counts.items()):
                if count <= 0:
                    del self._counts[key]
                    _remove(self._gauge, *key)
                else:
                    self._gauge.labels(*key).set(count)

    def forget(self, uid: str) -> None:
        """A deleted pod."""
        self.set(uid, [])


POD_FAILURES = PodFailureTracker()
