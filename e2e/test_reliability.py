"""Faults and concurrency: exactly one Event per diagnosis, one writer, fail-over, outages.

Every test here stops the session operator (a second writer would change what is counted)
and runs its own operator processes, started the way the chart starts them (``POD_NAME``
from the downward API, ``--peering`` in HA mode), then starts the session operator again.
The kubelet side is played by the test (see support/kubelet.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.kubelet import fail_pull, kubelet_message, make_pod
from support.objects import regcheck_yaml
from support.operatorproc import OperatorProcess, records
from support.world import World

ROOT = Path(__file__).resolve().parents[1]
PEERING_CRDS = ROOT / "charts" / "pullhealth" / "crds" / "kopf-peering.yaml"
ANN = "pullhealth.io/diagnosis"


@pytest.fixture
def alone(operator: OperatorProcess) -> Iterator[None]:
    """The session operator is stopped for the test and started again after it."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def spawn(dev_cluster: Any, world: World, tmp_path: Path, name: str, *args: str) -> OperatorProcess:
    return OperatorProcess(dev_cluster.kubeconfig, world, tmp_path / f"{name}.log",
                           ["--pod-interval", "60", *args], env={"POD_NAME": name, "POD_ID": name})


def failing_pods(api: Any, ns: str, world: World, names: list[str], tag: str) -> None:
    image = f"{world.anon}/team/app:{tag}"
    message = kubelet_message("tag_not_found", image)
    for name in names:
        pod = make_pod(api, ns, name, image)
        fail_pull(api, ns, pod, image, message, event=False)


def annotated(api: Any, ns: str) -> set[str]:
    return {p.metadata.name for p in api.list_namespaced_pod(ns).items if (p.metadata.annotations or {}).get(ANN)}


def our_events(cluster: Any, ns: str, reasons: tuple[str, ...]) -> list[dict[str, Any]]:
    """The Events as ``kubectl get events`` shows them (the core/v1 view of events.k8s.io)."""
    out = cluster.kubectl("-n", ns, "get", "events", "-o", "json").stdout
    return [e for e in json.loads(out)["items"] if e["reason"] in reasons]


def per_object(events: list[dict[str, Any]], reason: str) -> collections.Counter[str]:
    """Occurrences per object: Event objects, each counted with its series."""
    counts: collections.Counter[str] = collections.Counter()
    for e in events:
        if e["reason"] == reason:
            counts[e["involvedObject"]["name"]] += int((e.get("series") or {}).get("count") or 1)
    return counts


def runs(op: OperatorProcess) -> dict[str, float]:
    """pullhealth_registry_check_runs_total per RegistryCheck name."""
    total: dict[str, float] = collections.defaultdict(float)
    for line in op.metrics().splitlines():
        if line.startswith("pullhealth_registry_check_runs_total{"):
            name = re.search(r'name="([^"]+)"', line)
            if name:
                total[name.group(1)] += float(line.rsplit(" ", 1)[1])
    return total


def test_events_read_back_as_kubectl_shows_them(
    dev_cluster: Any, world: World, namespace: str, api: Any, wait_for: Callable[..., Any],
    alone: None, tmp_path: Path,
) -> None:
    ns = namespace
    with spawn(dev_cluster, world, tmp_path, "pullhealth-7d9f-x1") as op:
        image = f"{world.anon}/team/app:events"
        pod = make_pod(api, ns, "init-fails", image, init=True)
        fail_pull(api, ns, pod, image, kubelet_message("tag_not_found", image), init=True)
        dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(
            "missingtag", {"registry": world.anon, "image": "team/app:nosuchtag"}, timeout=10))
        wait_for(lambda: "init-fails" in annotated(api, ns), "pod diagnosed", timeout=60)
        diagnosed = wait_for(lambda: our_events(dev_cluster, ns, ("PullDiagnosed",)), "PullDiagnosed", timeout=30)
        failed = wait_for(lambda: [e for e in our_events(dev_cluster, ns, ("CheckFailed",))
                                   if e["message"].startswith("TAG_NOT_FOUND")], "CheckFailed", timeout=90)
        regcheck = yaml.safe_load(dev_cluster.kubectl("-n", ns, "get", "regcheck", "missingtag", "-o", "yaml").stdout)
        log = op.text()

    event = diagnosed[0]
    assert event["reportingComponent"] == "pullhealth.io/operator", event
    assert event["reportingInstance"] == "pullhealth-7d9f-x1", event
    assert event["action"] == "Diagnose" and event["type"] == "Warning", event
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == "init-fails"
    assert event["involvedObject"]["fieldPath"] == "spec.initContainers{app}", event
    assert event["message"].startswith("TAG_NOT_FOUND: ")
    check = failed[0]
    assert (check["reportingComponent"], check["action"]) == ("pullhealth.io/operator", "Check"), check
    assert check["involvedObject"]["kind"] == "RegistryCheck"
    # kubectl get regcheck -o yaml: CamelCase condition reason, the code in its own field,
    # skipped steps without a code, no claim left behind.
    status = regcheck["status"]
    assert status["code"] == "TAG_NOT_FOUND"
    assert [c["reason"] for c in status["conditions"]] == ["TagNotFound"]
    assert all("code" not in step for step in status["checks"] if step["status"] == "skipped")
    assert any("code" in step for step in status["checks"])
    assert "claim" not in status
    assert "another pullhealth operator" not in log


def test_a_repeated_diagnosis_is_counted_in_its_events_series(
    dev_cluster: Any, operator: OperatorProcess, world: World, namespace: str, api: Any,
    wait_for: Callable[..., Any],
) -> None:
    """TAG_NOT_FOUND -> RATE_LIMITED -> TAG_NOT_FOUND: two Events, the first with series.count 2."""
    ns = namespace
    missing, limited = f"{world.anon}/team/app:series", f"{world.ratelimit}/team/app:v1"
    pod = make_pod(api, ns, "flip", missing)
    for image, mode, code in ((missing, "tag_not_found", "TAG_NOT_FOUND"),
                              (limited, "rate_limited_429", "RATE_LIMITED"),
                              (missing, "tag_not_found", "TAG_NOT_FOUND")):
        api.patch_namespaced_pod("flip", ns, {"spec": {"containers": [{"name": "app", "image": image}]}})
        pod = dict(api.api_client.sanitize_for_serialization(api.read_namespaced_pod("flip", ns)))
        fail_pull(api, ns, pod, image, kubelet_message(mode, image), event=False)
        wait_for(lambda code=code: (api.read_namespaced_pod("flip", ns).metadata.annotations or {}).get(ANN) == code,
                 f"diagnosis {code}", timeout=60)
    events = our_events(dev_cluster, ns, ("PullDiagnosed",))
    by_code = {e["message"].split(":", 1)[0]: e for e in events}
    assert sorted(by_code) == ["RATE_LIMITED", "TAG_NOT_FOUND"] and len(events) == 2, events
    assert (by_code["TAG_NOT_FOUND"].get("series") or {}).get("count") == 2, by_code["TAG_NOT_FOUND"]
    assert not by_code["RATE_LIMITED"].get("series"), by_code["RATE_LIMITED"]


def test_two_operators_without_leader_election_post_one_event_each(
    dev_cluster: Any, world: World, namespace: str, api: Any, wait_for: Callable[..., Any],
    alone: None, tmp_path: Path,
) -> None:
    """A misconfigured replicaCount: 2 without peering, or a rolling update's overlap."""
    ns = namespace
    count = 30
    names = [f"twin-{i}" for i in range(count)]
    checks = {"twin-healthy": {"registry": world.anon, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}},
              "twin-missing": {"registry": world.anon, "image": "team/app:nosuchtag"},
              "twin-dns": {"registry": world.missing, "image": "team/app:v1"}}
    first, second = spawn(dev_cluster, world, tmp_path, "op-a"), spawn(dev_cluster, world, tmp_path, "op-b")
    started = time.monotonic()
    with first, second:
        for name, spec in checks.items():
            # One run per interval: a 300 s interval leaves exactly one run to count.
            dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(name, spec, interval=300, timeout=10))
        failing_pods(api, ns, world, names, "twins")
        wait_for(lambda: annotated(api, ns) >= set(names), f"{count} pods annotated", timeout=120)

        def checked() -> bool:
            items = json.loads(dev_cluster.kubectl("-n", ns, "get", "regcheck", "-o", "json").stdout)["items"]
            return sum(1 for i in items if (i.get("status") or {}).get("lastCheckTime")) == len(checks)

        wait_for(checked, "every RegistryCheck checked", timeout=90)
        time.sleep(6)  # more timer ticks and watch events on both sides
        events = our_events(dev_cluster, ns, ("PullDiagnosed", "CheckFailed", "CheckSucceeded"))
        probed = collections.Counter(runs(first)) + collections.Counter(runs(second))
        elapsed = time.monotonic() - started
        logs = records(first.lines() + second.lines())

    assert per_object(events, "PullDiagnosed") == dict.fromkeys(names, 1)
    results = per_object(events, "CheckFailed") + per_object(events, "CheckSucceeded")
    assert results == dict.fromkeys(checks, 1), results
    # Claimed before probing: each run was made by one operator only (a healthy check runs
    # once per 300 s interval; a failing one is retried after 30 s, by whoever claims it).
    assert probed["twin-healthy"] == 1.0, probed
    assert all(1 <= probed[n] <= 1 + elapsed // 30 for n in checks), (probed, elapsed)
    # The operators noticed each other and said so, once each at most, with the fix.
    errors = [r for r in logs if "another pullhealth operator is active" in str(r.get("message"))]
    assert 1 <= len(errors) <= 2, errors
    assert all(r["severity"] == "error" and "peering.enabled=true" in r["message"] for r in errors), errors


@pytest.mark.parametrize("kill_at", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_sigkill_mid_batch_leaves_exactly_one_event_per_pod(
    dev_cluster: Any, world: World, namespace: str, api: Any, wait_for: Callable[..., Any],
    alone: None, tmp_path: Path, kill_at: float,
) -> None:
    """SIGKILL while failing pods are being diagnosed, restart: one PullDiagnosed each.

    100 pods when killed at 10 %; 30 at the other points (the same windows are hit, and
    the five repetitions stay within about three minutes on 2 cores).
    """
    ns = namespace
    count = 100 if kill_at == 0.1 else 30
    names = [f"crash-{i}" for i in range(count)]
    op = spawn(dev_cluster, world, tmp_path, "pullhealth-crash")
    op.start()
    try:
        image = f"{world.anon}/team/app:crash"
        message = kubelet_message("tag_not_found", image)
        killed_with = -1
        for i, name in enumerate(names):
            pod = make_pod(api, ns, name, image)
            fail_pull(api, ns, pod, image, message, event=False)
            if killed_with < 0 and i >= int(count * kill_at):
                # Kill once the operator is busy with the pods created so far.
                wait_for(lambda: len(annotated(api, ns)) >= max(1, int(count * kill_at) // 2),
                         "some pods annotated", timeout=60)
                op.kill()
                killed_with = len(annotated(api, ns))
        assert 0 < killed_with < count, killed_with
        time.sleep(2)
        op.start()
        wait_for(lambda: annotated(api, ns) >= set(names), f"{count} pods annotated after the restart", timeout=120)
        time.sleep(2)
    finally:
        op.stop()
    events = our_events(dev_cluster, ns, ("PullDiagnosed",))
    assert per_object(events, "PullDiagnosed") == dict.fromkeys(names, 1), (killed_with, len(events))


@contextlib.contextmanager
def two_replicas(dev_cluster: Any, world: World, namespace: str, tmp_path: Path, wait_for: Callable[..., Any],
                 name: str, *args: str) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two replicas as the chart runs them with peering.enabled, both live: (older, newer);
    the newest has the highest priority, so it is the active one."""
    peering = f"e2e-{name}-{namespace[-6:]}"
    dev_cluster.kubectl("apply", "-f", str(PEERING_CRDS))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    dev_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}))
    older = spawn(dev_cluster, world, tmp_path, f"pullhealth-{name}-old", "--peering", peering, *args)
    newer = spawn(dev_cluster, world, tmp_path, f"pullhealth-{name}-new", "--peering", peering, *args)
    try:
        older.start()
        newer.start()
        # Both live: both keep-alives are in the peering object (what a replica reads).
        wait_for(lambda: len(json.loads(dev_cluster.kubectl("get", "clusterkopfpeering", peering, "-o", "json")
                                         .stdout).get("status") or {}) >= 2,
                 "both replicas' keep-alives in the peering object", timeout=60)
        yield older, newer
    finally:
        newer.stop()
        older.stop()
        dev_cluster.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", "--wait=false")


def test_ha_standby_takes_over_within_seconds(
    dev_cluster: Any, world: World, namespace: str, api: Any, wait_for: Callable[..., Any],
    alone: None, tmp_path: Path,
) -> None:
    """Two replicas as the chart runs them with peering.enabled: one works, one waits."""
    ns = namespace
    with two_replicas(dev_cluster, world, namespace, tmp_path, wait_for, "ha") as (older, newer):
        dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(
            "ha-missing", {"registry": world.anon, "image": "team/app:nosuchtag"}, timeout=10))
        names = [f"ha-{i}" for i in range(10)]
        failing_pods(api, ns, world, names, "ha")
        wait_for(lambda: annotated(api, ns) >= set(names), "pods annotated while both replicas live", timeout=60)
        wait_for(lambda: (json.loads(dev_cluster.kubectl("-n", ns, "get", "regcheck", "ha-missing", "-o", "json")
                                     .stdout).get("status") or {}).get("code") == "TAG_NOT_FOUND",
                 "RegistryCheck checked while both replicas live", timeout=60)
        # The standby neither probed the RegistryCheck nor posted anything.
        assert runs(older).get("ha-missing", 0) == 0 and runs(newer).get("ha-missing") == 1.0
        assert per_object(our_events(dev_cluster, ns, ("CheckFailed",)), "CheckFailed") == {"ha-missing": 1}
        assert "Pausing operations in favour of" in older.text(), older.text()[-2000:]
        assert "Pausing all operators" not in older.text() + newer.text()
        assert per_object(our_events(dev_cluster, ns, ("PullDiagnosed",)), "PullDiagnosed") == dict.fromkeys(names, 1)

        newer.kill()
        killed = time.monotonic()
        failing_pods(api, ns, world, ["after-failover"], "ha-after")
        wait_for(lambda: "after-failover" in annotated(api, ns), "the standby annotating a new pod", timeout=30)
        took = time.monotonic() - killed
        assert took <= 15, f"standby took {took:.1f}s"
        assert "Resuming operations" in older.text()


def workload_checks(op: OperatorProcess) -> float:
    line = next((x for x in op.metrics().splitlines() if x.startswith("pullhealth_workload_checks_total ")), "")
    return float(line.split()[1]) if line else 0.0


def test_ha_only_the_active_replica_checks_workloads(
    dev_cluster: Any, world: World, namespace: str, wait_for: Callable[..., Any], alone: None, tmp_path: Path,
) -> None:
    """With --workloads and peering, the standby checks nothing and posts nothing; it takes
    the checks over when the active replica is gone."""
    ns = namespace
    with two_replicas(dev_cluster, world, namespace, tmp_path, wait_for, "wl",
                      "--workloads", "--workload-interval", "10") as (older, newer):
        dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "wl-missing"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "wl"}}, "template": {
                "metadata": {"labels": {"app": "wl"}},
                "spec": {"nodeSelector": {"pullhealth.io/e2e-nowhere": "true"},
                         "containers": [{"name": "app", "image": f"{world.anon}/team/app:wl-nosuchtag"}]}}}}))
        wait_for(lambda: per_object(our_events(dev_cluster, ns, ("ImageUnpullable",)), "ImageUnpullable"),
                 "the workload reported", timeout=60)
        # (The older replica, alone for a moment at its start, may have checked what other
        # tests left in the cluster then; from now on it checks nothing.)
        passes, standby = workload_checks(newer), workload_checks(older)
        wait_for(lambda: workload_checks(newer) >= passes + 2, "two more passes of the active replica", timeout=60)
        assert workload_checks(older) == standby
        assert per_object(our_events(dev_cluster, ns, ("ImageUnpullable",)), "ImageUnpullable") == {"wl-missing": 1}

        newer.kill()
        wait_for(lambda: workload_checks(older) > standby, "the standby checking workloads", timeout=60)


def test_api_server_and_etcd_restarts_are_ridden_out(
    dev_cluster: Any, world: World, namespace: str, api: Any, wait_for: Callable[..., Any],
    alone: None, tmp_path: Path,
) -> None:
    """Kill the API server, then etcd, 10 s each: at most one WARNING per outage (and one
    when it ends), counted, no ERROR, and failing pods are diagnosed again afterwards.

    A dead API server is always noticed (connections refused). A dead etcd behind a live
    API server may go unnoticed (open watches just stay quiet) or show as 429 "storage is
    (re)initializing" when the watches are re-established: then it is one outage too.
    """
    harness = dev_cluster.harness
    if harness is None:
        pytest.skip("needs the local dev cluster to kill its components")
    ns = namespace

    def outages(op: OperatorProcess) -> float:
        line = next((x for x in op.metrics().splitlines() if x.startswith("pullhealth_api_outages_total ")), "")
        return float(line.split()[1]) if line else 0.0

    with spawn(dev_cluster, world, tmp_path, "pullhealth-outage") as op:
        dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(
            "outage", {"registry": world.anon, "image": "team/app:nosuchtag"}, timeout=10))
        failing_pods(api, ns, world, ["before"], "outage")
        wait_for(lambda: "before" in annotated(api, ns), "pod diagnosed", timeout=60)
        for n, component in enumerate(("kube-apiserver", "etcd"), start=1):
            before, counted = len(op.lines()), outages(op)
            harness.kill(component)
            time.sleep(10)
            harness.revive(component)
            wait_for(harness.ready, "the API server ready again", timeout=60)
            name = f"after-{component}"
            failing_pods(api, ns, world, [name], f"after-{n}")
            wait_for(lambda name=name: name in annotated(api, ns), f"pod diagnosed after the {component} restart",
                     timeout=90)
            time.sleep(5)  # the outage's end is logged within 2 s of /readyz answering
            logged = records(op.lines()[before:])
            down = [r for r in logged if "API server unreachable" in str(r.get("message"))]
            up = [r for r in logged if "reachable again" in str(r.get("message"))]
            assert len(down) <= 1 and len(up) == len(down), (down, up)
            assert all(r["severity"] == "warn" for r in down + up), down + up
            assert outages(op) - counted == len(down)
            if component == "kube-apiserver":
                assert len(down) == 1, logged[:10]
            # kopf's and urllib3's per-retry lines are folded into that one line; nothing errs.
            assert not [r for r in logged if "Request attempt" in str(r.get("message"))
                        or "Retrying (Retry(" in str(r.get("message"))], logged[:10]
            assert not [r for r in logged if r.get("severity") in ("error", "fatal")], logged[:10]
