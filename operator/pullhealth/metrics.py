"""The one Prometheus registry and every metric pullhealth exports.

Label sets stay bounded: per RegistryCheck (namespace, name) plus a diagnosis code from a
fixed enum; per probe step; per registry host, but only for registries a RegistryCheck
names or the admin lists (``--metrics-registries``): any other host is ``other``.

The RegistryCheck gauges mirror the status (level-triggered): every wake-up of an object's
check loop exports what its status holds, so right after an operator restart the first
event (kopf delivers one per object as soon as it lists them) brings every gauge back with
the status values, without re-running a check. A deleted RegistryCheck's series are removed and stay removed:
its uid is remembered, so a check that finishes after the delete cannot export again.
"""

from __future__ import annotations

import contextlib
import platform
import ssl
import tempfile
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from pullhealth import __version__, tlscerts
from pullhealth.bounded import BoundedDict
from pullhealth.domain.model import Phase
from pullhealth.domain.reference import normalize_registry
from pullhealth.pods import podcheck

REGISTRY = CollectorRegistry(auto_describe=True)

OTHER = "other"
"""The registry label of every host no RegistryCheck names and the admin did not list."""

BUILD_INFO = Gauge(
    "pullhealth_build_info",
    "Always 1: the running operator's version (absent: the operator is not scraped).",
    ["version", "python_version"],
    registry=REGISTRY,
)
REGISTRY_CHECK_HEALTHY = Gauge(
    "pullhealth_registry_check_healthy",
    "1 when the RegistryCheck's status is Healthy, 0 when Unhealthy (no series otherwise).",
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
    "Unix time of the RegistryCheck's last finished check (status.lastCheckTime).",
    ["namespace", "name"],
    registry=REGISTRY,
)
REGISTRY_CHECK_INTERVAL = Gauge(
    "pullhealth_registry_check_interval_seconds",
    "spec.intervalSeconds of each RegistryCheck that is scheduled (not suspended, valid spec).",
    ["namespace", "name"],
    registry=REGISTRY,
)
REGISTRY_CHECKS_UNEXPORTED = Gauge(
    "pullhealth_registry_checks_unexported",
    "RegistryChecks without series because their namespace already has the most a namespace "
    "may export (MAX_CHECKS_PER_NAMESPACE).",
    registry=REGISTRY,
)
POD_PULL_FAILURES = Gauge(
    "pullhealth_pod_pull_failures",
    "Containers failing to pull now, by namespace, registry and diagnosis code.",
    ["namespace", "registry", "code"],
    registry=REGISTRY,
)
# Successful pulls, from kubelet's Pulled Events (issue 24). Labels: registry (the admin's
# list, else "other") and the node's pool (POOL_LABELS, at most MAX_POOLS names, else
# "other"): at most (listed registries + 1) x (MAX_POOLS + 1) x buckets series each.
_PULL_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
IMAGE_PULL_DURATION = Histogram(
    "pullhealth_image_pull_duration_seconds",
    "Time kubelet took to pull an image, from its Pulled Events (the pull itself, without "
    "waiting), by registry and node pool.",
    ["registry", "pool"],
    buckets=_PULL_SECONDS,
    registry=REGISTRY,
)
IMAGE_PULL_WAITING = Histogram(
    "pullhealth_image_pull_waiting_seconds",
    "Time a pull waited before it started (serialized pulls, maxParallelImagePulls), from "
    "kubelet's Pulled Events (\"including waiting\" minus the pull), by registry and node pool.",
    ["registry", "pool"],
    buckets=(0, *_PULL_SECONDS),
    registry=REGISTRY,
)
IMAGE_PULL_SIZE = Histogram(
    "pullhealth_image_pull_size_bytes",
    "Size of each pulled image, from kubelet's Pulled Events (kubelet 1.29+), by registry "
    "and node pool.",
    ["registry", "pool"],
    buckets=(1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 5e9, 1e10),
    registry=REGISTRY,
)
IMAGE_PULL_THROUGHPUT = Histogram(
    "pullhealth_image_pull_throughput_bytes_per_second",
    "Image size over pull time of each pull whose Pulled Event gives both (kubelet 1.29+; "
    "compressed layers fetched and unpacked), by registry and node pool.",
    ["registry", "pool"],
    buckets=(1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9),
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
POD_RECOVERIES = Counter(
    "pullhealth_pod_recoveries",
    "Failing pods whose cause was verified fixed on their own pull path: announced "
    "(PullRecoverable Event and annotation) or deleted so that their controller retries now "
    "(--restart-recovered-pods), by action.",
    ["action"],
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
NODE_PATH_DIAGNOSES = Counter(
    "pullhealth_node_path_diagnoses",
    "Pod diagnoses whose cause the node agent found on the pod's node (the node's own pull "
    "path: resolver, routes, CA bundle, containerd's hosts.toml), by node pool (at most "
    "MAX_POOLS pools by name, the rest 'other') and code: pull path broken on pool X.",
    ["pool", "code"],
    registry=REGISTRY,
)
# Node labels that name a node's pool (AKS, GKE, EKS, Karpenter), in this order.
POOL_LABELS = (
    "kubernetes.azure.com/agentpool",
    "agentpool",
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "karpenter.sh/nodepool",
)
MAX_POOLS = 32
_POOLS: set[str] = set()


def pool_label(labels: Mapping[str, str] | None) -> str:
    """A node's pool for metric labels: the first pool label, bounded to MAX_POOLS names."""
    name = next((str(labels[k]) for k in POOL_LABELS if labels and labels.get(k)), "")
    if not name:
        return OTHER
    if name in _POOLS or len(_POOLS) < MAX_POOLS:
        _POOLS.add(name)
        return name
    return OTHER


PATCH_FORBIDDEN = Counter(
    "pullhealth_patch_forbidden",
    "Writes the operator's RBAC did not allow (logged once per object, not retried).",
    ["resource"],
    registry=REGISTRY,
)
API_OUTAGES = Counter(
    "pullhealth_api_outages",
    "API server (or etcd behind it) outages the operator rode out: one per outage, however "
    "many requests were retried meanwhile (the log has one WARNING line for each).",
    registry=REGISTRY,
)

SCHEDULE_WAKEUPS = Counter(
    "pullhealth_registry_check_wakeups",
    "Times a RegistryCheck's schedule woke up (a check due, a retry, or the object changed): "
    "at rest, about one per RegistryCheck per interval.",
    registry=REGISTRY,
)

BUILD_INFO.labels(__version__, platform.python_version()).set(1)

MAX_TOMBSTONES = 10000
# RegistryChecks with series per namespace: one namespace's objects cannot grow the
# scrape without bound (the others are checked as usual, and counted as unexported).
MAX_CHECKS_PER_NAMESPACE = 500

_lock = threading.RLock()
_codes_seen: dict[tuple[str, str], set[str]] = {}
_registry_of: dict[tuple[str, str], str] = {}  # RegistryCheck -> the registry it names
_named: Tally[str] = Tally()  # registry -> how many RegistryChecks name it
_uid_of: dict[tuple[str, str], str] = {}
_exported_in: Tally[str] = Tally()  # namespace -> how many RegistryChecks have series
_unexported: set[tuple[str, str]] = set()
_deleted: BoundedDict[str, None] = BoundedDict(MAX_TOMBSTONES)  # uids of deleted RegistryChecks
_admin_registries: frozenset[str] = frozenset()
_probe_series: set[tuple[str, str]] = set()


# -- registry labels ------------------------------------------------------------------


def set_admin_registries(hosts: Iterable[str]) -> None:
    """The registries the admin wants labelled by name (``--metrics-registries``)."""
    global _admin_registries
    with _lock:
        _admin_registries = frozenset(normalize_registry(h) for h in hosts if h.strip())
        _relabel()


def registry_label(host: str) -> str:
    """``host`` when the admin listed it (``--metrics-registries``), else ``other``.

    Only the admin's list: these series are cluster-wide (every namespace's failing pods,
    every probe), so a registry named by a RegistryCheck in one namespace must not make
    other namespaces' failures on it appear under its name (an oracle for that namespace's
    author).
    """
    normal = normalize_registry(host)
    with _lock:
        known = normal in _admin_registries
    return normal if known else OTHER


def _set_registry(key: tuple[str, str], registry: str | None) -> str | None:
    """Record the registry a RegistryCheck names (None: none); returns the previous one."""
    old = _registry_of.pop(key, None)
    if old is not None:
        _named[old] -= 1
        if _named[old] <= 0:
            del _named[old]
    if registry is not None:
        _registry_of[key] = registry
        _named[registry] += 1
    return old


def _relabel() -> None:
    """The set of named registries changed: re-derive every registry-labelled series."""
    POD_FAILURES.relabel()
    for registry, probe in list(_probe_series):
        if registry != OTHER and registry_label(registry) == OTHER:
            _probe_series.discard((registry, probe))
            _remove(PROBE_REQUESTS, registry, probe)


# -- RegistryChecks -------------------------------------------------------------------


def export_registry_check(
    namespace: str,
    name: str,
    uid: str,
    registry: str | None,
    interval_seconds: int | None,
    status: Mapping[str, Any],
) -> None:
    """Make the RegistryCheck's gauges say what its status says (idempotent).

    Args:
        namespace: the RegistryCheck's namespace.
        name: its name.
        uid: its uid (a deleted uid never exports again).
        registry: the registry its spec names; None when the spec is invalid.
        interval_seconds: its schedule; None when suspended or invalid (no staleness then).
        status: the object's status as the API server holds it.
    """
    key = (namespace, name)
    phase = status.get("phase")
    last = _parse_time(status.get("lastCheckTime"))
    with _lock:
        if uid in _deleted:
            return
        if _uid_of.get(key) not in (None, uid):
            _forget_series(key)  # same name, new object
        if key not in _uid_of and _exported_in[namespace] >= MAX_CHECKS_PER_NAMESPACE:
            _unexported.add(key)
            REGISTRY_CHECKS_UNEXPORTED.set(len(_unexported))
            return
        if key not in _uid_of:
            _exported_in[namespace] += 1
        _uid_of[key] = uid
        registry = normalize_registry(registry) if registry else None
        old = _set_registry(key, registry)
        if old != registry:
            if old is not None:
                _remove(REGISTRY_CHECK_HEALTHY, namespace, name, old)
            _relabel()
        if registry and phase in (Phase.HEALTHY.value, Phase.UNHEALTHY.value):
            healthy = 1 if phase == Phase.HEALTHY.value else 0
            REGISTRY_CHECK_HEALTHY.labels(namespace, name, registry).set(healthy)
        elif registry:
            _remove(REGISTRY_CHECK_HEALTHY, namespace, name, registry)
        if last is not None:
            REGISTRY_CHECK_LAST_RUN.labels(namespace, name).set(last)
        else:
            _remove(REGISTRY_CHECK_LAST_RUN, namespace, name)
        if interval_seconds is not None:
            REGISTRY_CHECK_INTERVAL.labels(namespace, name).set(interval_seconds)
        else:
            _remove(REGISTRY_CHECK_INTERVAL, namespace, name)


def record_registry_check_run(
    namespace: str, name: str, uid: str, code: str, step_seconds: Mapping[str, float]
) -> None:
    """Count one finished RegistryCheck run (its gauges follow the status it writes)."""
    with _lock:
        if uid in _deleted or (namespace, name) not in _uid_of:
            return  # deleted, or not exported (its namespace's limit)
        _codes_seen.setdefault((namespace, name), set()).add(code)
        REGISTRY_CHECK_RUNS.labels(namespace, name, code).inc()
    for probe, seconds in step_seconds.items():
        REGISTRY_CHECK_DURATION.labels(probe).observe(seconds)


def forget_registry_check(namespace: str, name: str, uid: str | None = None) -> None:
    """Remove every series of a deleted RegistryCheck, for good (runs finishing later included)."""
    key = (namespace, name)
    with _lock:
        uid = uid or _uid_of.get(key)
        if uid:
            _deleted[uid] = None
        if _uid_of.get(key) in (None, uid):
            _forget_series(key)
            _relabel()


def withdraw_registry_check(namespace: str, name: str) -> None:
    """Stop exporting a RegistryCheck that exists (a standby replica: the active one exports it)."""
    with _lock:
        if (namespace, name) in _uid_of or (namespace, name) in _unexported:
            _forget_series((namespace, name))
            _relabel()


def exported_registry_check_namespaces() -> set[str]:
    """Namespaces of the RegistryChecks this process exports."""
    with _lock:
        return {namespace for namespace, _ in _uid_of}


def withdraw_registry_checks(namespace: str) -> None:
    """:func:`withdraw_registry_check` for every RegistryCheck of a namespace."""
    with _lock:
        for key in [k for k in _uid_of if k[0] == namespace]:
            withdraw_registry_check(*key)


def _forget_series(key: tuple[str, str]) -> None:
    namespace, name = key
    if _uid_of.pop(key, None) is not None:
        _exported_in[namespace] -= 1
        if _exported_in[namespace] <= 0:
            del _exported_in[namespace]
    if key in _unexported:
        _unexported.discard(key)
        REGISTRY_CHECKS_UNEXPORTED.set(len(_unexported))
    registry = _set_registry(key, None)
    codes = _codes_seen.pop(key, set())
    if registry is not None:
        _remove(REGISTRY_CHECK_HEALTHY, namespace, name, registry)
    for code in codes:
        _remove(REGISTRY_CHECK_RUNS, namespace, name, code)
    _remove(REGISTRY_CHECK_LAST_RUN, namespace, name)
    _remove(REGISTRY_CHECK_INTERVAL, namespace, name)


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never exported: nothing to remove
        metric.remove(*labels)


# -- probes and the endpoint ----------------------------------------------------------


def record_image_pull(registry: str, pool: str, seconds: float, waiting: float | None,
                      size: int | None, times: int = 1) -> None:
    """Observe ``times`` successful pulls kubelet reported with these figures, on a node of
    ``pool`` (:func:`pool_label`)."""
    labels = (registry_label(registry), pool)
    for _ in range(max(0, min(times, 1000))):
        IMAGE_PULL_DURATION.labels(*labels).observe(seconds)
        if waiting is not None:
            IMAGE_PULL_WAITING.labels(*labels).observe(waiting)
        if size is not None:
            IMAGE_PULL_SIZE.labels(*labels).observe(size)
            if seconds > 0:
                IMAGE_PULL_THROUGHPUT.labels(*labels).observe(size / seconds)


def count_probe_request(registry: str, probe: str) -> None:
    """Count one HTTP request of a probe chain (unnamed registries count as ``other``)."""
    label = registry_label(registry)
    with _lock:
        _probe_series.add((label, probe))
        PROBE_REQUESTS.labels(label, probe).inc()


def serve(
    port: int,
    addr: str = "0.0.0.0",
    authorize: Callable[[str | None], int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Expose /metrics on a background thread, on ``addr`` (0.0.0.0: every interface).

    Args:
        port: the port.
        addr: the address to listen on.
        authorize: the ``Authorization`` header -> the HTTP status to answer (200 serves
            the metrics); None serves everyone (``--no-metrics-secure``).
        tls: serve HTTPS with this context (None: plain HTTP).
    """
    if authorize is None and tls is None:
        start_http_server(port, addr=addr, registry=REGISTRY)
        return
    server = _MetricsServer((addr, port), _MetricsHandler)
    server.authorize = authorize
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="pullhealth-metrics", daemon=True).start()


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    authorize: Callable[[str | None], int] | None = None


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per scrape would be noise; refusals are counted by the status

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"not found\n")
            return
        authorize = self.server.authorize
        status = authorize(self.headers.get("Authorization")) if authorize is not None else 200
        if status != 200:
            reason = {401: b"Unauthorized\n", 403: b"Forbidden\n"}.get(status, b"Unavailable\n")
            self._answer(status, reason, {"WWW-Authenticate": "Bearer"} if status == 401 else {})
            return
        self._answer(200, generate_latest(REGISTRY), {"Content-Type": CONTENT_TYPE_LATEST})

    def _answer(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def self_signed_context(directory: str | None = None) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (what controller-runtime's
    secure metrics serving does without a configured one; Prometheus scrapes it with
    ``insecureSkipVerify`` and authenticates with its token, which TLS keeps off the wire)."""
    bundle = tlscerts.generate(["pullhealth-metrics"])
    where = tempfile.mkdtemp(prefix="pullhealth-metrics-", dir=directory)
    cert_path, key_path = f"{where}/{tlscerts.TLS_CRT}", f"{where}/{tlscerts.TLS_KEY}"
    with open(cert_path, "w") as out:
        out.write(bundle.tls_crt)
    with open(key_path, "w") as out:
        out.write(bundle.tls_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


# -- failing pods ---------------------------------------------------------------------


class PodFailureTracker:
    """Keeps ``pullhealth_pod_pull_failures`` equal to the containers failing now.

    Each pod (by uid) contributes one (namespace, registry host, code) per failing
    container; a pod's contribution is replaced on every evaluation and dropped when it
    recovers or is deleted, so the gauge never drifts and empty series are removed. Hosts
    become registry labels through :func:`registry_label` when exported, and are
    re-derived when the set of named registries changes.
    """

    def __init__(self, gauge: Gauge = POD_PULL_FAILURES) -> None:
        self._gauge = gauge
        self._by_pod: dict[str, list[tuple[str, str, str]]] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = _lock  # one lock with the registry labels: no lock-order inversion

    def known(self, uid: str) -> bool:
        """Whether the pod was evaluated (or seeded) since the operator started."""
        with self._lock:
            return uid in self._by_pod

    def set(self, uid: str, failures: list[tuple[str, str, str]]) -> None:
        """Replace a pod's failing containers (namespace, registry host, code); [] = recovered."""
        with self._lock:
            if self._by_pod.get(uid, []) == failures:
                return  # unchanged: no series is touched
            old = self._by_pod.pop(uid, [])
            if failures:
                self._by_pod[uid] = list(failures)
            touched = set()
            for key in old:
                label = self._label(key)
                self._counts[label] -= 1
                touched.add(label)
            for key in failures:
                label = self._label(key)
                self._counts[label] = self._counts.get(label, 0) + 1
                touched.add(label)
            self._export(touched)

    def seed_from_annotations(self, pod: Mapping[str, Any]) -> None:
        """After a restart: the diagnosis recorded on the pod, until the pod is re-evaluated."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid and not self.known(uid):
            self.set(uid, podcheck.recorded_failures(pod))

    def forget(self, uid: str) -> None:
        """A deleted pod."""
        with self._lock:
            if uid in self._by_pod:
                self.set(uid, [])

    def namespaces(self) -> frozenset[str]:
        """Namespaces with failing containers counted here."""
        with self._lock:
            return frozenset(key[0] for keys in self._by_pod.values() for key in keys)

    def withdraw(self, namespace: str) -> None:
        """Stop counting a namespace's pods (a standby replica: the active one counts them)."""
        with self._lock:
            for uid in [u for u, keys in self._by_pod.items() if any(k[0] == namespace for k in keys)]:
                self.set(uid, [])

    def relabel(self) -> None:
        """Re-derive every series (the set of named registries changed)."""
        with self._lock:
            before = set(self._counts)
            self._counts = {}
            for keys in self._by_pod.values():
                for key in keys:
                    label = self._label(key)
                    self._counts[label] = self._counts.get(label, 0) + 1
            self._export(before | set(self._counts))

    @staticmethod
    def _label(key: tuple[str, str, str]) -> tuple[str, str, str]:
        namespace, host, code = key
        return namespace, registry_label(host), code

    def _export(self, labels: Iterable[tuple[str, str, str]]) -> None:
        for label in labels:
            count = self._counts.get(label, 0)
            if count <= 0:
                self._counts.pop(label, None)
                _remove(self._gauge, *label)
            else:
                self._gauge.labels(*label).set(count)


POD_FAILURES = PodFailureTracker()


# -- workload image checks (issue 22) ---------------------------------------------------

# Series of pullhealth_workload_image_problems at most: the gauge has one series per
# workload container with a problem now (none for healthy ones), so its size is the number
# of problems, never the number of workloads; past this bound the rest are counted only.
MAX_WORKLOAD_SERIES = 5000
WORKLOAD_IMAGE_PROBLEMS = Gauge(
    "pullhealth_workload_image_problems",
    "1 for each workload container whose image check found a problem now (its next pull "
    "would fail, or its running tag was deleted or moved), by namespace, kind, workload, "
    "container and code; no series for healthy containers (at most MAX_WORKLOAD_SERIES).",
    ["namespace", "kind", "workload", "container", "code"],
    registry=REGISTRY,
)
WORKLOAD_PROBLEMS_UNEXPORTED = Gauge(
    "pullhealth_workload_image_problems_unexported",
    "Workload container problems without a series because MAX_WORKLOAD_SERIES were exported.",
    registry=REGISTRY,
)
WORKLOAD_CHECKS = Counter(
    "pullhealth_workload_checks",
    "Workload image checks run (one per workload per pass, or on a change).",
    registry=REGISTRY,
)
REGISTRY_RATELIMIT_LIMIT = Gauge(
    "pullhealth_registry_ratelimit_limit",
    "The registry's RateLimit-Limit on the last manifest answer a probe chain got (Docker "
    "Hub: pulls per window), by registry (named ones; others share 'other').",
    ["registry"],
    registry=REGISTRY,
)
REGISTRY_RATELIMIT_REMAINING = Gauge(
    "pullhealth_registry_ratelimit_remaining",
    "The registry's RateLimit-Remaining on the last manifest answer a probe chain got, by "
    "registry (named ones; others share 'other').",
    ["registry"],
    registry=REGISTRY,
)
WORKLOADS_KNOWN = Gauge(
    "pullhealth_workloads",
    "Workloads (and pods) whose images are checked, by kind.",
    ["kind"],
    registry=REGISTRY,
)


class WorkloadProblems:
    """Keeps ``pullhealth_workload_image_problems`` equal to the problems found now.

    Each workload (by uid) contributes one series per container with a problem; its
    contribution is replaced on every check and dropped when it is deleted.
    """

    def __init__(self, gauge: Gauge = WORKLOAD_IMAGE_PROBLEMS, limit: int = MAX_WORKLOAD_SERIES) -> None:
        self._gauge = gauge
        self._limit = limit
        self._by_uid: dict[str, list[tuple[str, str, str, str, str]]] = {}
        self._unexported: dict[str, int] = {}
        self._exported = 0
        self._lock = threading.Lock()

    def set(
        self, uid: str, namespace: str, kind: str, name: str, findings: Iterable[tuple[str, str]]
    ) -> None:
        """Replace a workload's problems: (container name, code) pairs; none = healthy."""
        series = [(namespace, kind, name, container, code) for container, code in findings]
        with self._lock:
            if self._by_uid.get(uid, []) == series and not self._unexported.get(uid):
                return  # unchanged: no series is touched
            self._drop(uid)
            kept = series[: max(0, self._limit - self._exported)]
            for labels in kept:
                self._gauge.labels(*labels).set(1)
            if kept:
                self._by_uid[uid] = kept
                self._exported += len(kept)
            if len(series) > len(kept):
                self._unexported[uid] = len(series) - len(kept)
            WORKLOAD_PROBLEMS_UNEXPORTED.set(sum(self._unexported.values()))

    def forget(self, uid: str) -> None:
        """A deleted workload (or one no longer checked)."""
        with self._lock:
            self._drop(uid)
            WORKLOAD_PROBLEMS_UNEXPORTED.set(sum(self._unexported.values()))

    def _drop(self, uid: str) -> None:
        old = self._by_uid.pop(uid, [])
        self._unexported.pop(uid, None)
        self._exported -= len(old)
        for labels in old:
            _remove(self._gauge, *labels)


WORKLOAD_PROBLEMS = WorkloadProblems()


def record_registry_budget(registry: str, limit: int | None, remaining: int | None) -> None:
    """What a registry's RateLimit-Limit / -Remaining said on a chain's manifest answer."""
    label = registry_label(registry)
    if limit is not None:
        REGISTRY_RATELIMIT_LIMIT.labels(label).set(limit)
    if remaining is not None:
        REGISTRY_RATELIMIT_REMAINING.labels(label).set(remaining)
